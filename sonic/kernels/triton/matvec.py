"""Fused matrix-vector product for 1..16 query rows: the weight-streaming core of batch-1 decode.

out = [residual +] epilogue(rmsnorm?(x) @ w.T [+ bias]), where the epilogue is either nothing or, for a
stacked [gate; up] weight, silu(gate) * up. Each program owns BLOCK_N output rows and streams the whole
K dimension of its weight rows once, so the kernel runs at the speed of reading w. The RMSNorm row
statistics are recomputed by every program (x is a few KB and sits in L2) instead of costing a launch.
No atomics and no split-K: a fixed shape always gives a fixed grid and bit-identical results.
N and K are compile-time constants: a model has only a handful of weight shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sonic.kernels.triton.pdl import launch_options, pdl_prologue

_H100_SMS = 132
_TILE_BYTES = 16384  # weight bytes loaded per program per K step: enough 16-byte loads in flight


@dataclass(frozen=True)
class MatvecConfig:
    block_m: int     # 1: elementwise product + row sums; 16: tl.dot with the rows padded to 16
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group: int = 1   # consecutive BLOCK_N tiles per program, sharing the RMSNorm statistics


def matvec_config(M: int, N: int, K: int, *, silu_mul: bool = False, norm: bool = False,
                  elem_bytes: int = 2) -> MatvecConfig:
    """Block sizes for M rows, N output columns (I for silu_mul) and K inputs (timed on an H100).

    M == 1: many small programs hide latency best on the small matrices of a 1B model, so BLOCK_N is
    the largest that still gives about eight programs per SM; BLOCK_K fills a tile of _TILE_BYTES
    (split over the gate and up tiles for silu_mul).
    M > 1: every program re-reads all M rows of x from L2, so fewer, wider programs with a deep
    pipeline beat many narrow ones: 32 rows (64 once that still gives two programs per SM) of 16 KB
    tiles, four stages deep, even where that leaves some SMs idle.
    With norm and M > 1, a program takes several tiles where there are many, so that the x re-reads
    for the statistics stay small next to the weight bytes."""
    if M == 1:
        tiles = 2 if silu_mul else 1
        block_n = next((b for b in (16, 8, 4) if triton.cdiv(N, b) >= 8 * _H100_SMS), 2)
        block_k = max(64, min(_TILE_BYTES // (elem_bytes * block_n * tiles), 2048, triton.next_power_of_2(K)))
        return MatvecConfig(1, block_n, block_k, 4, 3)
    block_n = 64 if triton.cdiv(N, 64) >= 2 * _H100_SMS else 32
    block_k = max(16, min(_TILE_BYTES // (elem_bytes * block_n), triton.next_power_of_2(K)))
    # Never more programs than fit at once (two per SM): a partial second wave costs more than it hides.
    group = min(triton.cdiv(triton.cdiv(N, block_n), 2 * _H100_SMS), 16) if norm else 1
    return MatvecConfig(16, block_n, block_k, 4, 4, group)


@triton.jit
def _load_x(x_ptr, rows, in_m, kk, in_k, rstd, nw_ptr, stride_xm, W_DTYPE: tl.constexpr, HAS_NORM: tl.constexpr):
    """One [BLOCK_M, BLOCK_K] chunk of the (normalised) input, in the weight's dtype."""
    xv = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
    if HAS_NORM:
        # Same roundings as the reference RMSNorm: normalise in fp32, round, scale, round.
        h = (xv.to(tl.float32) * rstd[:, None]).to(W_DTYPE).to(tl.float32)
        nw = tl.load(nw_ptr + kk, mask=in_k, other=0.0).to(tl.float32)
        return (nw[None, :] * h).to(W_DTYPE)
    return xv.to(W_DTYPE)


