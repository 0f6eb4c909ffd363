"""Fused matrix-vector product for 1..16 query rows: the weight-streaming core of batch-1 decode.

out = [residual +] epilogue(rmsnorm?(x) @ w.T [+ bias]), where the epilogue is either nothing or, for a
stacked [gate; up] weight, silu(gate) * up. Rows of x or of the residual can be gathered from a table
(the embedding: layer 0 needs no copy of it), and the LM head can leave per-tile argmax partials (greedy
decoding needs no second pass over the logits). Each program owns BLOCK_N output rows and streams the whole
K dimension of its weight rows once, so the kernel runs at the speed of reading w.

Every query row is computed with the same arithmetic whatever M is: its RMSNorm statistics, its
products with each [BLOCK_N, BLOCK_K] weight tile and their sum over the tile come from the same code
on tensors of the same shape along K, and the K steps are added in order. So a row's output does not
depend on the other rows, bit for bit, and speculative verification of M tokens gives exactly what M
one-token steps give. Rows share each weight tile, so M rows cost one pass over w.
No atomics and no split-K: a fixed shape always gives a fixed grid and bit-identical results.
N and K are compile-time constants: a model has only a handful of weight shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sonic.kernels.triton import MAX_ROWS
from sonic.kernels.triton.pdl import launch_options, pdl_prologue

_H100_SMS = 132
# Weight bytes per program per K step at M = 1: the huge LM head and many long rows; rows no longer than
# the output (QKV, O, gate/up); other long rows, in tiles small enough for two programs per SM.
_TILE_BYTES = 16384
_SHORT_TILE_BYTES = 32768
_LONG_TILE_BYTES = 16384
MAX_ARGMAX_TILES = 16384  # argmax partials per row the LM head may leave for the final reduction
# M > 1: weight rows per program, as a multiple of the M = 1 tile, so that each query row's input is
# prepared (loaded, normalised) once for more weight rows. Wider tiles never change the per-row sums.
WIDE_ROWS = {1: 1, 2: 2, 4: 2, 8: 4, 16: 4}
_MAX_WIDE_BYTES = 16384  # weight bytes per program per K step when widened (registers)


@dataclass(frozen=True)
class MatvecConfig:
    block_n: int     # weight rows (output columns) per tile
    block_k: int     # K step: with num_warps, fixes the order of every row's sums
    num_warps: int = 4
    num_stages: int = 1
    group: int = 1   # consecutive BLOCK_N tiles per program, sharing the RMSNorm statistics


def block_rows(m: int) -> int:
    """Query rows one program holds: the next power of two (rows past M are skipped)."""
    return triton.next_power_of_2(m)


def matvec_config(M: int, N: int, K: int, *, silu_mul: bool = False, elem_bytes: int = 2,
                  argmax: bool = False) -> MatvecConfig:
    """Block sizes for M rows, N output columns (I for silu_mul) and K inputs (M = 1 timed on an H200
    with scripts/tune_matvec.py: bench/results/2026-12-02-h200-matvec-tune.json).

    Each program streams whole rows, K in steps of up to 2048, with up to 32 KB of weights per step where
    rows are no longer than the output (QKV, O, gate/up), 16 KB for the huge LM head and for long rows
    (down), and never fewer programs than SMs; twice as many for long rows with few outputs, so that no SM
    streams a second tile alone (smollm2-135m's down). With `argmax` (the LM head), tiles stay wide enough
    that the per-tile partials are few.
    BLOCK_K and the warps depend on N and K only, never on M: they fix each row's summation order.
    M > 1 widens the tile (WIDE_ROWS) while the grid still fills the GPU twice over."""
    tiles = 2 if silu_mul else 1
    block_k = min(triton.next_power_of_2(K), 2048)
    if N >= 32768 or (K > N and N >= 4096):
        budget, min_programs = _TILE_BYTES, _H100_SMS
    elif K <= N:
        budget, min_programs = _SHORT_TILE_BYTES, _H100_SMS
    else:  # long rows, few outputs: two programs per SM, so that no SM streams a second tile alone
        budget, min_programs = _LONG_TILE_BYTES, 2 * _H100_SMS
    block_n = 1
    while (block_n * 2 * min(K, block_k) * elem_bytes * tiles <= budget
           and triton.cdiv(N, 2 * block_n) >= min_programs):
        block_n *= 2
    if argmax:
        block_n = max(block_n, triton.next_power_of_2(triton.cdiv(N, MAX_ARGMAX_TILES)))
    num_warps = 8 if K >= 8192 or block_n * block_k >= 16384 else 4
    wide = WIDE_ROWS[block_rows(M)]
    while wide > 1 and (triton.cdiv(N, block_n * wide) < 2 * _H100_SMS
                        or block_n * wide * min(K, block_k) * elem_bytes * tiles > _MAX_WIDE_BYTES):
        wide //= 2
    return MatvecConfig(block_n * wide, block_k, num_warps, 1)


def num_tiles(N: int, cfg: MatvecConfig) -> int:
    """Output tiles of BLOCK_N columns: one argmax partial each."""
    return triton.cdiv(N, cfg.block_n)


@triton.jit
def _weight_ptrs(tile, w_ptr, N: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pointers to the first K step of this tile's gate (or only) rows and of its up rows."""
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    # Past-the-end rows re-read the last row instead of masking, so weight loads stay unpredicated.
    n_ld = tl.minimum(n, N - 1).to(tl.int64)
    k_arange = tl.arange(0, BLOCK_K)
    g_ptrs = w_ptr + n_ld[:, None] * K + k_arange[None, :]
    u_ptrs = w_ptr + (n_ld + N)[:, None] * K + k_arange[None, :]  # up rows sit N rows below the gate rows
    return g_ptrs, u_ptrs


@triton.jit
def _load_w(g_ptrs, u_ptrs, k0, K: tl.constexpr, BLOCK_K: tl.constexpr, SILU_MUL: tl.constexpr,
            EVEN_K: tl.constexpr):
    in_k = (k0 + tl.arange(0, BLOCK_K) < K)[None, :]
    if EVEN_K:
        wg = tl.load(g_ptrs + k0)
        wu = tl.load(u_ptrs + k0) if SILU_MUL else wg
    else:
        wg = tl.load(g_ptrs + k0, mask=in_k, other=0.0)
        wu = tl.load(u_ptrs + k0, mask=in_k, other=0.0) if SILU_MUL else wg
    return wg, wu


@triton.jit
def _pick(vec, rows, m):
    """Element m of a small per-row vector, exactly (one term, the rest zeros)."""
    return tl.sum(tl.where(rows == m, vec, 0), 0)


@triton.jit
def _row_rstd(x_ptr, x_off, eps, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / RMS of one row of x, summed in [1, BLOCK_K] chunks whatever M is."""
    ss = tl.zeros([1, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)[None, :]
        xv = tl.load(x_ptr + x_off + kk, mask=kk < K, other=0.0).to(tl.float32)
        ss += xv * xv
    return tl.sum(tl.rsqrt(tl.sum(ss, 1) / K + eps), 0)


@triton.jit
def _row_step(acc_g, acc_u, wgf, wuf, nw, x_ptr, x_rows, stride_xm, rstds, rows, m, kk, in_k, HAS_NORM: tl.constexpr,
              SILU_MUL: tl.constexpr, W_DTYPE: tl.constexpr):
    """Query row m's products with the weight tile, summed over the tile's K step."""
    # Row id first, then times the stride: the offset keeps the alignment 16-byte loads need.
    xv = tl.load(x_ptr + _pick(x_rows, rows, m) * stride_xm + kk, mask=in_k, other=0.0)
    if HAS_NORM:
        h = (xv.to(tl.float32) * _pick(rstds, rows, m)).to(W_DTYPE).to(tl.float32)
        xf = (nw * h).to(W_DTYPE).to(tl.float32)
    else:
        xf = xv.to(W_DTYPE).to(tl.float32)
    sel = (rows == m)[:, None]
    acc_g = tl.where(sel, acc_g + tl.sum(wgf * xf, 1)[None, :], acc_g)
    if SILU_MUL:
        acc_u = tl.where(sel, acc_u + tl.sum(wuf * xf, 1)[None, :], acc_u)
    return acc_g, acc_u


@triton.jit
def _accumulate(acc_g, acc_u, wg, wu, x_ptr, x_rows, stride_xm, rstds, rows, M, k0, nw_ptr, K: tl.constexpr,
                HAS_NORM: tl.constexpr, SILU_MUL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[m, :] += this K step's sums for every query row m, one row at a time against the same tile."""
    kk = k0 + tl.arange(0, BLOCK_K)[None, :]
    in_k = kk < K
    nw = 0.0
    if HAS_NORM:
        nw = tl.load(nw_ptr + kk, mask=in_k, other=0.0).to(tl.float32)
    wgf = wg.to(tl.float32)
    wuf = wu.to(tl.float32)
    for m in tl.static_range(BLOCK_M):
        if BLOCK_M == 1:  # no branch: the loads can be scheduled early
            acc_g, acc_u = _row_step(acc_g, acc_u, wgf, wuf, nw, x_ptr, x_rows, stride_xm, rstds, rows, m, kk, in_k,
                                     HAS_NORM, SILU_MUL, wg.dtype)
        elif m < M:
            acc_g, acc_u = _row_step(acc_g, acc_u, wgf, wuf, nw, x_ptr, x_rows, stride_xm, rstds, rows, m, kk, in_k,
                                     HAS_NORM, SILU_MUL, wg.dtype)
    return acc_g, acc_u


@triton.jit
def _tile(tile, wg0, wu0, x_ptr, stride_xm, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, pval_ptr, pidx_ptr, rows, in_m,
          x_rows, r_off, rstds, M, stride_om, N: tl.constexpr, K: tl.constexpr, NUM_TILES: tl.constexpr,
          HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, SILU_MUL: tl.constexpr,
          ARGMAX: tl.constexpr, EVEN_K: tl.constexpr, PRELOADED: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Output rows tile*BLOCK_N ... (+BLOCK_N) for every query row. With PRELOADED, (wg0, wu0) are this
    tile's first K step of weights, loaded before the wait for the previous kernel."""
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = n < N
    n_ld = tl.minimum(n, N - 1).to(tl.int64)
    g_ptrs, u_ptrs = _weight_ptrs(tile, w_ptr, N, K, BLOCK_N, BLOCK_K)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    K_START: tl.constexpr = BLOCK_K if PRELOADED else 0
    if PRELOADED:
        acc_g, acc_u = _accumulate(acc_g, acc_u, wg0, wu0, x_ptr, x_rows, stride_xm, rstds, rows, M, 0, nw_ptr, K,
                                   HAS_NORM, SILU_MUL, BLOCK_M, BLOCK_K)
    for k0 in range(K_START, K, BLOCK_K):
        # The weight loads go first: they are the only HBM traffic, the rest hits L1/L2.
        wg, wu = _load_w(g_ptrs, u_ptrs, k0, K, BLOCK_K, SILU_MUL, EVEN_K)
        acc_g, acc_u = _accumulate(acc_g, acc_u, wg, wu, x_ptr, x_rows, stride_xm, rstds, rows, M, k0, nw_ptr, K,
                                   HAS_NORM, SILU_MUL, BLOCK_M, BLOCK_K)
    y = acc_g
    if HAS_BIAS:
        y += tl.load(bias_ptr + n_ld).to(tl.float32)[None, :]
    if SILU_MUL:
        up = acc_u
        if HAS_BIAS:
            up += tl.load(bias_ptr + N + n_ld).to(tl.float32)[None, :]
        y = y / (1.0 + tl.exp(-y)) * up
    mask = in_m[:, None] & in_n[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + r_off[:, None] + n[None, :], mask=mask, other=0.0)
    y = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * stride_om + n[None, :], y, mask=mask)
    if ARGMAX:
        # This tile's (max, lowest index of the max) per row, on the values just stored.
        yv = tl.where(in_n[None, :], y, float("-inf"))
        best = tl.max(yv, 1)
        idx = tl.min(tl.where(in_n[None, :] & (yv == best[:, None]), n[None, :], 2147483647), 1)
        tl.store(pval_ptr + rows * NUM_TILES + tile, best, mask=in_m)
        tl.store(pidx_ptr + rows * NUM_TILES + tile, idx, mask=in_m)


@triton.jit
def _matvec_kernel(x_ptr, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, xidx_ptr, pval_ptr, pidx_ptr,
                   M, stride_xm, stride_rm, stride_om, eps, N: tl.constexpr, K: tl.constexpr,
                   HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                   X_GATHER: tl.constexpr, RES_GATHER: tl.constexpr, SILU_MUL: tl.constexpr, ARGMAX: tl.constexpr,
                   EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP: tl.constexpr, USE_PDL: tl.constexpr = False):
    # Weights never change, so a one-tile program loads its first K step before waiting for the
    # previous kernel: the HBM latency overlaps that kernel's tail instead of following it.
    PRELOAD: tl.constexpr = GROUP == 1
    if PRELOAD:
        g_ptrs, u_ptrs = _weight_ptrs(tl.program_id(0), w_ptr, N, K, BLOCK_N, BLOCK_K)
        wg0, wu0 = _load_w(g_ptrs, u_ptrs, 0, K, BLOCK_K, SILU_MUL, EVEN_K)
    else:
        wg0, wu0 = 0.0, 0.0
    pdl_prologue(USE_PDL)
    rows = tl.arange(0, BLOCK_M)
    in_m = rows < M
    # Gathered rows (the embedding of this step's tokens) are read where they sit, with no copy.
    # x_rows are row ids: each row's offset is taken as id * stride where it is used.
    if X_GATHER:
        x_rows = tl.load(xidx_ptr + rows, mask=in_m, other=0).to(tl.int64)
    else:
        x_rows = rows.to(tl.int64)
    if RES_GATHER:
        r_off = tl.load(xidx_ptr + rows, mask=in_m, other=0).to(tl.int64) * stride_rm
    else:
        r_off = rows.to(tl.int64) * stride_rm
    rstds = tl.zeros([BLOCK_M], tl.float32)
    if HAS_NORM:
        for m in tl.static_range(BLOCK_M):
            if BLOCK_M == 1:
                rstds = tl.where(rows == m, _row_rstd(x_ptr, _pick(x_rows, rows, m) * stride_xm, eps, K, BLOCK_K), rstds)
            elif m < M:
                rstds = tl.where(rows == m, _row_rstd(x_ptr, _pick(x_rows, rows, m) * stride_xm, eps, K, BLOCK_K), rstds)
    if PRELOAD:
        _tile(tl.program_id(0), wg0, wu0, x_ptr, stride_xm, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, pval_ptr, pidx_ptr,
              rows, in_m, x_rows, r_off, rstds, M, stride_om, N, K, tl.cdiv(N, BLOCK_N), HAS_NORM, HAS_BIAS,
              HAS_RES, SILU_MUL, ARGMAX, EVEN_K, True, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        # GROUP consecutive tiles share one pass over x for the statistics.
        for t in range(GROUP):
            tile = tl.program_id(0) * GROUP + t
            if tile < tl.cdiv(N, BLOCK_N):
                _tile(tile, wg0, wu0, x_ptr, stride_xm, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, pval_ptr, pidx_ptr,
                      rows, in_m, x_rows, r_off, rstds, M, stride_om, N, K, tl.cdiv(N, BLOCK_N), HAS_NORM,
                      HAS_BIAS, HAS_RES, SILU_MUL, ARGMAX, EVEN_K, False, BLOCK_M, BLOCK_N, BLOCK_K)


def check_args(x, w, out, norm_weight, bias, residual, silu_mul, index, x_gather, argmax_partials):
    m = index.shape[0] if index is not None else x.shape[0]
    k = x.shape[1]
    n_w = w.shape[0]
    n = n_w // 2 if silu_mul else n_w
    if not 1 <= m <= MAX_ROWS or w.shape[1] != k or (silu_mul and n_w % 2):
        raise ValueError(f"bad shapes: x {tuple(x.shape)}, w {tuple(w.shape)}")
    if out.shape != (m, n) or out.stride(1) != 1 or x.stride(1) != 1 or not w.is_contiguous():
        raise ValueError(f"out must be [{m}, {n}] and x, w, out contiguous along K/N, got out {tuple(out.shape)}")
    if x.dtype not in (torch.float32, w.dtype) or out.dtype not in (torch.float32, w.dtype):
        raise ValueError(f"x and out must be float32 or {w.dtype}")
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm_weight must be [{k}]")
    if bias is not None and bias.shape != (n_w,):
        raise ValueError(f"bias must be [{n_w}]")
    if index is not None and (index.dim() != 1 or index.dtype not in (torch.int32, torch.int64)):
        raise ValueError("the gather index must be int32 or int64 [M]")
    if residual is not None:
        gathered = index is not None and not x_gather
        if residual.shape[1] != n or residual.stride(1) != 1 or (not gathered and (
                residual.shape[0] != m or residual.dtype != torch.float32)):
            raise ValueError(f"residual must be float32 [{m}, {n}] (or rows [*, {n}] gathered by the index)")
    if argmax_partials is not None:
        vals, idxs = argmax_partials
        if out.dtype != torch.float32 or vals.dtype != torch.float32 or idxs.dtype != torch.int32:
            raise ValueError("argmax partials need float32 out and (float32, int32) partials")
    return m, n, k


def fused_matvec(x, w, out, *, norm_weight=None, eps=1e-6, bias=None, residual=None, silu_mul=False,
                 index=None, gather="x", argmax_partials=None, config: MatvecConfig | None = None):
    """out = [residual +] f(xn @ w.T [+ bias]) cast to out.dtype; see the module docstring.

    x [M, K] float32 or w.dtype (1 <= M <= 16); w [N, K], or [2I, K] = [gate; up] with silu_mul;
    xn = RMSNorm(x) * norm_weight rounded to w.dtype when norm_weight is given, else x in w.dtype;
    bias [N] (or [2I]); residual float32 [M, N], may be `out` itself.
    index int [M] (on the device): the rows of x (gather="x") or of residual (gather="residual") are
    x[index] / residual[index] of a table such as the embedding, read in place.
    argmax_partials (float32 [M, T], int32 [M, T]) with T = num_tiles(N, config): each output tile
    also leaves its per-row max and lowest index of the max, for `lm_head_sample.reduce_argmax`.
    Launches one kernel and allocates nothing, so it can be captured in a CUDA graph."""
    if gather not in ("x", "residual"):
        raise ValueError("gather must be 'x' or 'residual'")
    x_gather = index is not None and gather == "x"
    m, n, k = check_args(x, w, out, norm_weight, bias, residual, silu_mul, index, x_gather, argmax_partials)
    cfg = config or matvec_config(m, n, k, silu_mul=silu_mul,
                                 elem_bytes=w.element_size(), argmax=argmax_partials is not None)
    if argmax_partials is not None and argmax_partials[0].shape != (m, num_tiles(n, cfg)):
        raise ValueError(f"argmax partials must be [{m}, {num_tiles(n, cfg)}]")
    vals, idxs = argmax_partials if argmax_partials is not None else (out, out)
    _matvec_kernel[(triton.cdiv(triton.cdiv(n, cfg.block_n), cfg.group),)](
        x, w, out,
        norm_weight if norm_weight is not None else w,
        bias if bias is not None else w,
        residual if residual is not None else out,
        index if index is not None else out, vals, idxs,
        m, x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), eps, N=n, K=k,
        HAS_NORM=norm_weight is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        X_GATHER=x_gather, RES_GATHER=index is not None and not x_gather, SILU_MUL=silu_mul,
        ARGMAX=argmax_partials is not None, EVEN_K=k % cfg.block_k == 0,
        BLOCK_M=block_rows(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=cfg.group,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(w, w.numel() * w.element_size()))
    return out


def fused_matvec_ref(x, w, *, norm_weight=None, eps=1e-6, bias=None, residual=None, silu_mul=False,
                     index=None, gather="x", out_dtype) -> torch.Tensor:
    """Plain PyTorch with the same semantics: input roundings as the model's, then float32 throughout."""
    if index is not None:
        if gather == "x":
            x = x[index.long()]
        else:
            residual = residual[index.long()].float()
    if norm_weight is not None:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        xn = (norm_weight * h.to(w.dtype)).to(w.dtype)
    else:
        xn = x.to(w.dtype)
    y = xn.float() @ w.float().T
    if bias is not None:
        y = y + bias.float()
    if silu_mul:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    if residual is not None:
        y = residual + y
    return y.to(out_dtype)
