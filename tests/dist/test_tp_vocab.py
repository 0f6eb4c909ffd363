"""Picking tokens from a vocabulary split over ranks, with the ranks simulated in one process."""
import pytest
import torch

from sonic.dist.tp import vocab_bounds
from sonic.dist.vocab import candidate_count, choose, gumbel_noise, propose
from sonic.engine.sampling import SamplingParams, filter_logits


def split_choose(logits, world, params, noise):
    """What every rank would pick: each slice proposes, then all candidates are chosen from."""
    vocab = logits.shape[0]
    size = -(-vocab // world)
    count = candidate_count(params, size)
    props = []
    for rank in range(world):
        lo, hi = vocab_bounds(vocab, world, rank)
        local = None if noise is None else noise[lo:hi]
        props.append(propose(logits[lo:hi], lo, params, count, local))
    return choose(torch.stack(props), params, noise)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_greedy_ties_go_to_the_lowest_id_as_argmax(world):
    logits = torch.zeros(13)
    logits[[4, 9, 12]] = 5.0  # equal maxima in different slices
    assert split_choose(logits, world, SamplingParams(), None) == int(torch.argmax(logits)) == 4
    for _ in range(20):
        logits = torch.randn(13)
        assert split_choose(logits, world, SamplingParams(), None) == int(torch.argmax(logits))


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, top_k=5),
                                    SamplingParams(temperature=1.3, top_p=0.8),
                                    SamplingParams(temperature=0.9, top_k=40, top_p=0.5)])
@pytest.mark.parametrize("world", [2, 4])
def test_gumbel_pick_equals_one_device_with_the_same_noise(params, world):
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = 3 * torch.randn(37)
        noise = gumbel_noise(37, gen, "cpu")
        expected = int(torch.argmax(filter_logits(logits[None], params)[0] + noise))
        assert split_choose(logits, world, params, noise) == expected


def test_split_sampling_keeps_the_distribution():
    params = SamplingParams(temperature=0.8, top_k=6)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, 1.5, 0.2, -1.0, 0.8, 0.1])
    probs = torch.softmax(filter_logits(logits[None], params)[0], dim=-1)
    gen, n = torch.Generator().manual_seed(1), 20000
    counts = torch.zeros(10)
    for _ in range(n):
        counts[split_choose(logits, 3, params, gumbel_noise(10, gen, "cpu"))] += 1
    assert counts[probs == 0].sum() == 0  # nothing outside the top-k
    # Every frequency within 5 standard deviations of its probability.
    sd = (probs * (1 - probs) / n).sqrt()
    assert torch.all((counts / n - probs).abs() <= 5 * sd + 1e-9), (counts / n, probs)


def test_empty_trailing_slice_never_wins():
    logits = torch.randn(9)  # 4 ranks of 3: the last holds nothing
    assert vocab_bounds(9, 4, 3) == (9, 9)
    assert split_choose(logits, 4, SamplingParams(), None) == int(torch.argmax(logits))