@triton.jit
def _tile(tile, x_ptr, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, rows, in_m, rstd, stride_xm, stride_rm, stride_om,
          N: tl.constexpr, K: tl.constexpr, HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
          SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Output rows tile*BLOCK_N ... (+BLOCK_N) for every query row."""
    w_dtype = w_ptr.dtype.element_ty
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = n < N
    # Past-the-end rows re-read the last row instead of masking, so weight loads stay unpredicated.
    n_ld = tl.minimum(n, N - 1).to(tl.int64)
    k_arange = tl.arange(0, BLOCK_K)
    g_ptrs = w_ptr + n_ld[:, None] * K + k_arange[None, :]
    u_ptrs = w_ptr + (n_ld + N)[:, None] * K + k_arange[None, :]  # up rows sit N rows below the gate rows
    if BLOCK_M == 1:
        acc_g = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + k_arange
        in_k = kk < K
        # The weight loads go first: they are the only HBM traffic, the rest hits L2.
        if EVEN_K:
            wg = tl.load(g_ptrs + k0)
            if SILU_MUL:
                wu = tl.load(u_ptrs + k0)
        else:
            wg = tl.load(g_ptrs + k0, mask=in_k[None, :], other=0.0)
            if SILU_MUL:
                wu = tl.load(u_ptrs + k0, mask=in_k[None, :], other=0.0)
        xn = _load_x(x_ptr, rows, in_m, kk, in_k, rstd, nw_ptr, stride_xm, w_dtype, HAS_NORM)
        if BLOCK_M == 1:
            xf = xn.to(tl.float32)
            acc_g += wg.to(tl.float32) * xf
            if SILU_MUL:
                acc_u += wu.to(tl.float32) * xf
        else:
            acc_g = tl.dot(xn, tl.trans(wg), acc_g, input_precision=PRECISION)
            if SILU_MUL:
                acc_u = tl.dot(xn, tl.trans(wu), acc_u, input_precision=PRECISION)

    if BLOCK_M == 1:
        y = tl.sum(acc_g, 1)[None, :]
        if SILU_MUL:
            up = tl.sum(acc_u, 1)[None, :]
    else:
        y = acc_g
        if SILU_MUL:
            up = acc_u
    if HAS_BIAS:
        y += tl.load(bias_ptr + n_ld).to(tl.float32)[None, :]
        if SILU_MUL:
            up += tl.load(bias_ptr + N + n_ld).to(tl.float32)[None, :]
    if SILU_MUL:
        y = y / (1.0 + tl.exp(-y)) * up
    mask = in_m[:, None] & in_n[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + rows[:, None] * stride_rm + n[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * stride_om + n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _matvec_kernel(x_ptr, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr,
                   M, stride_xm, stride_rm, stride_om, eps, N: tl.constexpr, K: tl.constexpr,
                   HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                   SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
                   USE_PDL: tl.constexpr = False):
    pdl_prologue(USE_PDL)
    rows = tl.arange(0, BLOCK_M)
    in_m = rows < M
    rstd = tl.zeros([BLOCK_M], tl.float32)
    if HAS_NORM:
        # Each step of this loop waits a full L2 round trip before the weight stream starts.
        ss = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :],
                         mask=in_m[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
            ss += xv * xv
        rstd = tl.rsqrt(tl.sum(ss, 1) / K + eps)
    # GROUP consecutive tiles share one pass over x for the statistics.
    for t in range(GROUP):
        tile = tl.program_id(0) * GROUP + t
        if tile < tl.cdiv(N, BLOCK_N):
            _tile(tile, x_ptr, w_ptr, out_ptr, nw_ptr, bias_ptr, res_ptr, rows, in_m, rstd,
                  stride_xm, stride_rm, stride_om, N, K, HAS_NORM, HAS_BIAS, HAS_RES, SILU_MUL, EVEN_K, PRECISION,
                  BLOCK_M, BLOCK_N, BLOCK_K)


def _check(x, w, out, norm_weight, bias, residual, silu_mul):
    m, k = x.shape
    n_w = w.shape[0]
    n = n_w // 2 if silu_mul else n_w
    if not 1 <= m <= 16 or w.shape[1] != k or (silu_mul and n_w % 2):
        raise ValueError(f"bad shapes: x {tuple(x.shape)}, w {tuple(w.shape)}")
    if out.shape != (m, n) or out.stride(1) != 1 or x.stride(1) != 1 or not w.is_contiguous():
        raise ValueError(f"out must be [{m}, {n}] and x, w, out contiguous along K/N, got out {tuple(out.shape)}")
    if x.dtype not in (torch.float32, w.dtype) or out.dtype not in (torch.float32, w.dtype):
        raise ValueError(f"x and out must be float32 or {w.dtype}")
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm_weight must be [{k}]")
    if bias is not None and bias.shape != (n_w,):
        raise ValueError(f"bias must be [{n_w}]")
    if residual is not None and (residual.shape != (m, n) or residual.dtype != torch.float32
                                 or residual.stride(1) != 1):
        raise ValueError(f"residual must be float32 [{m}, {n}]")
    return m, n, k


def fused_matvec(x, w, out, *, norm_weight=None, eps=1e-6, bias=None, residual=None, silu_mul=False,
                 config: MatvecConfig | None = None):
    """out = [residual +] f(xn @ w.T [+ bias]) cast to out.dtype; see the module docstring.

    x [M, K] float32 or w.dtype (1 <= M <= 16); w [N, K], or [2I, K] = [gate; up] with silu_mul;
    xn = RMSNorm(x) * norm_weight rounded to w.dtype when norm_weight is given, else x in w.dtype;
    bias [N] (or [2I]); residual float32 [M, N], may be `out` itself. Launches one kernel and
    allocates nothing, so it can be captured in a CUDA graph."""
    m, n, k = _check(x, w, out, norm_weight, bias, residual, silu_mul)
    cfg = config or matvec_config(m, n, k, silu_mul=silu_mul, norm=norm_weight is not None,
                                 elem_bytes=w.element_size())
    _matvec_kernel[(triton.cdiv(triton.cdiv(n, cfg.block_n), cfg.group),)](
        x, w, out,
        norm_weight if norm_weight is not None else w,
        bias if bias is not None else w,
        residual if residual is not None else out,
        m, x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), eps, N=n, K=k,
        HAS_NORM=norm_weight is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        SILU_MUL=silu_mul, EVEN_K=k % cfg.block_k == 0,
        PRECISION="ieee" if w.dtype == torch.float32 else "tf32",
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=cfg.group,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(w))
    return out


def fused_matvec_ref(x, w, *, norm_weight=None, eps=1e-6, bias=None, residual=None, silu_mul=False,
                     out_dtype) -> torch.Tensor:
    """Plain PyTorch with the same semantics: input roundings as the model's, then float32 throughout."""
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
