"""The CUDA monokernel against the reference on the same random weights (bf16, on a GPU)."""
import sys
from pathlib import Path

import pytest
import torch

from sonic.config import ModelConfig
from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams
from sonic.models.registry import build_model
from sonic.mono.instructions import Tiling
from sonic.weights.random import random_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_runner_graph import CONFIGS as GRAPH_CONFIGS  # noqa: E402

pytestmark = pytest.mark.gpu

CONFIGS = dict(GRAPH_CONFIGS)
CONFIGS["mistral-window"] = ModelConfig("mistral", 2048, 256, 512, 3, 8, 2, 32, rope_theta=1e6, sliding_window=24,
                                        max_position_embeddings=1024)
CONFIGS["gqa7-hd24"] = ModelConfig("qwen2", 1000, 168, 448, 2, 7, 1, 24, attention_bias=True,
                                   tie_word_embeddings=True, max_position_embeddings=1024)
TILINGS = {"default": None,
           "split-k": Tiling(qkv_heads_per_tile=2, o_rows_per_tile=24, gate_up_rows_per_tile=40,
                             down_rows_per_tile=8, lm_head_rows_per_tile=100, k_splits=3, kv_splits=3),
           # heads in four parts (q/k norm in attention), the merge in O's staging with O's k split
           "parts-k": Tiling(qkv_head_parts=4, combine_in_o=True, o_rows_per_tile=24, k_splits=2, kv_splits=3),
           # the default with four splits, where O reads attention's flagged outputs (MONO_LL)
           "ll": Tiling(qkv_head_parts=2, combine_in_o=True, gate_up_rows_per_tile=32, kv_splits=4)}
STEPS = 96
TOL = 0.05


def make(family: str, tiling: str | None = "default", config=None, max_len: int = 256):
    from sonic.mono.runner import MonoRunner
    config = config or CONFIGS[family]
    model = build_model(config, random_state_dict(config, 1, torch.bfloat16, "cuda"), torch.bfloat16, "cuda")
    return MonoRunner(model, max_len=max_len, tiling=TILINGS[tiling]), ReferenceRunner(model)


