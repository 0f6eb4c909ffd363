"""Prompt lookup finds the right continuation; the draft model keeps its cache in step with the context."""
import random

import pytest
import torch

from conftest import TINY_CONFIGS
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError
from sonic.spec.draft import DraftProposer
from sonic.spec.ngram import CANDIDATES, REACH, NgramProposer
from spec_helpers import single_thread, tiny_runner  # noqa: F401

GREEDY = SamplingParams()


def rescan(context: list[int], k: int, max_n: int, min_n: int) -> list[int]:
    """The definition, by brute force: longest suffix first; of a max_n match's latest CANDIDATES
    occurrences, the one whose match goes furthest back (up to REACH), the latest of equals."""
    for n in range(min(max_n, len(context) - 1), min_n - 1, -1):
        suffix = context[-n:]
        starts = [i for i in range(len(context) - n) if context[i:i + n] == suffix]
        if not starts:
            continue
        if n < max_n:
            return context[starts[-1] + n:starts[-1] + n + k]

        def reach(i):
            length = n
            while length < REACH and i - (length - n) > 0 and context[i - 1 - (length - n)] == context[-1 - length]:
                length += 1
            return length
        best = max(reversed(starts[-CANDIDATES:]), key=reach)  # max keeps the first (latest) of equals
        return context[best + n:best + n + k]
    return []


def test_longest_match_first_then_most_recent():
    p = NgramProposer(max_n=3, min_n=1)
    assert p.lookup([1, 2, 3, 9, 2, 3, 8, 1, 2, 3], 2) == [9, 2]   # (1, 2, 3) beats the later (2, 3)
    assert p.lookup([5, 1, 7, 5, 2, 7, 5], 3) == [2, 7, 5]        # the latest (7, 5), clipped at the end
    assert p.lookup([4, 4], 3) == [4]
    assert p.lookup([1, 2, 3], 4) == []


def test_a_repeated_match_takes_the_occurrence_that_matches_further_back():
    # "4 1 2 3" occurs twice before the end; the earlier one is preceded by 7 as the suffix is.
    context = [7, 4, 1, 2, 3, 9, 8, 5, 4, 1, 2, 3, 6, 0, 7, 4, 1, 2, 3]
    p = NgramProposer(max_n=4, min_n=1)
    proposal = p.propose(context, 2, GREEDY, None)
    assert proposal.tokens == [9, 8] and proposal.match == 5
    context[-5] = 5  # now the later occurrence's 5 matches instead
    assert p.propose(context, 2, GREEDY, None).tokens == [6, 0]


def test_min_n_leaves_short_matches_out():
    assert NgramProposer(max_n=3, min_n=2).lookup([1, 2, 3, 9, 3], 2) == []
    assert NgramProposer(max_n=3, min_n=1).lookup([1, 2, 3, 9, 3], 2) == [9, 3]


def test_growing_context_agrees_with_brute_force():
    rng = random.Random(0)
    p = NgramProposer(max_n=4, min_n=1)
    context = []
    for _ in range(300):
        context.extend(rng.choice([[rng.randrange(6)], [rng.randrange(6) for _ in range(rng.randrange(1, 4))]]))
        assert p.propose(context, 5, GREEDY, None).tokens == rescan(context, 5, 4, 1)


def test_a_new_context_rebuilds_the_index():
    p = NgramProposer()
    assert p.lookup([1, 2, 3, 1, 2], 2) == [3, 1]
    assert p.lookup([7, 8, 9, 7, 8], 2) == [9, 7]


def test_start_indexes_the_prompt_and_proposals_say_their_match():
    p = NgramProposer(max_n=4, min_n=1)
    p.start([5, 6, 7, 8, 9, 5, 6, 7], 64)
    assert p.seen == [5, 6, 7, 8, 9, 5, 6, 7]  # indexed up front, while the GPU prefills
    proposal = p.propose([5, 6, 7, 8, 9, 5, 6, 7], 3, GREEDY, None)
    assert proposal.tokens == [8, 9, 5] and proposal.match == 3
    assert p.propose([5, 6, 7, 8, 9, 5, 6, 7, 4], 3, GREEDY, None).match == 0  # 4 was never seen


def test_invalid_sizes_are_a_user_error():
    with pytest.raises(SonicError):
        NgramProposer(max_n=2, min_n=3)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=0.8, top_k=20)])
def test_draft_after_rejection_proposes_as_a_fresh_draft(sampling):
    config = TINY_CONFIGS["llama2"]
    prompt = torch.randint(0, config.vocab_size, (9,), generator=torch.Generator().manual_seed(0)).tolist()
    draft = DraftProposer(tiny_runner(config, seed=3))
    draft.start(prompt, 64)
    context = prompt + [11]
    first = draft.propose(context, 4, sampling, torch.Generator().manual_seed(1))
    assert len(first.tokens) == 4
    assert (first.probs is None) == sampling.greedy
    # The target kept two drafts and then chose another token: the draft must forget the rest.
    context += first.tokens[:2] + [(first.tokens[2] + 1) % config.vocab_size]
    again = draft.propose(context, 5, sampling, torch.Generator().manual_seed(2))
    fresh = DraftProposer(tiny_runner(config, seed=3))
    fresh.start(prompt, 64)
    expected = fresh.propose(context, 5, sampling, torch.Generator().manual_seed(2))
    assert again.tokens == expected.tokens
    # Its cache now holds the context and the new drafts but the last, at their positions.
    assert draft.fed == context + again.tokens[:-1] and draft.runner.position == len(draft.fed)
    if not sampling.greedy:
        assert torch.allclose(again.probs, expected.probs, atol=1e-5)
        assert torch.allclose(again.probs.sum(-1), torch.ones(5))


def test_draft_stops_at_its_own_context():
    config = TINY_CONFIGS["llama2"]
    draft = DraftProposer(tiny_runner(config, seed=3))
    draft.start([1, 2, 3], 10)
    assert len(draft.propose([1, 2, 3, 4, 5, 6, 7, 8], 5, GREEDY, None).tokens) == 2
    assert draft.propose([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 5, GREEDY, None).tokens == []
