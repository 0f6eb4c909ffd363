"""Gumbel-max sampling with the GPU's random stream, on the host: the rule every sampling kernel follows.

A token is drawn as argmax(logits + g), g = -log(-log(u)), which draws from softmax(logits) exactly.
u is Philox-4x32-10 at (seed, offset), offset = (step * rows + row) * vocab + column, turned into a
float as Triton's `tl.rand` does and clamped into (0, 1); the graph runner's Triton kernel
(`lm_head_sample.gumbel_argmax`) and the monokernel compute the same bits. This module is their
reference (numpy, uint32 arithmetic) and what the interpreter of the monokernel samples with.
"""
from __future__ import annotations

import numpy as np
import torch

KEY_A, KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
ROUND_A, ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
ROUNDS = 10
U_MIN = np.float32(2.0 ** -40)        # tl.rand can return 0.0; this keeps -log(-log(u)) finite
U_MAX = np.float32(1.0 - 2.0 ** -24)  # and it can round up to exactly 1.0


def philox_uint32(seed: int, offsets: np.ndarray) -> np.ndarray:
    """The first output word of Philox-4x32-10 with key `seed` (64 bits) and counter
    (offset low, offset high, 0, 0): `tl.randint(seed, offset)`."""
    offsets = np.asarray(offsets, dtype=np.int64).view(np.uint64)
    c0 = (offsets & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    c1 = (offsets >> np.uint64(32)).astype(np.uint32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    seed &= (1 << 64) - 1
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    with np.errstate(over="ignore"):
        for _ in range(ROUNDS):
            prod_b = ROUND_B * c2.astype(np.uint64)
            prod_a = ROUND_A * c0.astype(np.uint64)
            c0, c1, c2, c3 = ((prod_b >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0, prod_b.astype(np.uint32),
                              (prod_a >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1, prod_a.astype(np.uint32))
            k0, k1 = k0 + KEY_A, k1 + KEY_B
    return c0


def uniform(seed: int, offsets: np.ndarray) -> np.ndarray:
    """`tl.rand(seed, offset)`: float32 in [0, 1)."""
    x = philox_uint32(seed, offsets).view(np.int32)
    x = np.where(x < 0, ~x, x)  # -x - 1, without the overflow at INT32_MIN
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def gumbel_noise(seed: int, step: int, rows: int, vocab: int) -> torch.Tensor:
    """g [rows, vocab] (float32) of one sampling step."""
    offsets = (step * rows + np.arange(rows, dtype=np.int64))[:, None] * vocab + np.arange(vocab, dtype=np.int64)
    u = np.clip(uniform(seed, offsets), U_MIN, U_MAX)
    return torch.from_numpy(-np.log(-np.log(u)))


def gumbel_argmax(logits: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Token ids [rows] drawn from softmax(logits [rows, vocab]) by step `step` of stream `seed`;
    -inf logits (filtered out) are never chosen unless a whole row is -inf."""
    rows, vocab = logits.shape
    noisy = logits.float().cpu() + gumbel_noise(seed, step, rows, vocab)
    return noisy.argmax(dim=-1).to(logits.device)


def reciprocal_temperature(temperature: float) -> float:
    """1 / T in float32, the factor a GPU scales logits by (torch divides by a host scalar that way)."""
    return float(np.float32(1.0) / np.float32(temperature))
