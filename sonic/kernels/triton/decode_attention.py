"""Attention for 1..16 query rows (decode, speculative verification) in one launch per layer.

Input is the packed QKV projection of the new rows, at consecutive positions p0 .. p0+M-1; the cache
holds the keys before p0. Grid (Hkv, num_splits, M): each program takes one query row and one KV head
and runs its `group` query heads at once as a [group, D] tile, so each key tile is read once for them.
The prologue applies q/k RMSNorm (Qwen3) and RoPE (`qkv_rope.load_rope_heads`).

Every row is computed exactly as a one-row step at its position would compute it, bit for bit, so
speculative verification gives what plain decoding gives:
- key tiles are fixed slices of positions (tile b holds b*BLOCK_S ..), dealt round-robin to the splits
  (tile b to split b % num_splits) whatever the row or M;
- a tile's lanes from p0 on are the new rows' keys and values, computed in registers from `qkv` (the
  same computation that writes them to the cache, so the same bits a later step reads back);
- lanes past the row's position are masked, and a fully masked tile leaves the softmax state unchanged.
The last row's programs write the new rows' keys and values to the cache; no program reads a cache row
written in the same launch. A row whose keys fit one tile stores its output from that tile's program.
Otherwise each split leaves a partial output and a log-sum-exp in a float32 workspace; the last program
of a (KV head, row) to finish (an atomic counter, reset by that program) merges the splits in a fixed
order, so results do not depend on timing. A merge of one split gives that split's output exactly.
The KV length and slice bounds come from `positions` on the device: one CUDA graph serves every step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sonic.kernels.triton import MAX_ROWS
from sonic.kernels.triton.pdl import launch_options, pdl_prologue
from sonic.kernels.triton.qkv_rope import load_rope_heads, qkv_rope_cache_ref, rope_at
from triton.runtime.interpreter import InterpretedFunction

MAX_SPLITS = 16       # more splits only lengthen the merge at the contexts a step sees
COMBINE_ELEMS = 8192  # float32 partials one program holds at once while merging
_LOG2E = 1.4426950408889634
_H100_SMS = 132


@triton.jit
def _softmax_update(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no key yet keeps max -inf; subtract 0 instead so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _load_cached(blk, k_base, v_base, p0, stride_ks, stride_vs, d, in_d, BLOCK_S: tl.constexpr):
    """The cached lanes (positions < p0) of key tile `blk`; the rest are 0, never read."""
    s_idx = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    kv_mask = (s_idx < p0)[:, None] & in_d[None, :]
    k = tl.load(k_base + s_idx[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + s_idx[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _with_new_rows(k, v, blk, p0, p_last, write, qkv_ptr, stride_qkv, cos_ptr, sin_ptr, stride_cos, kw_ptr, eps,
                   kvh, kc_ptr, vc_ptr, stride_kh, stride_ks, stride_vh, stride_vs, d, in_d,
                   HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
                   BLOCK_D: tl.constexpr, HAS_KNORM: tl.constexpr):
    """Tile `blk` with its lanes p0 .. p_last replaced by the new rows' keys (normed, roped) and values;
    with `write`, also stored to the cache."""
    s_idx = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    new = (s_idx >= p0) & (s_idx <= p_last)
    j = tl.where(new, s_idx - p0, 0)
    c, s = rope_at(cos_ptr, sin_ptr, stride_cos, s_idx, new, k.dtype, D, BLOCK_D)
    heads = tl.full([BLOCK_S], HQ, tl.int32) + kvh
    k_new = load_rope_heads(qkv_ptr, stride_qkv, j, heads, new, c, s, kw_ptr, eps, D, BLOCK_D, HAS_KNORM)
    mask = new[:, None] & in_d[None, :]
    v_new = tl.load(qkv_ptr + j[:, None] * stride_qkv + (HQ + HKV + kvh) * D + d[None, :], mask=mask, other=0.0)
    w_mask = mask & write
    tl.store(kc_ptr + kvh * stride_kh + s_idx[:, None] * stride_ks + d[None, :], k_new, mask=w_mask)
    tl.store(vc_ptr + kvh * stride_vh + s_idx[:, None] * stride_vs + d[None, :], v_new, mask=w_mask)
    return tl.where(new[:, None], k_new, k), tl.where(new[:, None], v_new, v)


@triton.jit
def _attend_tile(k, v, blk, q, m_i, l_i, acc, pos, lo, qk_scale, BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
    s_idx = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    ok = ((s_idx <= pos) & (s_idx >= lo))[None, :]
    return _softmax_update(tl.where(ok, s, float("-inf")), v, m_i, l_i, acc, PRECISION)


@triton.jit
def _merge_splits(po_ptr, lse_ptr, out_ptr, kvh, row, first, n_used, stride_om, stride_oh,
                  GROUP: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr,
                  BLOCK_NS: tl.constexpr, BLOCK_D: tl.constexpr, COMBINE_R: tl.constexpr,
                  COMBINE_CHUNKS: tl.constexpr):
    """out = softmax-weighted sum of the used splits' partial outputs, for every head of (kvh, row)."""
    sp = tl.arange(0, BLOCK_NS)
    used = (sp < NUM_SPLITS) & ((sp - first % NUM_SPLITS + NUM_SPLITS) % NUM_SPLITS < n_used)
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    for c in tl.static_range(COMBINE_CHUNKS):  # unrolled: the chunks' loads are all in flight at once
        r = c * COMBINE_R + tl.arange(0, COMBINE_R)
        in_r = r < GROUP
        head = kvh * GROUP + r
        ws = (row * HQ + head) * NUM_SPLITS
        ok = in_r[:, None] & used[None, :]
        # .cg: read from L2, where the other programs' stores are, never a stale L1 line.
        lse = tl.load(lse_ptr + ws[:, None] + sp[None, :], mask=ok, other=float("-inf"), cache_modifier=".cg")
        mx = tl.max(lse, 1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)  # padding rows
        w = tl.exp2(lse - mx[:, None])  # 0 for unused splits
        o_mask = ok[:, :, None] & in_d[None, None, :]
        o = tl.load(po_ptr + (ws[:, None] + sp[None, :])[:, :, None] * D + d[None, None, :], mask=o_mask,
                    other=0.0, cache_modifier=".cg")
        total = tl.sum(w, 1)
        res = tl.sum(w[:, :, None] * o, 1) / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(out_ptr + row * stride_om + head[:, None] * stride_oh + d[None, :],
                 res.to(out_ptr.dtype.element_ty), mask=in_r[:, None] & in_d[None, :])


