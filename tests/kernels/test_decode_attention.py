"""Fused attention (q/k norm, RoPE, cache write, split-KV, merge) against its PyTorch reference,
which is itself checked against SDPA and against the reference model's RMSNorm and RoPE."""
import pytest
import torch
import torch.nn.functional as F

from sonic.config import ModelConfig
from sonic.kernels.triton.decode_attention import (MAX_SPLITS, attend_ref, decode_attention, decode_attention_ref,
                                                   default_num_splits, key_tiling, make_workspace)
from sonic.kernels.triton.qkv_rope import qkv_rope_cache_ref
from sonic.models.llama import RMSNorm
from sonic.models.rope import apply_rope, rope_tables

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter mishandles bfloat16, so it is only tested on the GPU.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
CACHE_LEN = 1100
BLOCK_S = 64  # keys per tile unless a test says otherwise: short contexts then span many tiles and splits
SENTINEL = 7.0

# (M, kv_len, num_splits, Hkv, group, D, sliding_window, qk_norm)
CASES = [
    (1, 1, 1, 2, 4, 64, None, False),        # a single key: the new row only
    (1, 17, 3, 2, 4, 64, None, True),        # one partial tile, two empty splits
    (1, 257, 16, 2, 7, 48, None, False),     # D not a power of two, group 7
    (1, 257, 16, 1, 7, 128, 64, True),       # window, M = 1
    (4, 17, 16, 2, 1, 48, None, False),      # no GQA, almost every split empty
    (4, 257, 3, 2, 2, 128, None, True),
    (4, 257, 3, 2, 4, 64, 32, False),        # window narrower than a tile
    (16, 17, 1, 1, 2, 128, None, False),     # rows padded past 16
    (16, 257, 4, 2, 4, 64, None, True),      # 16 rows of 4 heads
    (16, 257, 16, 1, 7, 48, 100, False),     # 112 rows padded to 128, window
    (1, 1000, 16, 2, 4, 64, None, True),     # 16 tiles, one per split: every split merged
    (3, 1100, 3, 1, 8, 128, None, False),    # 3 splits of 6 tiles, the last one ragged
    (16, 1100, 5, 1, 4, 64, 700, False),     # window over several splits
    (9, 700, 6, 1, 1, 48, None, True),
]


def _tables(dim):
    config = ModelConfig("llama", 32, 64, 64, 1, 2, 1, dim, rope_theta=10000.0)
    return rope_tables(config, CACHE_LEN, DEVICE)


def _inputs(m, kv_len, hkv, group, dim, dtype, norm, positions=None):
    hq = hkv * group
    qkv = torch.randn(m, (hq + 2 * hkv) * dim, device=DEVICE).to(dtype)
    k_cache = torch.randn(hkv, CACHE_LEN, dim, device=DEVICE).to(dtype)
    v_cache = torch.randn(hkv, CACHE_LEN, dim, device=DEVICE).to(dtype)
    # Rows from the first new position on are garbage the kernel must overwrite or never read.
    first = kv_len - m if positions is None else int(positions[0])
    k_cache[:, first:] = float("nan")
    v_cache[:, first:] = float("nan")
    if positions is None:
        positions = torch.arange(kv_len - m, kv_len, dtype=torch.int32, device=DEVICE)
    weights = [(1 + 0.5 * torch.randn(dim, device=DEVICE)).to(dtype) if norm else None for _ in range(2)]
    return qkv, k_cache, v_cache, positions, weights


