"""Token choice on the GPU, graph-capturable: greedy argmax and Gumbel-max sampling over [M, V] logits.

Both are two-stage reductions: stage 1 runs cdiv(V, BLOCK_V) programs per row, each leaving the
(max, lowest index of the max) of its slice in a small float32/int32 workspace, so a 128k vocabulary
keeps the whole GPU busy; stage 2 reduces the partials in one tiny launch. Slices are in index order
and each keeps its lowest index, so ties resolve to the lowest index, like torch.argmax. For greedy
decoding stage 1 is the LM head's own epilogue (`lm_head_argmax`), and stage 2 also moves the position
on, so choosing a token costs one small launch.

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
def _final_kernel(val_ptr, idx_ptr, out_ptr, pos_ptr, step_ptr, NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr,
                  ITERS: tl.constexpr, ADVANCE: tl.constexpr, ADVANCE_STEP: tl.constexpr,
                  USE_PDL: tl.constexpr = False):
    """One program per row: the best of its partials (lowest index on ties); then, for a decode step,
    the position (and sampling step) move on, so no other launch is needed before the next step."""
    pdl_prologue(USE_PDL)
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    for i in tl.static_range(ITERS):  # unrolled, so every chunk's loads are in flight at once
        cc = i * BLOCK_C + c
        ok = cc < NUM_CHUNKS
        val = tl.load(val_ptr + row * NUM_CHUNKS + cc, mask=ok, other=float("-inf"))
        idx = tl.load(idx_ptr + row * NUM_CHUNKS + cc, mask=ok, other=2147483647)
        if i == 0:
            best, best_idx = val, idx
        else:
            # Strictly greater: on a tie the earlier chunk, which holds the lower indices, stays.
            take = val > best
            best = tl.where(take, val, best)
            best_idx = tl.where(take, idx, best_idx)
    top = tl.max(best, 0)
    tl.store(out_ptr + row, tl.min(tl.where(best == top, best_idx, 2147483647), 0).to(tl.int64))
    if ADVANCE:
        tl.store(pos_ptr, tl.load(pos_ptr) + 1)
        if ADVANCE_STEP:
            tl.store(step_ptr, tl.load(step_ptr) + 1)


def reduce_argmax(vals, idxs, out_ids, *, advance=None, step=None):
    """out_ids[m] = the index of the largest partial of row m (ties: lowest index), from per-chunk
    (max float32 [M, C], lowest index of the max int32 [M, C]) partials. advance: a one-element int32
    position tensor to increment (a one-row decode step); step: an int64 counter to increment with it."""
    m, chunks = vals.shape
    if out_ids.shape != (m,) or out_ids.dtype != torch.int64:
        raise ValueError(f"out_ids must be int64 [{m}]")
    if advance is not None and (m != 1 or advance.numel() != 1):
        raise ValueError("only a one-row decode step advances its position")
    block_c = min(4096, triton.next_power_of_2(chunks))
    _final_kernel[(m,)](vals, idxs, out_ids, advance if advance is not None else out_ids,
                        step if step is not None else out_ids, NUM_CHUNKS=chunks, BLOCK_C=block_c,
                        ITERS=triton.cdiv(chunks, block_c), ADVANCE=advance is not None,
                        ADVANCE_STEP=step is not None, num_warps=8 if block_c >= 2048 else (4 if block_c >= 256 else 1),
                        **launch_options(vals))
    return out_ids


_workspaces: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def workspace(m: int, num_chunks: int, device, user: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax partials (float32, int32 [m, num_chunks]) kept per shape and user, allocated on the first
    call: make that call before capturing a graph."""
    key = (str(device), m, num_chunks, user)
    if key not in _workspaces:
        _workspaces[key] = (torch.empty(m, num_chunks, dtype=torch.float32, device=device),
                            torch.empty(m, num_chunks, dtype=torch.int32, device=device))
    return _workspaces[key]


def _launch(logits, seed, step, out_ids, gumbel: bool, advance=None):
    m, v = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("logits must be float32 with a contiguous last dimension")
    if out_ids.shape != (m,) or out_ids.dtype != torch.int64:
        raise ValueError(f"out_ids must be int64 [{m}]")
    block_v = min(BLOCK_V, triton.next_power_of_2(v))
    # A small vocabulary packs several rows into one program instead of launching tiny ones.
    block_r = min(triton.next_power_of_2(m), BLOCK_V // block_v)
    chunks = triton.cdiv(v, block_v)
    vals, idxs = workspace(m, chunks, logits.device, "logits")
    _partial_kernel[(triton.cdiv(m, block_r), chunks)](
        logits, seed, step, vals, idxs, m, v, logits.stride(0), NUM_CHUNKS=chunks, GUMBEL=gumbel,
        BLOCK_R=block_r, BLOCK_V=block_v, num_warps=4 if block_r * block_v >= 512 else 1,
        **launch_options(logits))
    return reduce_argmax(vals, idxs, out_ids, advance=advance, step=step if gumbel and advance is not None else None)


def argmax_rows(logits, out_ids, *, advance=None):
    """out_ids[m] = argmax(logits[m]), ties to the lowest index. logits float32 [M, V]; out_ids int64 [M].
    advance: a one-element position tensor the last launch increments (see reduce_argmax)."""
    return _launch(logits, logits, logits, out_ids, gumbel=False, advance=advance)


def gumbel_argmax(logits, seed, step, out_ids, *, advance=None):
    """out_ids[m] ~ softmax(logits[m]) via argmax(logits + Gumbel noise); seed, step int64 [1] on the device.

    The same (seed, step) always gives the same ids. With `advance`, the last launch also increments
    the position and `step`; otherwise the caller advances step between draws."""
    if seed.dtype != torch.int64 or step.dtype != torch.int64 or seed.numel() != 1 or step.numel() != 1:
        raise ValueError("seed and step must be int64 tensors of one element")
    return _launch(logits, seed, step, out_ids, gumbel=True, advance=advance)


def lm_head_argmax(x, w, logits, out_ids, *, norm_weight, eps, advance=None):
    """Greedy token choice fused into the LM head: logits = RMSNorm(x) @ w.T (float32 [M, V], kept for
    callers that want them), each output tile leaves argmax partials, and one small launch picks the
    token (and advances the position). Two launches instead of three."""
    from sonic.kernels.triton.matvec import fused_matvec, matvec_config, num_tiles

    m, v = logits.shape
    cfg = matvec_config(m, v, w.shape[1], elem_bytes=w.element_size(), argmax=True)
    partials = workspace(m, num_tiles(v, cfg), logits.device, "lm_head")
    fused_matvec(x, w, logits, norm_weight=norm_weight, eps=eps, argmax_partials=partials, config=cfg)
    return reduce_argmax(*partials, out_ids, advance=advance)


def argmax_rows_ref(logits) -> torch.Tensor:
    """torch.argmax over the last dimension: the behaviour argmax_rows matches, ties included."""
    return torch.argmax(logits, dim=-1)
