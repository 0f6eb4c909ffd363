"""The depth policy: off where drafts are rejected or verification is dear, deep where drafts land."""
import pytest
import torch

from conftest import TINY_CONFIGS
from sonic.engine.sampling import SamplingParams
from sonic.spec import adaptive
from sonic.spec.adaptive import AdaptiveDepth, CostTable, LookupDepth, interpolate, measure_costs
from sonic.spec.loop import SpecStats, speculative_generate
from sonic.spec.proposer import Proposal
from spec_helpers import FixedProposer, MarkovRunner, single_thread, tiny_runner  # noqa: F401

GPU_LIKE = CostTable(tuple(1.0 + 0.04 * (m - 1) for m in range(1, 17)))   # verifying 16 costs 1.6 steps
CPU_LIKE = CostTable(tuple(float(m) for m in range(1, 17)))               # each row costs a full step


def policy_after(costs, outcomes, max_k=8) -> AdaptiveDepth:
    policy = AdaptiveDepth(costs, max_k)
    for drafted, accepted in outcomes:
        policy.update(drafted, accepted)
    return policy


def test_rejected_drafts_turn_speculation_off():
    assert policy_after(GPU_LIKE, [(4, 0)] * 20).depth() == 0


def test_accepted_drafts_make_it_deep():
    assert policy_after(GPU_LIKE, [(8, 8)] * 20).depth() == 8
    mixed = policy_after(GPU_LIKE, [(8, 2)] * 40).depth()
    assert 2 <= mixed < 8  # the third draft token is always rejected: drafting far past it is waste


def test_expensive_verification_never_pays():
    assert policy_after(CPU_LIKE, [(8, 8)] * 20).depth() == 0


def test_a_draft_model_cost_counts_against_depth():
    cheap, dear = (CostTable(GPU_LIKE.verify_steps, d) for d in (0.0, 0.5))
    outcomes = [(8, n) for n in range(9)] * 4  # acceptance fades along the draft
    assert policy_after(dear, outcomes).depth() < policy_after(cheap, outcomes).depth()


def test_off_probes_after_growing_stretches_and_comes_back():
    policy = policy_after(GPU_LIKE, [(4, 0)] * 20)
    assert policy.depth() == 0
    assert policy.plain_run() == 16
    assert policy.depth() == policy.probe_k  # a probe after the stretch
    policy.update(policy.probe_k, 0)
    assert policy.depth() == 0 and policy.plain_run() == 32  # failed: a longer stretch
    for _ in range(12):
        policy.update(2, 2)
    assert policy.depth() > 0 and policy.stretch == 16


class ChainProposer:
    """Always right: proposes the target chain's greedy continuation."""
    name = "chain"

    def __init__(self, probs):
        self.next = probs.argmax(-1).tolist()

    def start(self, prompt_ids, max_len):
        pass

    def propose(self, context, k, sampling, gen):
        tokens = [self.next[context[-1]]]
        while len(tokens) < k:
            tokens.append(self.next[tokens[-1]])
        return Proposal(tokens)


P = torch.softmax(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)), -1)


@pytest.mark.parametrize("always_right", [False, True])
def test_loop_follows_the_policy(always_right):
    target = MarkovRunner(P)
    plain = list(target.decode_steps(3, 0, 200, SamplingParams()))
    never = sorted(set(range(12)) - set(plain))[0]  # a token the greedy chain never produces
    proposer = ChainProposer(P) if always_right else FixedProposer([never])
    stats = SpecStats()
    out = list(speculative_generate(target, proposer, AdaptiveDepth(GPU_LIKE, 8), [3], 200, SamplingParams(),
                                    stats=stats))
    assert out == plain
    if always_right:
        assert stats.accepted == stats.drafted and stats.steps <= 30  # soon 8 deep
    else:
        assert stats.accepted == 0 and stats.steps <= 10  # a few steps, then rare probes
    assert all(rows <= 9 for _, rows in target.verified)


def test_interpolate_fills_between_measured_rows():
    assert interpolate({1: 1.0, 3: 2.0, 5: 6.0}, 6) == (1.0, 1.5, 2.0, 4.0, 6.0, 6.0)