def prompt_of(config, n=16, seed=0):
    return torch.randint(0, config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def check_against_reference(mono, ref, prompt, tokens):
    """Teacher-forced: the kernel's logits at every step are close to the reference's, and its greedy
    choices agree wherever the reference's top two are not a near-tie."""
    seq = prompt + tokens
    ref_logits = ref.forward_all(seq)[len(prompt) - 1:-1]
    mono.reserve(len(seq))
    mono.prefill(prompt[:-1])
    got = torch.stack([mono.mono_step(seq[i], i) for i in range(len(prompt) - 1, len(seq) - 1)])
    scale = ref_logits.abs().max()
    err = ((got - ref_logits).abs().max() / scale).item()
    assert err < TOL, f"logits differ by {err:.3g} of their range"
    top2 = ref_logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > TOL * scale
    want = ref_logits.argmax(-1)
    assert torch.equal(got.argmax(-1)[clear], want[clear])
    assert torch.equal(torch.tensor(tokens, device=want.device)[clear], want[clear])
    return got


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("tiling", sorted(TILINGS))
def test_greedy_decode_matches_reference(family, tiling):
    mono, ref = make(family, tiling)
    prompt = prompt_of(mono.config)
    tokens = list(mono.generate(prompt, STEPS, SamplingParams()))
    assert len(tokens) == STEPS
    check_against_reference(mono, ref, prompt, tokens)


@pytest.mark.parametrize("family,tiling", [("llama", "default"), ("qwen3", "default"), ("llama", "ll"),
                                           ("qwen3", "ll")])
def test_runs_are_bit_identical_whatever_the_schedule(family, tiling):
    from sonic.mono.launcher import MonoKernel
    from sonic.mono.schedule import list_schedule
    mono, _ = make(family, tiling)
    prompt = prompt_of(mono.config, seed=3)
    runs = [list(mono.generate(prompt, 64, SamplingParams())) for _ in range(2)]
    assert runs[0] == runs[1]
    logits = mono.kernel.logits.clone()
    # The same program on a third of the SMs: every sum has the same order, so the same bits.
    k = mono.kernel
    mono.kernel = MonoKernel(k.program, list_schedule(k.program, max(2, k.schedule.num_sms // 3)),
                             mono.packed, mono.cache, mono.cos, mono.sin)
    assert list(mono.generate(prompt, 64, SamplingParams())) == runs[0]
    assert torch.equal(mono.kernel.logits, logits)


SAMPLED = [SamplingParams(temperature=0.8), SamplingParams(temperature=1.5, top_k=20),
           SamplingParams(temperature=1.0, top_k=64, top_p=0.7), SamplingParams(temperature=0.6, top_k=3, top_p=0.95)]


def _boundary_is_clear(logits, params) -> bool:
    """The top-p cut of these logits does not move within float32 rounding of the probabilities."""
    from sonic.engine.sampling import filter_logits
    if params.top_p == 1.0:
        return True
    near = [filter_logits(logits, SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=q))
            for q in (params.top_p - 1e-5, params.top_p + 1e-5)]
    return torch.equal(torch.isinf(near[0]), torch.isinf(near[1]))


@pytest.mark.parametrize("case", range(len(SAMPLED)))
def test_sampled_tokens_are_the_graph_samplers_draws(case):
    """One launch per token, teacher-forced on its own draws: each token is what the graph runner's
    Triton sampler draws from filter_logits of the kernel's own logits at the same seed and step. One
    launch of all the tokens draws the same ones."""
    from sonic.engine.sampling import filter_logits
    from sonic.kernels.triton.lm_head_sample import gumbel_argmax
    params = SAMPLED[case]
    mono, _ = make("llama")
    prompt = prompt_of(mono.config, seed=8)
    n, seed = 24, 2**61 + 12345 + case
    mono.reserve(len(prompt) + n + 1)
    token = int(mono.prefill(prompt).argmax())
    start, tokens = token, []
    dev = mono.kernel.logits.device
    for step in range(n):
        token, = mono.kernel.decode(token, len(prompt) + step, 1, sampling=params, seed=seed, step=step)
        logits = mono.kernel.logits.clone()
        want = torch.empty(1, dtype=torch.int64, device=dev)
        gumbel_argmax(filter_logits(logits, params), torch.tensor([seed], device=dev),
                      torch.tensor([step], device=dev), want)
        if _boundary_is_clear(logits, params):
            assert token == int(want[0]), f"step {step}"
        tokens.append(token)
    assert len(set(tokens)) > 1
    assert list(mono.kernel.decode(start, len(prompt), n, sampling=params, seed=seed)) == tokens


def test_sampled_generation_is_seeded():
    mono, _ = make("llama")
    prompt = prompt_of(mono.config, seed=9)
    params = SamplingParams(temperature=1.5, top_k=40, top_p=0.95, seed=7)
    runs = [list(mono.generate(prompt, 48, params)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert list(mono.generate(prompt, 48, SamplingParams(temperature=1.5, top_k=40, top_p=0.95, seed=8))) != runs[0]
    assert list(mono.generate(prompt, 48, SamplingParams())) != runs[0]


def test_stopping_early_then_decoding_again():
    mono, _ = make("llama")
    prompt = prompt_of(mono.config, seed=4)
    full = list(mono.generate(prompt, 40, SamplingParams()))
    it = mono.generate(prompt, 40, SamplingParams())
    head = [next(it) for _ in range(5)]
    it.close()  # the host's stop flag ends the launch
    assert head == full[:5]
    assert list(mono.generate(prompt, 40, SamplingParams())) == full


def test_eos_ends_the_launch_when_asked():
    mono, _ = make("qwen2")
    prompt = prompt_of(mono.config, seed=5)
    tokens = list(mono.generate(prompt, 30, SamplingParams()))  # runners decode exactly max_tokens
    eos = tokens[6]
    cut = tokens[1:].index(eos) + 1  # tokens[0] comes from the prefill, not the kernel
    stopper, _ = make("qwen2", config=CONFIGS["qwen2"].with_(eos_token_ids=(eos,)))
    assert list(stopper.generate(prompt, 30, SamplingParams())) == tokens
    stopper.reserve(len(prompt) + 30)
    stopper.prefill(prompt)
    got = list(stopper.kernel.decode(tokens[0], len(prompt), 29, stop_at_eos=True))
    assert got == tokens[1:cut + 1]
    # The counters stand where the stop left them: the next launch goes on from there.
    assert list(stopper.kernel.decode(tokens[cut], len(prompt) + cut, 29 - cut)) == tokens[cut + 1:]


def test_long_context_attention_splits():
    """Prompts past one attention chunk (256 keys per split pass) and a sliding window."""
    for family, tiling in (("llama", "default"), ("mistral-window", "default"), ("llama", "ll")):
        mono, ref = make(family, tiling, max_len=1024)
        prompt = prompt_of(mono.config, n=700, seed=6)
        tokens = list(mono.generate(prompt, 16, SamplingParams()))
        check_against_reference(mono, ref, prompt, tokens)


@pytest.mark.parametrize("tiling", ["default", "ll"])
def test_a_wait_past_the_bound_is_an_error_not_a_hang(tiling):
    from sonic.errors import SonicError
    mono, _ = make("llama", tiling)
    prompt = prompt_of(mono.config, seed=7)
    want = list(mono.generate(prompt, 20, SamplingParams()))
    mono.kernel.timeout_s = 1e-9  # every wait that spins at all now exceeds the bound
    with pytest.raises(SonicError, match="waited more than"):
        list(mono.generate(prompt, 20, SamplingParams()))
    mono.kernel.timeout_s = 5.0
    assert list(mono.generate(prompt, 20, SamplingParams())) == want  # the context and kernel survive


def test_unsupported_model_names_the_fallback():
    from sonic.errors import SonicError
    config = ModelConfig("llama", 512, 64, 128, 2, 4, 2, 12, max_position_embeddings=256)
    with pytest.raises(SonicError, match="--runner graph"):
        make("llama", config=config)
