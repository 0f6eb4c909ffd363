"""Rejection sampling keeps the target's distribution: chi-square tests on a 3-token Markov chain."""
import itertools

import pytest
import torch

import sonic.spec.verify as verify
from sonic.engine.sampling import SamplingParams
from sonic.spec.adaptive import FixedDepth
from sonic.spec.loop import SpecStats, speculative_generate
from sonic.spec.verify import greedy_accept, residual
from spec_helpers import FixedProposer, MarkovDraft, MarkovRunner, single_thread  # noqa: F401

# Target P and draft Q differ a lot, so a wrong acceptance rule shows in a few thousand draws.
P = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
Q = torch.tensor([[0.1, 0.3, 0.6], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1]])
START, TOKENS, DRAWS = 0, 4, 1200


def exact_joint() -> torch.Tensor:
    joint = torch.zeros((3,) * TOKENS, dtype=torch.float64)
    for seq in itertools.product(range(3), repeat=TOKENS):
        prob, prev = 1.0, START
        for t in seq:
            prob, prev = prob * float(P[prev, t]), t
        joint[seq] = prob
    return joint


def p_value(proposer, k: int) -> float:
    """Chi-square p-value of DRAWS speculative samples of TOKENS tokens against the exact joint."""
    target = MarkovRunner(P)
    counts = torch.zeros((3,) * TOKENS, dtype=torch.float64)
    stats = SpecStats()
    for seed in range(DRAWS):
        out = list(speculative_generate(target, proposer, FixedDepth(k), [START], TOKENS,
                                        SamplingParams(temperature=1.0, seed=seed), stats=stats))
        counts[tuple(out)] += 1
    assert stats.steps >= DRAWS  # every draw went through speculative steps
    expected, counts = (exact_joint() * DRAWS).flatten(), counts.flatten()
    # Cells expected fewer than 5 times are pooled into one, as the chi-square approximation wants.
    small = expected < 5
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    counts = torch.cat([counts[~small], counts[small].sum()[None]])
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor(len(counts) - 1.0, dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, chi2 / 2))


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_draft_keeps_target_distribution(k):
    assert p_value(MarkovDraft(Q), k) > 1e-3


def test_point_mass_draft_keeps_target_distribution():
    assert p_value(FixedProposer([2, 0, 1]), 3) > 1e-3


@pytest.mark.parametrize("wrong", ["residual is p", "residual ignores q"])
def test_a_wrong_rule_fails_the_same_test(monkeypatch, wrong):
    if wrong == "residual is p":
        monkeypatch.setattr(verify, "residual", lambda p, q, x: p)
    else:
        monkeypatch.setattr(verify, "residual", lambda p, q, x: residual(p, None, x))
    assert p_value(MarkovDraft(Q), 3) < 1e-6


def test_accepting_every_draft_fails_the_same_test(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda k, **kw: torch.zeros(k))
    assert p_value(MarkovDraft(Q), 3) < 1e-6


def test_greedy_accept_counts_the_matching_prefix():
    assert greedy_accept([4, 5, 6], [4, 5, 9, 1]) == 2
    assert greedy_accept([4, 5, 6], [1, 5, 6, 1]) == 0
    assert greedy_accept([4, 5, 6], [4, 5, 6, 7]) == 3


def test_residual_removes_the_draft_token_or_q():
    p = torch.tensor([0.5, 0.3, 0.2])
    assert torch.allclose(residual(p, None, 0), torch.tensor([0.0, 0.6, 0.4]))
    assert torch.allclose(residual(p, torch.tensor([0.2, 0.6, 0.2]), 1), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(residual(p, p.clone(), 1), p)  # p == q: nothing left, fall back to p