def test_costs_are_measured_on_the_runner_once(monkeypatch):
    runner = tiny_runner(TINY_CONFIGS["llama2"])
    adaptive._COSTS.clear()
    table = measure_costs(runner, 5)
    assert len(table.verify_steps) == 5 and all(c > 0 for c in table.verify_steps)
    assert table.draft_step == 0.0 and table.lone_step > 0
    monkeypatch.setattr(adaptive, "step_time", lambda *a, **k: pytest.fail("measured twice"))
    assert measure_costs(runner, 5) is table


# ---- prompt lookup: each draft judged by the length of its match ----
GPU_LONE = CostTable(tuple(1.05 + 0.04 * (m - 1) for m in range(1, 17)), lone_step=1.05)  # a lone step syncs too


def lookup_after(costs, outcomes, max_k=8) -> LookupDepth:
    policy = LookupDepth(costs, max_k)
    for drafted, accepted, match in outcomes:
        policy.update(drafted, accepted, match)
    return policy


def test_long_matches_are_verified_deep_and_short_ones_not_after_failing():
    policy = lookup_after(GPU_LONE, [(8, 8, 4)] * 10 + [(4, 0, 1)] * 20)
    assert policy.depth() == 8  # looking costs nothing: it asks for the most
    assert policy.trim(8, match=4) == 8
    assert policy.trim(8, match=1) == 0  # the same draft length, found by one token: a plain step pays more
    assert policy.trim(3, match=4) == 3 and policy.trim(0, match=4) == 0


def test_lookup_trims_where_acceptance_ends():
    policy = lookup_after(GPU_LONE, [(8, 2, 4)] * 40)  # the third token is always rejected
    assert 2 <= policy.trim(8, match=4) < 8


def test_lookup_never_verifies_where_every_row_costs_a_step():
    policy = lookup_after(CPU_LIKE, [(8, 8, 4)] * 20)
    assert policy.trim(8, match=4) == 0


def test_lookup_priors_trust_longer_matches():
    policy = LookupDepth(GPU_LONE, 8)
    assert policy.trim(8, match=1) <= policy.trim(8, match=2) <= policy.trim(8, match=4)
    assert policy.trim(8, match=4) > 0 and policy.trim(8, match=7) == policy.trim(8, match=4)
    assert policy.watches_plain and policy.plain_run() == LookupDepth.STRETCH


class LateProposer:
    """Finds nothing until the context is `late` tokens long, then the target chain's continuation."""
    name = "late"

    def __init__(self, probs, late):
        self.chain, self.late = ChainProposer(probs), late

    def start(self, prompt_ids, max_len):
        pass

    def propose(self, context, k, sampling, gen):
        if len(context) < self.late:
            return Proposal([], match=0)
        return Proposal(self.chain.propose(context, k, sampling, gen).tokens, match=4)


def test_a_plain_run_ends_when_a_lookup_is_worth_verifying():
    target = MarkovRunner(P)
    plain = list(target.decode_steps(3, 0, 120, SamplingParams()))
    stats = SpecStats()
    target.plain_runs.clear()
    out = list(speculative_generate(target, LateProposer(P, late=40), LookupDepth(GPU_LONE, 8), [3], 120,
                                    SamplingParams(), stats=stats))
    assert out == plain
    # The first token comes from prefill; the plain run then stops right where drafts appear.
    assert target.plain_runs[0] == 40 - 2
    assert stats.steps > 0 and stats.accepted == stats.drafted


def test_auto_picks_the_lookup_policy_for_prompt_lookup_and_decides_first_for_a_draft_model(monkeypatch):
    from sonic.spec import speculator
    from sonic.spec.ngram import NgramProposer
    monkeypatch.setattr(speculator, "measure_costs", lambda *a: GPU_LONE)
    assert isinstance(speculator.make_policy("auto", 15, None, NgramProposer()), LookupDepth)
    draft = type("Draft", (), {"runner": object()})()
    assert type(speculator.make_policy("auto", 8, None, draft)) is AdaptiveDepth
    assert type(speculator.make_policy("ngram", 8, None, NgramProposer())) is adaptive.FixedDepth


def test_costs_never_fall_with_more_rows():
    # A delay caught by one measurement is removed; a real step up (a second tile of rows) stays.
    assert adaptive.monotone((1.1, 1.4, 1.2, 1.3, 1.6, 1.5)) == (1.1, 1.2, 1.2, 1.3, 1.5, 1.5)
