"""The scheduler on the fused GPU path (kernels under the Triton interpreter on CPU) matches the reference."""
import pytest
import torch

from sonic.engine.graph_slot import GraphSlotRunner, make_batch_runner
from sonic.engine.requests import Delta, Finished, Request
from sonic.engine.runner_graph import GraphRunner
from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams
from sonic.engine.scheduler import Scheduler
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; GPU tests cover CUDA")


def greedy_alone(model, prompt, steps):
    runner = ReferenceRunner(model)
    return list(runner.generate(prompt, steps, SamplingParams()))


def test_one_sequence_at_a_time_on_the_fused_path(tok):
    from conftest import TINY_CONFIGS
    config = TINY_CONFIGS["qwen3"]
    model = build_model(config, random_state_dict(config, seed=7))
    runner = make_batch_runner(GraphRunner(model, max_len=64, require_cuda=False), max_batch=1, max_len=512)
    assert isinstance(runner, GraphSlotRunner) and runner.max_len == 64
    scheduler = Scheduler(runner, tok, eos_ids=())
    prompts, steps = [[5, 9, 13, 2, 7], list(range(20, 31))], [3, 1]  # few steps: the interpreter is slow
    events = {i: [] for i in range(len(prompts))}
    for i, p in enumerate(prompts):
        scheduler.submit(Request(p, steps[i], events[i].append))
    while not all(ev and isinstance(ev[-1], Finished) for ev in events.values()):
        scheduler.step()
        assert len(runner.decoding) + (runner.filling is not None) <= 1
    for i, p in enumerate(prompts):
        assert [e.token_id for e in events[i] if isinstance(e, Delta)] == greedy_alone(model, p, steps[i])
