"""Token choice on the GPU, graph-capturable: greedy argmax and Gumbel-max sampling over [M, V] logits.

Both are two-stage reductions: stage 1 runs cdiv(V, BLOCK_V) programs per row, each leaving the
(max, lowest index of the max) of its slice in a small float32/int32 workspace, so a 128k vocabulary
keeps the whole GPU busy; stage 2 reduces the partials in one tiny launch. Slices are in index order
and each keeps its lowest index, so ties resolve to the lowest index, like torch.argmax.

Sampling is argmax(logits + Gumbel noise), which draws from softmax(logits) exactly. The noise is
Philox (`tl.rand`) at offset step*M*V + row*V + col, with seed and step read from int64 device
tensors, so a captured graph replays with whatever values the caller writes there (the caller
advances step). -inf logits stay -inf, since the noise is kept finite, and are never chosen unless a
row is all -inf (then index 0, as torch.argmax). NaN logits are not supported. The distribution is
checked in tests/kernels/test_lm_head_sample.py: a chi-square test of draw frequencies against softmax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sonic.kernels.triton.pdl import launch_options, pdl_prologue

BLOCK_V = 1024       # logits per stage-1 program: two 16-byte loads per thread at 4 warps
_U_MAX = tl.constexpr(1.0 - 2.0 ** -24)  # largest float32 below 1: tl.rand can round up to exactly 1.0
_U_MIN = tl.constexpr(2.0 ** -40)        # tl.rand can return 0.0; this keeps -log(-log(u)) finite


@triton.jit
def _partial_kernel(logits_ptr, seed_ptr, step_ptr, val_ptr, idx_ptr, M, V, stride_lm,
                    NUM_CHUNKS: tl.constexpr, GUMBEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                    USE_PDL: tl.constexpr = False):
    pdl_prologue(USE_PDL)
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chunk = tl.program_id(1)
    col = chunk * BLOCK_V + tl.arange(0, BLOCK_V)
    valid = (row < M)[:, None] & (col < V)[None, :]
    val = tl.load(logits_ptr + row.to(tl.int64)[:, None] * stride_lm + col[None, :], mask=valid,
                  other=float("-inf"))
    if GUMBEL:
        seed = tl.load(seed_ptr)
        step = tl.load(step_ptr)
        offset = (step * M + row)[:, None] * V + col[None, :]
        u = tl.rand(seed, offset)
        u = tl.minimum(tl.maximum(u, _U_MIN), _U_MAX)
        val = val - tl.log(-tl.log(u))
    best = tl.max(val, 1)
    # valid & (val == best): a slice of nothing but -inf still names a real column, never padding.
    idx = tl.min(tl.where(valid & (val == best[:, None]), col[None, :], 2147483647), 1)
    ws = row * NUM_CHUNKS + chunk
    tl.store(val_ptr + ws, best, mask=row < M)
    tl.store(idx_ptr + ws, idx, mask=row < M)


@triton.jit
def _final_kernel(val_ptr, idx_ptr, out_ptr, M, NUM_CHUNKS: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr = False):
    pdl_prologue(USE_PDL)
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    ok = (row < M)[:, None] & (c < NUM_CHUNKS)[None, :]
    ws = row[:, None] * NUM_CHUNKS + c[None, :]
    val = tl.load(val_ptr + ws, mask=ok, other=float("-inf"))
    idx = tl.load(idx_ptr + ws, mask=ok, other=2147483647)
    best = tl.max(val, 1)
    ids = tl.min(tl.where(ok & (val == best[:, None]), idx, 2147483647), 1)
    tl.store(out_ptr + row, ids.to(tl.int64), mask=row < M)


_workspaces: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(m: int, num_chunks: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    # Allocated on the first call for a shape: make that call before capturing a graph.
    key = (str(device), m, num_chunks)
    if key not in _workspaces:
        _workspaces[key] = (torch.empty(m, num_chunks, dtype=torch.float32, device=device),
                            torch.empty(m, num_chunks, dtype=torch.int32, device=device))
    return _workspaces[key]


def _launch(logits, seed, step, out_ids, gumbel: bool):
    m, v = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("logits must be float32 with a contiguous last dimension")
    if out_ids.shape != (m,) or out_ids.dtype != torch.int64:
        raise ValueError(f"out_ids must be int64 [{m}]")
    block_v = min(BLOCK_V, triton.next_power_of_2(v))
    # A small vocabulary packs several rows into one program instead of launching tiny ones.
    block_r = min(triton.next_power_of_2(m), BLOCK_V // block_v)
    chunks = triton.cdiv(v, block_v)
    vals, idxs = _workspace(m, chunks, logits.device)
    _partial_kernel[(triton.cdiv(m, block_r), chunks)](
        logits, seed, step, vals, idxs, m, v, logits.stride(0), NUM_CHUNKS=chunks, GUMBEL=gumbel,
        BLOCK_R=block_r, BLOCK_V=block_v, num_warps=4 if block_r * block_v >= 512 else 1,
        **launch_options(logits))
    block_c = triton.next_power_of_2(chunks)
    block_r = min(triton.next_power_of_2(m), max(1, 1024 // block_c))
    _final_kernel[(triton.cdiv(m, block_r),)](vals, idxs, out_ids, m, NUM_CHUNKS=chunks, BLOCK_R=block_r,
                                              BLOCK_C=block_c, num_warps=4 if block_r * block_c >= 512 else 1,
                                              **launch_options(logits))
    return out_ids


def argmax_rows(logits, out_ids):
    """out_ids[m] = argmax(logits[m]), ties to the lowest index. logits float32 [M, V]; out_ids int64 [M]."""
    return _launch(logits, logits, logits, out_ids, gumbel=False)


def gumbel_argmax(logits, seed, step, out_ids):
    """out_ids[m] ~ softmax(logits[m]) via argmax(logits + Gumbel noise); seed, step int64 [1] on the device.

    The same (seed, step) always gives the same ids; the caller advances step between draws."""
    if seed.dtype != torch.int64 or step.dtype != torch.int64 or seed.numel() != 1 or step.numel() != 1:
        raise ValueError("seed and step must be int64 tensors of one element")
    return _launch(logits, seed, step, out_ids, gumbel=True)


def argmax_rows_ref(logits) -> torch.Tensor:
    """torch.argmax over the last dimension: the behaviour argmax_rows matches, ties included."""
    return torch.argmax(logits, dim=-1)
