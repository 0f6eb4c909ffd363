"""Fused q/k RMSNorm (Qwen3), RoPE and KV-cache write: one launch per layer after the QKV projection.

Rounding follows the reference model in the dtype of `qkv`: the norm's output, cos/sin and the two RoPE
products are each rounded to it, and multiply-adds are not fused, so the results match `apply_rope` bit
for bit (barring the last ulp of the norm's sum). With float32 `qkv` nothing is rounded until the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sonic.kernels.triton.pdl import launch_options, pdl_prologue


@triton.jit
def _rms_norm(x, xr, w_ptr, d, d_rot, in_d, eps, D: tl.constexpr):
    # Normalise in float32, round to the working dtype, scale and round again, as the reference RMSNorm.
    dtype = x.dtype
    xf = x.to(tl.float32)
    r = tl.rsqrt(tl.sum(xf * xf, 0) / D + eps)
    w = tl.load(w_ptr + d, mask=in_d, other=0.0).to(tl.float32)
    wr = tl.load(w_ptr + d_rot, mask=in_d, other=0.0).to(tl.float32)
    x = (w * (xf * r).to(dtype).to(tl.float32)).to(dtype)
    xr = (wr * (xr.to(tl.float32) * r).to(dtype).to(tl.float32)).to(dtype)
    return x, xr


@triton.jit
def _rope(x, xr, c, s, d, HALF: tl.constexpr):
    # x*cos + rotate_half(x)*sin, each product rounded to the working dtype like the reference.
    dtype = x.dtype
    rot = tl.where(d < HALF, -xr.to(tl.float32), xr.to(tl.float32))
    t1 = (x.to(tl.float32) * c).to(dtype).to(tl.float32)
    t2 = (rot * s).to(dtype).to(tl.float32)
    return (t1 + t2).to(dtype)


@triton.jit
def _qkv_rope_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, q_ptr, qw_ptr, kw_ptr, eps,
                     stride_qkv, stride_cos, stride_sin, stride_kch, stride_kcs, stride_vch, stride_vcs,
                     stride_qm, stride_qh,
                     HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                     HAS_QNORM: tl.constexpr, HAS_KNORM: tl.constexpr, USE_PDL: tl.constexpr = False):
    pdl_prologue(USE_PDL)
    m = tl.program_id(0)
    h = tl.program_id(1)  # below HQ: a query head; from HQ: key head h - HQ, and its value head
    HALF: tl.constexpr = D // 2
    pos = tl.load(pos_ptr + m)
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    d_rot = tl.where(d < HALF, d + HALF, d - HALF)
    row = qkv_ptr + m * stride_qkv + h * D
    x = tl.load(row + d, mask=in_d, other=0.0)
    xr = tl.load(row + d_rot, mask=in_d, other=0.0)
    dtype = x.dtype
    c = tl.load(cos_ptr + pos * stride_cos + d, mask=in_d, other=0.0).to(dtype).to(tl.float32)
    s = tl.load(sin_ptr + pos * stride_sin + d, mask=in_d, other=0.0).to(dtype).to(tl.float32)
    if h < HQ:
        if HAS_QNORM:
            x, xr = _rms_norm(x, xr, qw_ptr, d, d_rot, in_d, eps, D)
        y = _rope(x, xr, c, s, d, HALF)
        tl.store(q_ptr + m * stride_qm + h * stride_qh + d, y, mask=in_d)
    else:
        j = h - HQ
        if HAS_KNORM:
            x, xr = _rms_norm(x, xr, kw_ptr, d, d_rot, in_d, eps, D)
        y = _rope(x, xr, c, s, d, HALF)
        tl.store(kc_ptr + j * stride_kch + pos * stride_kcs + d, y, mask=in_d)
        v = tl.load(row + HKV * D + d, mask=in_d, other=0.0)
        tl.store(vc_ptr + j * stride_vch + pos * stride_vcs + d, v, mask=in_d)


def _check(qkv, k_cache, v_cache, q_out, num_heads, num_kv_heads, head_dim):
    m = qkv.shape[0]
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or qkv.stride(1) != 1:
        raise ValueError(f"qkv must be [M, (Hq + 2*Hkv) * D] with contiguous rows, got {tuple(qkv.shape)}")
    if head_dim % 2:
        raise ValueError("RoPE needs an even head_dim")
    for cache in (k_cache, v_cache):
        if cache.shape[0] != num_kv_heads or cache.shape[2] != head_dim or cache.stride(2) != 1:
            raise ValueError(f"cache must be [Hkv, S, D] with contiguous D, got {tuple(cache.shape)}")
    if q_out.shape != (m, num_heads, head_dim) or q_out.stride(2) != 1:
        raise ValueError(f"q_out must be [M, Hq, D], got {tuple(q_out.shape)}")


def qkv_rope_cache(qkv, positions, cos, sin, k_cache, v_cache, q_out, *, num_heads, num_kv_heads, head_dim,
                   q_norm_weight=None, k_norm_weight=None, eps=1e-6):
    """Split `qkv` [M, (Hq+2*Hkv)*D] into heads; optionally RMSNorm q and k per head; RoPE them at
    `positions` [M] (int32, on the device); write q to `q_out` [M, Hq, D] and k, v to the caches
    [Hkv, S, D] at rows `positions`. cos/sin: float32 [P, D] rotate-half tables."""
    _check(qkv, k_cache, v_cache, q_out, num_heads, num_kv_heads, head_dim)
    m = qkv.shape[0]
    grid = (m, num_heads + num_kv_heads)
    _qkv_rope_kernel[grid](
        qkv, positions, cos, sin, k_cache, v_cache, q_out,
        q_norm_weight if q_norm_weight is not None else qkv,
        k_norm_weight if k_norm_weight is not None else qkv, eps,
        qkv.stride(0), cos.stride(0), sin.stride(0), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), q_out.stride(0), q_out.stride(1),
        HQ=num_heads, HKV=num_kv_heads, D=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        HAS_QNORM=q_norm_weight is not None, HAS_KNORM=k_norm_weight is not None,
        num_warps=1 if head_dim <= 128 else 2, **launch_options(qkv),
        enable_fp_fusion=False)  # a fused multiply-add would skip the roundings the reference makes
    return q_out


def _rms_norm_ref(x, weight, eps):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h.to(x.dtype)).to(x.dtype)


def qkv_rope_cache_ref(qkv, positions, cos, sin, k_cache, v_cache, q_out, *, num_heads, num_kv_heads, head_dim,
                       q_norm_weight=None, k_norm_weight=None, eps=1e-6):
    """Plain PyTorch with the same semantics as `qkv_rope_cache`."""
    from sonic.models.rope import apply_rope

    _check(qkv, k_cache, v_cache, q_out, num_heads, num_kv_heads, head_dim)
    m, dt = qkv.shape[0], qkv.dtype
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = q.view(m, num_heads, head_dim), k.view(m, num_kv_heads, head_dim), v.view(m, num_kv_heads, head_dim)
    if q_norm_weight is not None:
        q = _rms_norm_ref(q, q_norm_weight, eps)
    if k_norm_weight is not None:
        k = _rms_norm_ref(k, k_norm_weight, eps)
    pos = positions.long()
    c, s = cos[pos].to(dt)[:, None], sin[pos].to(dt)[:, None]  # [M, 1, D] against [M, heads, D]
    q_out.copy_(apply_rope(q, c, s))
    k_cache.index_copy_(1, pos, apply_rope(k, c, s).transpose(0, 1).to(k_cache.dtype))
    v_cache.index_copy_(1, pos, v.transpose(0, 1).to(v_cache.dtype))
    return q_out
