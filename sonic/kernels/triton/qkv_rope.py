"""q/k RMSNorm (Qwen3) and RoPE on rows of the packed QKV projection, for the fused attention kernel.

The attention kernel calls `load_rope_heads` in its prologue instead of a separate launch per layer.
Rounding follows the reference model in the dtype of `qkv`: the norm's output, cos/sin and the two RoPE
products are each rounded to it, and multiply-adds are not fused (the kernel is compiled with
enable_fp_fusion=False), so the results match `apply_rope` bit for bit (barring the last ulp of the
norm's sum). With float32 `qkv` nothing is rounded until the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_rows(x, xr, w_ptr, d, d_rot, in_d, eps, D: tl.constexpr):
    # Normalise in float32, round to the working dtype, scale and round again, as the reference RMSNorm.
    dtype = x.dtype
    xf = x.to(tl.float32)
    r = tl.rsqrt(tl.sum(xf * xf, 1) / D + eps)[:, None]
    w = tl.load(w_ptr + d, mask=in_d, other=0.0).to(tl.float32)[None, :]
    wr = tl.load(w_ptr + d_rot, mask=in_d, other=0.0).to(tl.float32)[None, :]
    x = (w * (xf * r).to(dtype).to(tl.float32)).to(dtype)
    xr = (wr * (xr.to(tl.float32) * r).to(dtype).to(tl.float32)).to(dtype)
    return x, xr


@triton.jit
def rope_at(cos_ptr, sin_ptr, stride_cos, pos, valid, DTYPE: tl.constexpr, D: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """cos and sin rows [R, BLOCK_D] at positions `pos`, rounded to the working dtype like the reference's
    tables. They depend on positions only, so kernels load them before waiting for their input."""
    d = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (d < D)[None, :]
    p = tl.where(valid, pos, 0)[:, None]
    c = tl.load(cos_ptr + p * stride_cos + d[None, :], mask=mask, other=0.0).to(DTYPE).to(tl.float32)
    s = tl.load(sin_ptr + p * stride_cos + d[None, :], mask=mask, other=0.0).to(DTYPE).to(tl.float32)
    return c, s


@triton.jit
def load_rope_heads(qkv_ptr, stride_qkv, rows, heads, valid, c, s, nw_ptr, eps,
                    D: tl.constexpr, BLOCK_D: tl.constexpr, HAS_NORM: tl.constexpr):
    """[R, BLOCK_D] = RoPE(RMSNorm?(head `heads[i]` of projection row `rows[i]`)) with the rows' cos and
    sin tables c, s (`rope_at`). Heads count in units of D across the packed [q | k | v] row; invalid
    rows give 0."""
    HALF: tl.constexpr = D // 2
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    d_rot = tl.where(d < HALF, d + HALF, d - HALF)
    mask = valid[:, None] & in_d[None, :]
    base = qkv_ptr + rows[:, None] * stride_qkv + heads[:, None] * D
    x = tl.load(base + d[None, :], mask=mask, other=0.0)
    xr = tl.load(base + d_rot[None, :], mask=mask, other=0.0)
    dtype = x.dtype
    if HAS_NORM:
        x, xr = _rms_norm_rows(x, xr, nw_ptr, d, d_rot, in_d, eps, D)
    # x*cos + rotate_half(x)*sin, each product rounded to the working dtype like the reference.
    rot = tl.where((d < HALF)[None, :], -xr.to(tl.float32), xr.to(tl.float32))
    t1 = (x.to(tl.float32) * c).to(dtype).to(tl.float32)
    t2 = (rot * s).to(dtype).to(tl.float32)
    return (t1 + t2).to(dtype)


def _rms_norm_ref(x, weight, eps):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h.to(x.dtype)).to(x.dtype)


def qkv_rope_cache_ref(qkv, positions, cos, sin, k_cache, v_cache, q_out, *, num_heads, num_kv_heads, head_dim,
                       q_norm_weight=None, k_norm_weight=None, eps=1e-6):
    """Split `qkv` [M, (Hq+2*Hkv)*D] into heads; optionally RMSNorm q and k per head; RoPE them at
    `positions` [M]; write q to `q_out` [M, Hq, D] and k, v to the caches [Hkv, S, D] at rows `positions`.
    cos/sin: float32 [P, D] rotate-half tables. Plain PyTorch: what the fused kernel's prologue does."""
    from sonic.models.rope import apply_rope

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
