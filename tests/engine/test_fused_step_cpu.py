"""The fused decode step (Triton kernels under the interpreter) against the reference, float32 on CPU."""
import pytest
import torch

from sonic.engine.runner_graph import GraphRunner
from sonic.engine.runner_ref import ReferenceRunner
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

pytest.importorskip("triton")
# Under the interpreter only: with a GPU present, Triton compiles for CUDA and the GPU tests cover this.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; GPU tests cover CUDA")


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
def test_fused_step_matches_reference(family):
    from conftest import TINY_CONFIGS
    config = TINY_CONFIGS[family]
    model = build_model(config, random_state_dict(config, seed=2))
    fused = GraphRunner(model, max_len=64, require_cuda=False)
    ids = torch.randint(0, config.vocab_size, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    ref = ReferenceRunner(model).forward_all(ids)
    got = torch.cat([fused.forward_tokens(ids[:5], 0), fused.forward_tokens(ids[5:6], 5),
                     fused.forward_tokens(ids[6:12], 6)])
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_greedy_decode_step_chooses_and_advances_on_the_device(family):
    """The captured step's body run eagerly: the LM head's argmax picks the token, the position moves on."""
    from conftest import TINY_CONFIGS
    from sonic.engine.sampling import SamplingParams
    config = TINY_CONFIGS[family]
    model = build_model(config, random_state_dict(config, seed=3))
    fused = GraphRunner(model, max_len=64, require_cuda=False)
    prompt = torch.randint(0, config.vocab_size, (7,), generator=torch.Generator().manual_seed(5)).tolist()
    fused.reserve(len(prompt) + 8)
    fused.tokens[:1] = fused.prefill(prompt).argmax()
    fused.positions[:1] = len(prompt)
    seq = prompt + [int(fused.tokens[0])]
    for _ in range(6):
        fused._decode_step(SamplingParams())
        seq.append(int(fused.tokens[0]))
    assert int(fused.positions[0]) == len(prompt) + 6
    ref = ReferenceRunner(model).forward_all(seq)[len(prompt) - 1:-1]
    assert seq[len(prompt):] == ref.argmax(-1).tolist()