def _run(fn, qkv, k_cache, v_cache, positions, hkv, group, dim, window, weights, **kw):
    cos, sin = _tables(dim)
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    args = dict(num_heads=hkv * group, num_kv_heads=hkv, head_dim=dim, sm_scale=dim ** -0.5,
                q_norm_weight=weights[0], k_norm_weight=weights[1], eps=1e-6, sliding_window=window)
    if fn is decode_attention:
        kw.setdefault("block_s", BLOCK_S)
        out = torch.full((qkv.shape[0], hkv * group, dim), float("nan"), dtype=qkv.dtype, device=DEVICE)
        fn(qkv, positions, cos, sin, k_cache, v_cache, out, **args, **kw)
    else:
        out = fn(qkv, positions, cos, sin, k_cache, v_cache, **args)
    return out, k_cache, v_cache


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-L{}-ns{}-Hkv{}-g{}-D{}-w{}-n{:d}".format(*c))
def test_matches_ref(case, dtype):
    m, kv_len, num_splits, hkv, group, dim, window, norm = case
    inputs = _inputs(m, kv_len, hkv, group, dim, dtype, norm)
    out, k_cache, v_cache = _run(decode_attention, *inputs[:4], hkv, group, dim, window, inputs[4],
                                 num_splits=num_splits)
    ref, k_ref, v_ref = _run(decode_attention_ref, *inputs[:4], hkv, group, dim, window, inputs[4])
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    rows = slice(kv_len - m, kv_len)
    torch.testing.assert_close(k_cache[:, rows].float(), k_ref[:, rows].float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(v_cache[:, rows], v_ref[:, rows])
    # Untouched: the cached keys before the new rows, and the garbage after them.
    for got, want in ((k_cache, inputs[1]), (v_cache, inputs[2])):
        assert torch.equal(got[:, :kv_len - m], want[:, :kv_len - m])
        assert got[:, kv_len:].isnan().all()
    # Fixed merge order and counters reset by the kernel: a second call gives the same bits.
    again, _, _ = _run(decode_attention, *inputs[:4], hkv, group, dim, window, inputs[4], num_splits=num_splits)
    assert torch.equal(out, again)


@pytest.mark.parametrize("m,kv_len,num_splits,window", [(5, 70, 3, None), (9, 300, 4, 200), (3, 3, 2, None)])
def test_rows_bit_identical_to_one_row_calls(m, kv_len, num_splits, window):
    """Verification of m tokens gives each row, and the cache, exactly what m one-row steps give."""
    hkv, group, dim, dtype = 2, 4, 64, DTYPES[-1]
    qkv, k_cache, v_cache, positions, weights = _inputs(m, kv_len, hkv, group, dim, dtype, True)
    many, k_many, v_many = _run(decode_attention, qkv, k_cache, v_cache, positions, hkv, group, dim, window, weights,
                                num_splits=num_splits)
    k_one, v_one = k_cache.clone(), v_cache.clone()
    rows = []
    for i in range(m):
        out, k_one, v_one = _run(decode_attention, qkv[i:i + 1], k_one, v_one, positions[i:i + 1], hkv, group, dim,
                                 window, weights, num_splits=num_splits)
        rows.append(out)
    assert torch.equal(many, torch.cat(rows))
    assert torch.equal(k_many[:, :kv_len], k_one[:, :kv_len]) and torch.equal(v_many[:, :kv_len], v_one[:, :kv_len])


def test_a_window_narrower_than_the_rows_is_refused():
    qkv, k_cache, v_cache, positions, weights = _inputs(4, 40, 1, 2, 16, torch.float32, False)
    with pytest.raises(ValueError, match="narrower"):
        _run(decode_attention, qkv, k_cache, v_cache, positions, 1, 2, 16, 3, weights, num_splits=1)


def test_explicit_workspace_and_window():
    """A workspace passed in, a window reaching back past the first tile; the merge counters end at 0."""
    m, hkv, group, dim, num_splits = 3, 2, 4, 64, 5
    positions = torch.tensor([130, 131, 132], dtype=torch.int32, device=DEVICE)
    inputs = _inputs(m, 133, hkv, group, dim, torch.float32, False, positions)
    workspace = make_workspace(m, hkv * group, hkv, dim, num_splits, DEVICE)
    out, k_cache, _ = _run(decode_attention, *inputs[:4], hkv, group, dim, 150, inputs[4],
                           num_splits=num_splits, workspace=workspace)
    ref, k_ref, _ = _run(decode_attention_ref, *inputs[:4], hkv, group, dim, 150, inputs[4])
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    assert torch.equal(workspace[2], torch.zeros_like(workspace[2]))  # the merge counters are back to 0
    assert workspace[2].shape == (hkv, m)


@pytest.mark.parametrize("window", [None, 5])
def test_attend_ref_matches_sdpa(window):
    m, kv_len, hkv, group, dim = 4, 40, 2, 3, 32
    q = torch.randn(m, hkv * group, dim, device=DEVICE)
    k_cache, v_cache = torch.randn(2, hkv, CACHE_LEN, dim, device=DEVICE)
    positions = torch.arange(kv_len - m, kv_len, dtype=torch.int32, device=DEVICE)
    keys = k_cache[:, :kv_len].repeat_interleave(group, 0)[None]
    values = v_cache[:, :kv_len].repeat_interleave(group, 0)[None]
    j = torch.arange(kv_len, device=DEVICE)[None, :]
    pos = positions.long()[:, None]
    mask = (j <= pos) & (j > pos - window) if window else j <= pos
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, attn_mask=mask)
    ref = attend_ref(q, k_cache, v_cache, positions, sm_scale=dim ** -0.5, sliding_window=window)
    torch.testing.assert_close(ref, sdpa[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", [False, True])
def test_rope_ref_matches_model_ops(norm):
    """The reference prologue is what `Attention.forward` does, with the model's own RMSNorm and RoPE."""
    m, hq, hkv, dim, dtype = 3, 8, 2, 48, torch.float16
    qkv, k_cache, v_cache, positions, weights = _inputs(m, 40, hkv, hq // hkv, dim, dtype, norm)
    cos, sin = _tables(dim)
    q = torch.empty(m, hq, dim, dtype=dtype, device=DEVICE)
    qkv_rope_cache_ref(qkv, positions, cos, sin, k_cache, v_cache, q, num_heads=hq, num_kv_heads=hkv,
                       head_dim=dim, q_norm_weight=weights[0], k_norm_weight=weights[1], eps=1e-6)
    qm, km, vm = qkv.split([hq * dim, hkv * dim, hkv * dim], dim=-1)
    qm, km, vm = qm.view(1, m, hq, dim), km.view(1, m, hkv, dim), vm.view(1, m, hkv, dim)
    if norm:
        for i, w in enumerate(weights):
            layer = RMSNorm(dim, 1e-6).to(device=DEVICE, dtype=dtype)
            layer.weight.data.copy_(w)
            with torch.no_grad():
                qm, km = (layer(qm), km) if i == 0 else (qm, layer(km))
    pos = positions.long()
    c, s = cos[pos].to(dtype), sin[pos].to(dtype)
    rows = slice(37, 40)
    assert torch.equal(q, apply_rope(qm.transpose(1, 2), c, s)[0].transpose(0, 1))
    assert torch.equal(k_cache[:, rows], apply_rope(km.transpose(1, 2), c, s)[0])
    assert torch.equal(v_cache[:, rows], vm[0].transpose(0, 1))


def test_default_num_splits():
    for hkv in (1, 2, 8, 16):
        splits = default_num_splits(hkv, 32768, 64)
        assert splits == min(MAX_SPLITS, 132 // hkv)  # about one wave of an H100's SMs, at most MAX_SPLITS
    assert default_num_splits(8, 100, 64) == 2  # never more splits than key tiles
    assert default_num_splits(8, 300, 128) == 3
    assert default_num_splits(8, 1, 64) == 1


def test_key_tiling_by_head_size():
    assert [key_tiling(d) for d in (32, 48, 64, 128, 256)] == [(64, 3), (64, 3), (64, 3), (128, 1), (64, 1)]


# The default tiling for the head size (64 keys of up to 64 dims, 128 of 128): several tiles, splits merged.
@pytest.mark.parametrize("case", [(1, 1000, 16, 2, 4, 64, None, True), (3, 700, 3, 1, 8, 128, 300, False),
                                  (16, 600, 2, 2, 2, 48, None, False)],
                         ids=lambda c: "M{}-L{}-ns{}-Hkv{}-g{}-D{}-w{}-n{:d}".format(*c))
def test_default_tile_matches_ref(case):
    m, kv_len, num_splits, hkv, group, dim, window, norm = case
    dtype = DTYPES[-1]
    inputs = _inputs(m, kv_len, hkv, group, dim, dtype, norm)
    out, k_cache, _ = _run(decode_attention, *inputs[:4], hkv, group, dim, window, inputs[4],
                           num_splits=num_splits, block_s=None)
    ref, k_ref, _ = _run(decode_attention_ref, *inputs[:4], hkv, group, dim, window, inputs[4])
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    rows = slice(kv_len - m, kv_len)
    torch.testing.assert_close(k_cache[:, rows].float(), k_ref[:, rows].float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_bad_shapes_are_refused():
    qkv = torch.zeros(2, (4 + 2 * 2) * 16, device=DEVICE)
    cache = torch.zeros(2, 32, 16, device=DEVICE)
    cos, sin = _tables(16)
    with pytest.raises(ValueError, match="dtype"):
        decode_attention(qkv, torch.zeros(2, dtype=torch.int32, device=DEVICE), cos, sin, cache.half(),
                         cache.half(), torch.zeros(2, 4, 16, device=DEVICE), num_heads=4, num_kv_heads=2,
                         head_dim=16, sm_scale=0.25, num_splits=1)
    with pytest.raises(ValueError, match="qkv must be"):
        decode_attention(qkv[:, :-16], torch.zeros(2, dtype=torch.int32, device=DEVICE), cos, sin, cache, cache,
                         torch.zeros(2, 4, 16, device=DEVICE), num_heads=4, num_kv_heads=2, head_dim=16,
                         sm_scale=0.25, num_splits=1)


@pytest.mark.gpu
def test_cuda_graph_replay_follows_positions():
    """Captured once, replayed at other positions: the kernel reads the KV length on the device."""
    m, hkv, group, dim, dtype = 2, 2, 4, 128, torch.bfloat16
    qkv, k_cache, v_cache, positions, weights = _inputs(m, 40, hkv, group, dim, dtype, True)
    k_cache.normal_()
    v_cache.normal_()
    cos, sin = _tables(dim)
    out = torch.empty(m, hkv * group, dim, dtype=dtype, device=DEVICE)
    args = dict(num_heads=hkv * group, num_kv_heads=hkv, head_dim=dim, sm_scale=dim ** -0.5,
                q_norm_weight=weights[0], k_norm_weight=weights[1])
    run = lambda: decode_attention(qkv, positions, cos, sin, k_cache, v_cache, out,  # noqa: E731
                                   num_splits=default_num_splits(hkv, CACHE_LEN, dim), **args)
    run()  # compile and allocate the workspace outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for end in (2, 65, 299, 1100):
        positions.copy_(torch.arange(end - m, end, dtype=torch.int32, device=DEVICE))
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        graph.replay()
        ref = decode_attention_ref(qkv, positions, cos, sin, k_ref, v_ref, **args)
        torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
