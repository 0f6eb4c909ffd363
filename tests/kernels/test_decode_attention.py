"""Split-KV decode attention against its PyTorch reference, which is itself checked against SDPA."""
import pytest
import torch
import torch.nn.functional as F

from sonic.kernels.triton.decode_attention import (BLOCK_S, decode_attention, decode_attention_ref,
                                                   default_num_splits, make_workspace)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter mishandles bfloat16, so it is only tested on the GPU.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
CACHE_LEN = 300

# (M, kv_len, num_splits, Hkv, group, D, sliding_window)
CASES = [
    (1, 1, 1, 2, 4, 64, None),        # a single key
    (1, 17, 3, 2, 4, 64, None),       # one partial tile, two empty splits
    (1, 257, 16, 2, 7, 48, None),     # D not a power of two, group 7
    (1, 257, 16, 1, 7, 128, 64),      # window, M = 1
    (4, 17, 16, 2, 1, 48, None),      # no GQA, almost every split empty
    (4, 257, 3, 2, 2, 128, None),
    (4, 257, 3, 2, 4, 64, 32),        # window narrower than a tile
    (16, 17, 1, 1, 2, 128, None),     # rows padded past 16
    (16, 257, 16, 2, 4, 64, None),    # 64 rows
    (16, 257, 16, 1, 7, 48, 100),     # 112 rows padded to 128, window
]


def _inputs(m, kv_len, hkv, group, dim, dtype, positions=None):
    k_cache = torch.randn(hkv, CACHE_LEN, dim, device=DEVICE).to(dtype)
    v_cache = torch.randn(hkv, CACHE_LEN, dim, device=DEVICE).to(dtype)
    # Rows past kv_len are garbage the kernel must never let through.
    k_cache[:, kv_len:] = float("nan")
    v_cache[:, kv_len:] = float("nan")
    q = torch.randn(m, hkv * group, dim, device=DEVICE).to(dtype)
    if positions is None:
        positions = torch.arange(kv_len - m, kv_len, dtype=torch.int32, device=DEVICE)
    return q, k_cache, v_cache, positions


def _attend(q, k_cache, v_cache, positions, num_splits, window, workspace=None):
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, positions, out, sm_scale=q.shape[-1] ** -0.5,
                     num_splits=num_splits, sliding_window=window, workspace=workspace)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-L{}-ns{}-Hkv{}-g{}-D{}-w{}".format(*c))
def test_matches_ref(case, dtype):
    m, kv_len, num_splits, hkv, group, dim, window = case
    q, k_cache, v_cache, positions = _inputs(m, kv_len, hkv, group, dim, dtype)
    out = _attend(q, k_cache, v_cache, positions, num_splits, window)
    ref = decode_attention_ref(q, k_cache, v_cache, positions, sm_scale=dim ** -0.5, sliding_window=window)
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    # No atomics, fixed reduction order: a second call gives the same bits.
    assert torch.equal(out, _attend(q, k_cache, v_cache, positions, num_splits, window))


def test_scattered_positions_and_explicit_workspace():
    m, hkv, group, dim, num_splits = 3, 2, 4, 64, 5
    positions = torch.tensor([10, 130, 200], dtype=torch.int32, device=DEVICE)
    q, k_cache, v_cache, _ = _inputs(m, 201, hkv, group, dim, torch.float32, positions)
    workspace = make_workspace(m, hkv * group, dim, num_splits, DEVICE)
    out = _attend(q, k_cache, v_cache, positions, num_splits, 150, workspace)
    ref = decode_attention_ref(q, k_cache, v_cache, positions, sm_scale=dim ** -0.5, sliding_window=150)
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])


@pytest.mark.parametrize("window", [None, 5])
def test_ref_matches_sdpa(window):
    m, kv_len, hkv, group, dim = 4, 40, 2, 3, 32
    q, k_cache, v_cache, positions = _inputs(m, kv_len, hkv, group, dim, torch.float32)
    keys = k_cache[:, :kv_len].repeat_interleave(group, 0)[None]
    values = v_cache[:, :kv_len].repeat_interleave(group, 0)[None]
    j = torch.arange(kv_len, device=DEVICE)[None, :]
    pos = positions.long()[:, None]
    mask = (j <= pos) & (j > pos - window) if window else j <= pos
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, attn_mask=mask)
    ref = decode_attention_ref(q, k_cache, v_cache, positions, sm_scale=dim ** -0.5, sliding_window=window)
    torch.testing.assert_close(ref, sdpa[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_default_num_splits():
    for hkv in (1, 2, 8):
        splits = default_num_splits(hkv, 32768)
        assert 132 - hkv < hkv * splits <= 132  # a long context fills an H100's SMs in one wave
    assert default_num_splits(8, 100) == 2  # never more splits than key tiles
    assert default_num_splits(8, 1) == 1
    assert BLOCK_S == 64


@pytest.mark.gpu
def test_cuda_graph_replay_follows_positions():
    """Captured once, replayed at other positions: the kernel reads the KV length on the device."""
    m, hkv, group, dim, dtype = 2, 2, 4, 128, torch.bfloat16
    q, k_cache, v_cache, positions = _inputs(m, 40, hkv, group, dim, dtype)
    k_cache.normal_()
    v_cache.normal_()
    out = torch.empty_like(q)
    num_splits = default_num_splits(hkv, CACHE_LEN)
    run = lambda: decode_attention(q, k_cache, v_cache, positions, out, sm_scale=dim ** -0.5,  # noqa: E731
                                   num_splits=num_splits)
    run()  # compile and allocate the workspace outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for end in (2, 65, 299):
        positions.copy_(torch.arange(end - m, end, dtype=torch.int32, device=DEVICE))
        graph.replay()
        ref = decode_attention_ref(q, k_cache, v_cache, positions, sm_scale=dim ** -0.5)
        torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
