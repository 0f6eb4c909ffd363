"""Speculative decoding on the fast path: verification rows computed exactly as one-token steps.

The interpreter test runs the fused kernels eagerly on CPU; the GPU tests check, with CUDA graphs,
that speculative greedy output is bit-identical to plain greedy output of the same runner."""
import pytest
import torch

from conftest import TINY_CONFIGS
from sonic.config import ModelConfig
from sonic.engine.sampling import SamplingParams
from sonic.models.registry import build_model
from sonic.spec.adaptive import AdaptiveDepth, FixedDepth, LookupDepth, measure_costs
from sonic.spec.draft import DraftProposer
from sonic.spec.loop import SpecStats, speculative_generate
from sonic.spec.ngram import NgramProposer
from sonic.weights.random import random_state_dict

pytest.importorskip("triton")
GREEDY = SamplingParams()


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; the GPU tests cover CUDA")
def test_verify_api_under_the_interpreter():
    from sonic.engine.runner_graph import GraphRunner
    config = TINY_CONFIGS["qwen3"]
    runner = GraphRunner(build_model(config, random_state_dict(config, seed=2)), max_len=32, require_cuda=False)
    ids = torch.randint(0, config.vocab_size, (8,), generator=torch.Generator().manual_seed(4)).tolist()
    runner.verify(ids[:4], 0)
    logits = runner.verify(ids[4:8], 4)
    assert logits.shape == (4, config.vocab_size) and runner.position == 8
    assert torch.equal(logits, runner.forward_tokens(ids[4:8], 4))  # the same fused step, same bits
    assert runner.verify_argmax(ids[4:8], 4) == logits.argmax(-1).tolist()
    runner.rewind(6)
    assert runner.position == 6


# ---- on a GPU ----
GPU_CONFIGS = {
    "llama": ModelConfig("llama", 2048, 256, 512, 4, 8, 2, 32, rope_theta=500000.0, max_position_embeddings=1024),
    "qwen3": ModelConfig("qwen3", 2048, 256, 512, 4, 8, 4, 64, qk_norm=True, tie_word_embeddings=True,
                         rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=1024),
}
STEPS = 128


def graph_runner(config, seed=1):
    from sonic.engine.runner_graph import GraphRunner
    state = random_state_dict(config, seed, torch.bfloat16, "cuda")
    return GraphRunner(build_model(config, state, torch.bfloat16, "cuda"), max_len=512)


@pytest.fixture(scope="module", params=sorted(GPU_CONFIGS))
def gpu_target(request):
    config = GPU_CONFIGS[request.param]
    runner = graph_runner(config)
    part = torch.randint(0, config.vocab_size, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = part + part[:7] + part
    return config, runner, prompt, list(runner.generate(prompt, STEPS, GREEDY))


@pytest.mark.gpu
def test_verify_rows_are_bit_identical_to_one_token_steps(gpu_target):
    _, runner, prompt, plain = gpu_target
    seq = prompt + plain
    runner.reserve(len(seq))
    runner.prefill(prompt)
    one = torch.cat([runner.verify([t], len(prompt) + i) for i, t in enumerate(plain[:16])])
    for m in range(2, 17):
        # Rewrites the same tokens' K/V at the same positions: the same bits, if rows are computed alike.
        many = runner.verify(plain[:m], len(prompt))
        assert torch.equal(many, one[:m]), f"{m} query rows differ from one-row steps"


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 3, 8])
def test_ngram_greedy_is_bit_identical(gpu_target, k):
    _, runner, prompt, plain = gpu_target
    stats = SpecStats()
    out = list(speculative_generate(runner, NgramProposer(), FixedDepth(k), prompt, STEPS, GREEDY, stats=stats))
    assert out == plain and stats.steps > 0


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 3, 8])
def test_draft_model_greedy_is_bit_identical(gpu_target, k):
    config, runner, prompt, plain = gpu_target
    draft_config = ModelConfig(config.architecture, config.vocab_size, 128, 256, 2, 4, 2, 32,
                               max_position_embeddings=1024)
    draft = DraftProposer(graph_runner(draft_config, seed=5))
    out = list(speculative_generate(runner, draft, FixedDepth(k), prompt, STEPS, GREEDY))
    assert out == plain


@pytest.mark.gpu
def test_adaptive_greedy_is_bit_identical(gpu_target):
    _, runner, prompt, plain = gpu_target
    costs = measure_costs(runner, 9)
    assert all(c > 0 for c in costs.verify_steps)
    out = list(speculative_generate(runner, NgramProposer(), AdaptiveDepth(costs, 8), prompt, STEPS, GREEDY))
    assert out == plain


@pytest.mark.gpu
def test_lookup_policy_greedy_is_bit_identical(gpu_target):
    _, runner, prompt, plain = gpu_target
    costs = measure_costs(runner, 16)
    stats = SpecStats()
    out = list(speculative_generate(runner, NgramProposer(), LookupDepth(costs, 15), prompt, STEPS, GREEDY,
                                    stats=stats))
    assert out == plain


@pytest.mark.gpu
def test_a_stopped_plain_run_yields_what_it_queued(gpu_target):
    from sonic.engine.runner_graph import QUEUE_AHEAD
    _, runner, prompt, plain = gpu_target
    runner.reserve(len(prompt) + STEPS)
    runner.prefill(prompt)
    taken = []
    steps = runner.decode_steps(plain[0], len(prompt), 40, GREEDY, stop=lambda: len(taken) == 5)
    for token in steps:
        taken.append(token)
    # Stopped after the fifth token: the steps already queued still land, and they are plain decoding's.
    assert taken == plain[1:1 + 5 + QUEUE_AHEAD] and runner.position == len(prompt) + len(taken)


@pytest.mark.gpu
def test_sampled_speculation_is_reproducible(gpu_target):
    _, runner, prompt, _ = gpu_target
    sampling = [SamplingParams(temperature=0.8, top_p=0.95, seed=s) for s in (3, 3)]
    outs = [list(speculative_generate(runner, NgramProposer(), FixedDepth(4), prompt, 64, s)) for s in sampling]
    assert outs[0] == outs[1] and len(outs[0]) == 64
