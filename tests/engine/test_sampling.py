import pytest
import torch

from sonic.engine.sampling import SamplingParams, filter_logits, sample
from sonic.errors import SonicError


def test_greedy_is_argmax():
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, SamplingParams(), None), logits.argmax(-1))


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.randn(1, 1000)
    p1, p2 = SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=2)
    g1, g1b, g2 = p1.generator("cpu"), p1.generator("cpu"), p2.generator("cpu")
    a = [int(sample(logits, p1, g1)) for _ in range(20)]
    b = [int(sample(logits, p1, g1b)) for _ in range(20)]
    c = [int(sample(logits, p2, g2)) for _ in range(20)]
    assert a == b and a != c


def test_top_k_keeps_only_k_tokens():
    logits = torch.arange(10.0)[None]
    params = SamplingParams(temperature=1.0, top_k=3, seed=0)
    gen = params.generator("cpu")
    assert {int(sample(logits, params, gen)) for _ in range(200)} <= {7, 8, 9}
    assert torch.isinf(filter_logits(logits, params)[0, :7]).all()


def test_top_p_keeps_smallest_covering_set():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.75)))
    assert kept.tolist() == [[True, True, False, False]]
    # the most likely token always survives, however small top_p is
    kept = torch.isfinite(filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.01)))
    assert kept.tolist() == [[True, False, False, False]]


def test_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = torch.softmax(filter_logits(logits, SamplingParams(temperature=0.1)), -1)
    assert cold[0, 0] > 0.99


@pytest.mark.parametrize("kwargs, word", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -2}, "top-k"), ({"top_p": 0.0}, "top-p"), ({"top_p": 1.5}, "top-p"),
])
def test_invalid_values_are_user_errors(kwargs, word):
    with pytest.raises(SonicError, match=word):
        SamplingParams(**kwargs)
