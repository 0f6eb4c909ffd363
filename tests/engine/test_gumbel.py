"""The host's copy of the GPU's sampling stream: bit for bit `tl.rand`, and the same draws as the
Triton sampling kernel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from sonic.engine.gumbel import gumbel_argmax, reciprocal_temperature, uniform
from sonic.kernels.triton.lm_head_sample import gumbel_argmax as gumbel_argmax_kernel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _rand_kernel(out_ptr, offsets_ptr, seed, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(out_ptr + i, tl.rand(seed, tl.load(offsets_ptr + i)))


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 123, 2**62 - 1])
def test_uniform_is_tl_rand_bit_for_bit(seed):
    # Offsets past 2**32 use the counter's second word.
    offsets = torch.tensor([0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 + 5, 3 * 2**40 + 77] * 16, dtype=torch.int64)
    out = torch.empty(len(offsets), dtype=torch.float32, device=DEVICE)
    _rand_kernel[(1,)](out, offsets.to(DEVICE), seed, N=len(offsets))
    got = out.cpu()
    want = uniform(seed, offsets.numpy())
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_draws_are_the_kernels():
    logits = torch.randn(3, 1500, generator=torch.Generator().manual_seed(0)) * 3
    logits[1, :700] = float("-inf")
    for seed, step in [(5, 0), (5, 1), (2**61 + 9, 17)]:
        out = torch.empty(3, dtype=torch.int64, device=DEVICE)
        gumbel_argmax_kernel(logits.to(DEVICE), torch.tensor([seed], device=DEVICE),
                             torch.tensor([step], device=DEVICE), out)
        assert gumbel_argmax(logits, seed, step).tolist() == out.cpu().tolist()
    assert all(t >= 700 for t in [int(gumbel_argmax(logits, s, 0)[1]) for s in range(20)])


def test_reciprocal_temperature_is_float32():
    assert reciprocal_temperature(0.7) == float(np.float32(1) / np.float32(0.7))
    assert reciprocal_temperature(0.7) != 1 / 0.7
