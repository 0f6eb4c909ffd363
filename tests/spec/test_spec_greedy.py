"""Greedy speculative decoding gives the plain greedy tokens, bit for bit, on the reference path."""
import pytest
import torch

from conftest import TINY_CONFIGS
from sonic.engine.sampling import SamplingParams
from sonic.spec.adaptive import AdaptiveDepth, CostTable, FixedDepth, LookupDepth
from sonic.spec.draft import DraftProposer
from sonic.spec.loop import SpecStats, speculative_generate
from sonic.spec.ngram import NgramProposer
from spec_helpers import FixedProposer, single_thread, tiny_runner  # noqa: F401

GREEDY = SamplingParams()
FAMILIES = ["llama3", "smollm2", "mistral", "qwen3"]  # GQA, tied embeddings, sliding window, q/k norm
STEPS = 40


def prompt_for(config, seed: int = 0) -> list[int]:
    """A prompt that repeats itself, as code and documents do, so prompt lookup finds matches."""
    part = torch.randint(3, config.vocab_size, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    return part + part[:5] + part


def run(runner, proposer, policy, prompt, steps=STEPS, stop_ids=frozenset()):
    stats = SpecStats()
    out = list(speculative_generate(runner, proposer, policy, prompt, steps, GREEDY, stop_ids, stats))
    return out, stats


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    config = TINY_CONFIGS[request.param]
    target = tiny_runner(config, seed=1)
    prompt = prompt_for(config)
    return config, target, prompt, list(target.generate(prompt, STEPS, GREEDY))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_ngram_matches_plain(family, k):
    _, target, prompt, plain = family
    out, stats = run(target, NgramProposer(), FixedDepth(k), prompt)
    assert out == plain
    assert stats.drafted > 0 and stats.steps > 0


@pytest.mark.parametrize("k", [1, 3, 8])
def test_draft_model_matches_plain(family, k):
    config, target, prompt, plain = family
    # The target's weights nudged: a draft that agrees with it some of the time.
    draft = DraftProposer(tiny_runner(config, seed=9, noise=0.3, base_seed=1))
    out, stats = run(target, draft, FixedDepth(k), prompt)
    assert out == plain
    assert stats.drafted > 0


def test_partly_agreeing_draft_matches_plain():
    config = TINY_CONFIGS["smollm2"]
    target = tiny_runner(config, seed=1)
    prompt = prompt_for(config)
    plain = list(target.generate(prompt, STEPS, GREEDY))
    out, stats = run(target, DraftProposer(tiny_runner(config, seed=9, noise=0.6, base_seed=1)), FixedDepth(3),
                     prompt)
    assert out == plain
    assert 0.1 < stats.acceptance_rate < 0.9  # both kept and rejected drafts, with cache rollbacks


def test_adaptive_depth_matches_plain(family):
    _, target, prompt, plain = family
    costs = CostTable(tuple(1.0 + 0.1 * m for m in range(16)))
    out, _ = run(target, NgramProposer(), AdaptiveDepth(costs, 8), prompt)
    assert out == plain


def test_lookup_depth_matches_plain(family):
    # Drafts judged by their match, plain runs that end when a lookup is worth verifying.
    _, target, prompt, plain = family
    costs = CostTable(tuple(1.0 + 0.05 * m for m in range(16)), lone_step=1.0)
    out, stats = run(target, NgramProposer(), LookupDepth(costs, 15), prompt)
    assert out == plain and stats.steps > 0


def test_a_stopped_plain_run_on_the_reference_path_is_a_prefix_of_plain(family):
    _, target, prompt, plain = family
    target.reserve(len(prompt) + STEPS)
    target.prefill(prompt)
    taken = []
    for token in target.decode_steps(plain[0], len(prompt), 20, GREEDY, stop=lambda: len(taken) == 3):
        taken.append(token)
    assert taken == plain[1:4]


def test_self_draft_accepts_everything_and_rolls_back_nothing():
    config = TINY_CONFIGS["llama3"]
    target = tiny_runner(config, seed=1)
    prompt = prompt_for(config, 1)
    plain = list(target.generate(prompt, STEPS, GREEDY))
    out, stats = run(target, DraftProposer(tiny_runner(config, seed=1)), FixedDepth(4), prompt)
    assert out == plain
    assert stats.accepted == stats.drafted and stats.steps == -(-(STEPS - 1) // 5)


def test_eos_inside_a_draft_ends_the_output():
    config = TINY_CONFIGS["llama3"]
    target = tiny_runner(config, seed=1)
    prompt = prompt_for(config, 2)
    plain = list(target.generate(prompt, STEPS, GREEDY))
    eos = plain[10]
    cut = plain[:plain.index(eos) + 1]
    # The self-draft proposes straight through the EOS token: nothing after it may come out.
    out, _ = run(target, DraftProposer(tiny_runner(config, seed=1)), FixedDepth(8), prompt, stop_ids={eos})
    assert out == cut


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 9])
def test_max_tokens_reached_mid_draft(max_tokens):
    config = TINY_CONFIGS["llama3"]
    target = tiny_runner(config, seed=1)
    prompt = prompt_for(config, 3)
    plain = list(target.generate(prompt, max_tokens, GREEDY))
    out, stats = run(target, DraftProposer(tiny_runner(config, seed=1)), FixedDepth(8), prompt, max_tokens)
    assert out == plain and len(out) == max_tokens
    assert stats.drafted <= max(0, max_tokens - 1)  # never drafts past what may be emitted


def test_draft_longer_than_remaining_context():
    config = TINY_CONFIGS["smollm2"]
    target = tiny_runner(config, seed=1)
    context = config.max_position_embeddings
    prompt = (prompt_for(config, 4) * 40)[:context - 12]
    plain = list(target.generate(prompt, 12, GREEDY))
    # A proposer that always offers 30 tokens, far more than the 12 positions left.
    out, stats = run(target, FixedProposer(plain[1:] + [0] * 20), FixedDepth(15), prompt, 12)
    assert out == plain
    # One step: 10 drafts kept, then the target's own token, the 12th.
    assert stats.steps == 1 and stats.drafted == stats.accepted == 10
    assert target.position <= context