@triton.jit
def _tile_step(k, v, blk, q, m_i, l_i, acc, pos, lo, qk_scale, p0, p_last, write, qkv_ptr, stride_qkv, cos_ptr,
               sin_ptr, stride_cos, kw_ptr, eps, kvh, kc_ptr, vc_ptr, stride_kh, stride_ks, stride_vh, stride_vs, d,
               in_d, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
               BLOCK_D: tl.constexpr, HAS_KNORM: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile of cached lanes: the new rows' keys and values put in where the tile holds any,
    then the online-softmax update."""
    if blk * BLOCK_S + BLOCK_S > p0:
        k, v = _with_new_rows(k, v, blk, p0, p_last, write, qkv_ptr, stride_qkv, cos_ptr, sin_ptr, stride_cos, kw_ptr,
                              eps, kvh, kc_ptr, vc_ptr, stride_kh, stride_ks, stride_vh, stride_vs, d, in_d, HQ, HKV,
                              D, BLOCK_S, BLOCK_D, HAS_KNORM)
    return _attend_tile(k, v, blk, q, m_i, l_i, acc, pos, lo, qk_scale, BLOCK_S, PRECISION)


@triton.jit
def _attention_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, kc_ptr, vc_ptr, out_ptr,
                      po_ptr, lse_ptr, cnt_ptr, eps, qk_scale, window,
                      stride_qkv, stride_cos, stride_kh, stride_ks, stride_vh, stride_vs, stride_om, stride_oh, M,
                      GROUP: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                      NUM_SPLITS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_QNORM: tl.constexpr,
                      HAS_KNORM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_NS: tl.constexpr, COMBINE_R: tl.constexpr,
                      COMBINE_CHUNKS: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                      USE_PDL: tl.constexpr = False):
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    row = tl.program_id(2)
    # Positions were written by earlier steps, so everything they decide is known before the wait.
    p0 = tl.load(pos_ptr)
    pos = tl.load(pos_ptr + row)
    p_last = tl.load(pos_ptr + M - 1)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(pos - window + 1, 0)
    first = lo // BLOCK_S
    last = pos // BLOCK_S
    n_tiles = last - first + 1
    blk0 = first + (split - first % NUM_SPLITS + NUM_SPLITS) % NUM_SPLITS  # this split's first tile
    if blk0 <= last:
        d = tl.arange(0, BLOCK_D)
        in_d = d < D
        r = tl.arange(0, BLOCK_R)
        in_r = r < GROUP
        head = kvh * GROUP + r
        write = row == M - 1  # the last row's tiles cover every new position once
        k_base = kc_ptr + kvh * stride_kh
        v_base = vc_ptr + kvh * stride_vh
        # The cached lanes of the first tile are loaded before waiting for the QKV projection.
        k0, v0 = _load_cached(blk0, k_base, v_base, p0, stride_ks, stride_vs, d, in_d, BLOCK_S)
        dtype = qkv_ptr.dtype.element_ty
        c_q, s_q = rope_at(cos_ptr, sin_ptr, stride_cos, tl.full([BLOCK_R], 0, tl.int32) + pos, in_r, dtype, D,
                           BLOCK_D)
        pdl_prologue(USE_PDL)

        q = load_rope_heads(qkv_ptr, stride_qkv, tl.full([BLOCK_R], 0, tl.int32) + row, head, in_r, c_q, s_q,
                            qw_ptr, eps, D, BLOCK_D, HAS_QNORM)
        m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_R], tl.float32)
        acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        m_i, l_i, acc = _tile_step(k0, v0, blk0, q, m_i, l_i, acc, pos, lo, qk_scale, p0, p_last, write, qkv_ptr,
                                   stride_qkv, cos_ptr, sin_ptr, stride_cos, kw_ptr, eps, kvh, kc_ptr, vc_ptr,
                                   stride_kh, stride_ks, stride_vh, stride_vs, d, in_d, HQ, HKV, D, BLOCK_S, BLOCK_D,
                                   HAS_KNORM, PRECISION)
        if INTERPRET:
            # The interpreter keeps device scalars as size-1 arrays, which numpy 2 refuses as range() bounds.
            blk = blk0 + NUM_SPLITS
            while blk <= last:
                k, v = _load_cached(blk, k_base, v_base, p0, stride_ks, stride_vs, d, in_d, BLOCK_S)
                m_i, l_i, acc = _tile_step(k, v, blk, q, m_i, l_i, acc, pos, lo, qk_scale, p0, p_last, write,
                                           qkv_ptr, stride_qkv, cos_ptr, sin_ptr, stride_cos, kw_ptr, eps, kvh, kc_ptr,
                                           vc_ptr, stride_kh, stride_ks, stride_vh, stride_vs, d, in_d, HQ, HKV, D,
                                           BLOCK_S, BLOCK_D, HAS_KNORM, PRECISION)
                blk += NUM_SPLITS
        else:
            for blk in range(blk0 + NUM_SPLITS, last + 1, NUM_SPLITS):
                k, v = _load_cached(blk, k_base, v_base, p0, stride_ks, stride_vs, d, in_d, BLOCK_S)
                m_i, l_i, acc = _tile_step(k, v, blk, q, m_i, l_i, acc, pos, lo, qk_scale, p0, p_last, write,
                                           qkv_ptr, stride_qkv, cos_ptr, sin_ptr, stride_cos, kw_ptr, eps, kvh, kc_ptr,
                                           vc_ptr, stride_kh, stride_ks, stride_vh, stride_vs, d, in_d, HQ, HKV, D,
                                           BLOCK_S, BLOCK_D, HAS_KNORM, PRECISION)

        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        if n_tiles == 1:
            tl.store(out_ptr + row * stride_om + head[:, None] * stride_oh + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=in_r[:, None] & in_d[None, :])
        else:
            lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
            ws = (row * HQ + head) * NUM_SPLITS + split
            tl.store(lse_ptr + ws, lse, mask=in_r)
            tl.store(po_ptr + ws[:, None] * D + d[None, :], out, mask=in_r[:, None] & in_d[None, :])
            # Every thread's stores precede the counter's release (the barrier), so the program that sees
            # the count complete (acquire) reads every split's partials.
            tl.debug_barrier()
            n_used = tl.minimum(n_tiles, NUM_SPLITS)
            counter = cnt_ptr + kvh * M + row
            done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if done == n_used - 1:
                tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # ready for the next launch
                _merge_splits(po_ptr, lse_ptr, out_ptr, kvh, row, first, n_used, stride_om, stride_oh, GROUP, HQ,
                              D, NUM_SPLITS, BLOCK_NS, BLOCK_D, COMBINE_R, COMBINE_CHUNKS)


# Decided when the kernel was decorated: the interpreter needs another loop form (see _attention_kernel).
_INTERPRET = isinstance(_attention_kernel, InterpretedFunction)


def key_tiling(head_dim: int) -> tuple[int, int]:
    """(keys per tile, tiles in flight per program) for a head size. Fixed per model: tile boundaries fix
    every row's summation order. Timed on an H100 over decode steps at 128-180 keys: three 64-key tiles
    for heads of up to 64 dims (llama-3.2-1b, smollm2-135m: 256-key tiles are as fast while one tile holds
    every key, but the merge of two is slower); one tile of 16K elements for larger heads, 128 keys of 128
    dims (qwen3-1.7b: 1552 against 1606 µs per step with three 64-key tiles)."""
    block_d = triton.next_power_of_2(head_dim)
    return (64, 3) if block_d <= 64 else (max(16, 16384 // block_d), 1)


def default_num_splits(num_kv_heads: int, max_len: int, head_dim: int) -> int:
    """About one wave of programs once the context is long, at most MAX_SPLITS; never more splits than
    key tiles. (Measured on an H100 with 8 KV heads: 16 splits beat 8, 24 and 33 from 512 to 8192 keys.)"""
    sms = _H100_SMS
    if torch.cuda.is_available():
        sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, min(triton.cdiv(max_len, key_tiling(head_dim)[0]), sms // num_kv_heads, MAX_SPLITS))


def make_workspace(m: int, num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int, device):
    """(partial outputs float32 [M, Hq, splits, D], log2-sum-exp float32 [M, Hq, splits],
    merge counters int32 [Hkv, M], zero between launches)."""
    return (torch.empty(m, num_heads, num_splits, head_dim, dtype=torch.float32, device=device),
            torch.empty(m, num_heads, num_splits, dtype=torch.float32, device=device),
            torch.zeros(num_kv_heads, m, dtype=torch.int32, device=device))


_workspaces: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _workspace(*key):
    # Allocated on the first call for a shape: make that call before capturing a graph.
    if key not in _workspaces:
        _workspaces[key] = make_workspace(*key)
    return _workspaces[key]


def _check(qkv, k_cache, v_cache, out, num_heads, num_kv_heads, head_dim, sliding_window):
    m = qkv.shape[0]
    if not 1 <= m <= MAX_ROWS or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or qkv.stride(1) != 1:
        raise ValueError(f"qkv must be [M <= 16, (Hq + 2*Hkv) * D] with contiguous rows, got {tuple(qkv.shape)}")
    if num_heads % num_kv_heads or head_dim % 2:
        raise ValueError("Hq must be a multiple of Hkv, and RoPE needs an even head_dim")
    for cache in (k_cache, v_cache):
        if cache.shape[0] != num_kv_heads or cache.shape[2] != head_dim or cache.stride(2) != 1:
            raise ValueError(f"cache must be [Hkv, S, D] with contiguous D, got {tuple(cache.shape)}")
        if cache.dtype != qkv.dtype:
            raise ValueError(f"cache dtype {cache.dtype} differs from qkv dtype {qkv.dtype}")
    if out.shape != (m, num_heads, head_dim) or out.stride(2) != 1:
        raise ValueError(f"out must be [M, Hq, D] with contiguous D, got {tuple(out.shape)}")
    if sliding_window is not None and sliding_window < m:
        # The last row writes every new row's K/V from the tiles it attends to.
        raise ValueError(f"a sliding window of {sliding_window} is narrower than the {m} query rows")


def decode_attention(qkv, positions, cos, sin, k_cache, v_cache, out, *, num_heads, num_kv_heads, head_dim,
                     sm_scale, num_splits, q_norm_weight=None, k_norm_weight=None, eps=1e-6,
                     sliding_window=None, workspace=None, block_s=None):
    """out[m, h] = softmax(q[m, h] . K^T * sm_scale) V over keys j <= positions[m] (and
    j > positions[m] - sliding_window), with q, k = RoPE(RMSNorm?(projection)) of `qkv` [M, (Hq+2Hkv)*D].

    Writes the new rows' k and v to the caches [Hkv, S, D] at `positions` (int32 [M], consecutive, on the
    device). cos/sin: float32 [P, D] rotate-half tables. out [M, Hq, D]. `workspace` is
    `make_workspace(M, Hq, Hkv, D, num_splits, device)`, or None for one cached per shape. `block_s`: keys
    per tile, `key_tiling(head_dim)` unless given (tests use small tiles to reach many tiles cheaply)."""
    _check(qkv, k_cache, v_cache, out, num_heads, num_kv_heads, head_dim, sliding_window)
    m, hq, hkv, dim = qkv.shape[0], num_heads, num_kv_heads, head_dim
    group = hq // hkv
    if workspace is None:
        workspace = _workspace(m, hq, hkv, dim, num_splits, qkv.device)
    partial, lse, counters = workspace
    if partial.shape != (m, hq, num_splits, dim) or counters.shape != (hkv, m):
        raise ValueError("workspace was made for another shape")
    # Nothing below depends on M: every row runs the tile shapes a one-row step runs.
    block_r = max(16, triton.next_power_of_2(group))
    block_d = triton.next_power_of_2(dim)
    default_s, stages = key_tiling(dim)
    block_s = block_s or default_s
    block_ns = triton.next_power_of_2(num_splits)
    combine_r = min(triton.next_power_of_2(group), max(1, COMBINE_ELEMS // (block_ns * block_d)))
    _attention_kernel[(hkv, num_splits, m)](
        qkv, positions, cos, sin,
        q_norm_weight if q_norm_weight is not None else qkv, k_norm_weight if k_norm_weight is not None else qkv,
        k_cache, v_cache, out, partial, lse, counters, eps, sm_scale * _LOG2E, sliding_window or 0,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), m,
        GROUP=group, HQ=hq, HKV=hkv, D=dim, NUM_SPLITS=num_splits, HAS_WINDOW=sliding_window is not None,
        HAS_QNORM=q_norm_weight is not None, HAS_KNORM=k_norm_weight is not None,
        BLOCK_R=block_r, BLOCK_S=block_s, BLOCK_D=block_d,
        BLOCK_NS=block_ns, COMBINE_R=combine_r, COMBINE_CHUNKS=triton.cdiv(group, combine_r),
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32", INTERPRET=_INTERPRET,
        num_warps=8 if max(block_r, block_s) * block_d >= 128 * 128 else 4, num_stages=stages,
        enable_fp_fusion=False,  # a fused multiply-add would skip the roundings the reference RoPE makes
        **launch_options(qkv))
    return out


def attend_ref(q, k_cache, v_cache, positions, *, sm_scale, sliding_window=None) -> torch.Tensor:
    """Attention of roped q [M, Hq, D] over the cache, plain PyTorch in float32, cast back to q's dtype."""
    m, hq, _ = q.shape
    group = hq // k_cache.shape[0]
    kv_len = int(positions[-1]) + 1
    k = k_cache[:, :kv_len].float().repeat_interleave(group, 0)
    v = v_cache[:, :kv_len].float().repeat_interleave(group, 0)
    scores = torch.einsum("mhd,hjd->mhj", q.float(), k) * sm_scale
    j = torch.arange(kv_len, device=q.device)[None, :]
    pos = positions.long()[:, None]
    mask = j <= pos
    if sliding_window is not None:
        mask &= j > pos - sliding_window
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.einsum("mhj,hjd->mhd", scores.softmax(-1), v).to(q.dtype)


def decode_attention_ref(qkv, positions, cos, sin, k_cache, v_cache, *, num_heads, num_kv_heads, head_dim,
                         sm_scale, q_norm_weight=None, k_norm_weight=None, eps=1e-6,
                         sliding_window=None) -> torch.Tensor:
    """Plain PyTorch with the semantics of `decode_attention` (reads positions on the host)."""
    q = torch.empty(qkv.shape[0], num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    qkv_rope_cache_ref(qkv, positions, cos, sin, k_cache, v_cache, q, num_heads=num_heads,
                       num_kv_heads=num_kv_heads, head_dim=head_dim, q_norm_weight=q_norm_weight,
                       k_norm_weight=k_norm_weight, eps=eps)
    return attend_ref(q, k_cache, v_cache, positions, sm_scale=sm_scale, sliding_window=sliding_window)
