"""The fused path over shards on GPUs, each step one CUDA graph with its all-reduces inside: one rank
on one GPU gives the unsharded graph runner's bits; two ranks follow it teacher-forced."""
import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS
from tp_helpers import graph_checks, run_ranks

from sonic.engine.runner_graph import GraphRunner
from sonic.engine.sampling import SamplingParams
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

pytest.importorskip("triton")
SEED, TOKENS = 5, 40
NAMES = ("llama3", "qwen2", "qwen3-untied-gqa4")
CONFIGS = {n: TINY_CONFIGS[n] for n in NAMES}
PROMPT = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(SEED)).tolist()


def unsharded(name) -> GraphRunner:
    config = CONFIGS[name]
    state = random_state_dict(config, SEED, torch.bfloat16, "cuda")
    return GraphRunner(build_model(config, state, torch.bfloat16, "cuda"), max_len=64)


def teacher_forced(runner, ids: list[int]) -> torch.Tensor:
    runner.reserve(len(ids))
    return torch.cat([runner.forward_tokens(ids[s:s + 16], s) for s in range(0, len(ids), 16)]).float().cpu()


@pytest.mark.gpu
def test_one_rank_gives_the_unsharded_bits():
    results = run_ranks(1, graph_checks, CONFIGS, SEED, PROMPT, TOKENS, "cuda", timeout_s=300)
    for name in NAMES:
        runner = unsharded(name)
        assert results[0][name]["greedy"] == list(runner.generate(PROMPT, TOKENS, SamplingParams()))
        assert np.array_equal(results[0][name]["forced"], teacher_forced(runner, PROMPT).numpy())


@pytest.mark.multi_gpu
@pytest.mark.parametrize("allreduce", ["ordered", "one-shot"])
def test_two_ranks_follow_the_unsharded_argmax(allreduce):
    results = run_ranks(2, graph_checks, CONFIGS, SEED, PROMPT, TOKENS, "cuda", allreduce, timeout_s=300)
    for name in NAMES:
        got, other = results[0][name], results[1][name]
        assert np.array_equal(other["forced"], got["forced"]) and other["greedy"] == got["greedy"]
        runner = unsharded(name)
        forced = teacher_forced(runner, PROMPT)
        scale = float(forced.abs().max())
        np.testing.assert_allclose(got["forced"], forced.numpy(), rtol=0, atol=0.03 * scale)
        along = teacher_forced(runner, PROMPT + got["greedy"][:-1])[len(PROMPT) - 1:]
        top2 = along.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.03 * scale  # beyond bf16 rounding of either path
        assert torch.equal(torch.tensor(got["greedy"])[clear], along.argmax(-1)[clear])


@pytest.mark.multi_gpu
def test_engine_tp2_graph_on_gpus(tiny_chat_model_dir):
    """`--tp 2 --runner graph` through rank 0's driver: requests of many chunks, repeatable, and a short
    request after them (a stop mid-chunk leaves no peer waiting)."""
    from sonic.engine.generate import Engine
    engine = Engine.load(str(tiny_chat_model_dir), device="cuda", tp=2, runner="graph")
    try:
        first = list(engine.generate_ids([1, 2, 3], 300, SamplingParams()))
        stopped = engine.generate_ids([1, 2, 3], 300, SamplingParams())
        head = [next(stopped) for _ in range(7)]
        stopped.close()
        again = list(engine.generate_ids([1, 2, 3], 300, SamplingParams()))
        assert first == again and head == first[:7]
    finally:
        engine.close()
