"""Verification batches in the monokernel (on a GPU): a build of the same program with several query
rows computes each row exactly as the one-row decode kernel does, so speculative greedy decoding on
`--runner mono` gives the plain decoding's tokens, bit for bit."""
import pytest
import torch

from test_mono_gpu import CONFIGS, make, prompt_of

from sonic.engine.sampling import SamplingParams
from sonic.spec.adaptive import FixedDepth
from sonic.spec.loop import SpecStats, speculative_generate
from sonic.spec.ngram import NgramProposer

pytestmark = pytest.mark.gpu
GREEDY = SamplingParams()
# bias with split-K and odd tiles; a sliding window; head_dim 24 with 7:1 GQA; q/k norm on whole heads
CASES = [("llama", "default"), ("qwen2", "split-k"), ("mistral-window", "default"), ("gqa7-hd24", "default"),
         ("qwen3", "split-k"), ("llama", "ll")]


@pytest.mark.parametrize("family,tiling", CASES)
def test_verification_rows_are_the_decode_kernels_rows(family, tiling):
    mono, _ = make(family, tiling)
    prompt = prompt_of(mono.config, seed=5)
    plain = list(mono.generate(prompt, 24, GREEDY))
    limit, start = mono.verify_limit(), len(prompt)
    assert limit >= 2
    n = 2 * limit + 1
    mono.reserve(start + n)
    mono.prefill(prompt)
    one = torch.stack([mono.mono_step(t, start + i) for i, t in enumerate(plain[:n])])
    # Each call rewrites the same tokens' K/V at the same positions: the same bits if rows agree.
    for m in range(1, n + 1):
        many = mono.verify(plain[:m], start)
        assert torch.equal(many, one[:m]), f"{m} verified rows differ from decode steps"
        assert mono.verify_argmax(plain[:m], start) == one[:m].argmax(-1).tolist()
    assert {rows: v.program.rows for rows, v in mono.verifiers.items()} == {r: r for r in range(2, limit + 1)}
    for v in mono.verifiers.values():
        assert v.buffers["blob"] is mono.kernel.buffers["blob"]  # one copy of the weights


@pytest.mark.parametrize("family,tiling", [("llama", "default"), ("qwen2", "split-k")])
@pytest.mark.parametrize("k", [2, 7])
def test_speculative_greedy_on_the_kernel_is_plain_decoding(family, tiling, k):
    mono, _ = make(family, tiling)
    part = prompt_of(mono.config, n=12)
    prompt = part + part[:7] + part
    plain = list(mono.generate(prompt, 96, GREEDY))
    stats = SpecStats()
    out = list(speculative_generate(mono, NgramProposer(), FixedDepth(k), prompt, 96, GREEDY, stats=stats))
    assert out == plain and stats.steps > 0
    assert mono.verifiers  # verified in the kernel, not on the graph runner


def test_models_whose_rows_need_other_tiles_verify_on_the_graph_runner():
    mono, _ = make("qwen3", "parts-k")  # q/k norm in attention runs one row
    assert mono.verify_limit() == 0
    prompt = prompt_of(CONFIGS["qwen3"], seed=2)
    mono.reserve(len(prompt) + 4)
    mono.prefill(prompt)
    assert len(mono.verify_argmax(prompt[:3], 0)) == 3


def test_a_stopped_plain_run_ends_after_the_token_in_flight():
    mono, _ = make("llama", "default")
    prompt = prompt_of(mono.config, seed=3)
    plain = list(mono.generate(prompt, 48, GREEDY))
    mono.reserve(len(prompt) + 48)
    mono.prefill(prompt)
    taken = []
    for token in mono.decode_steps(plain[0], len(prompt), 40, GREEDY, stop=lambda: len(taken) == 5):
        taken.append(token)
    # What lands after the stop is still plain decoding's, and the runner knows where it ended.
    assert 5 <= len(taken) < 40 and taken == plain[1:1 + len(taken)]
    assert mono.position == len(prompt) + len(taken)
