"""The fused q/k norm + RoPE + cache-write kernel against its PyTorch twin and the reference model's ops."""
import pytest
import torch

from sonic.config import ModelConfig
from sonic.kernels.triton.qkv_rope import qkv_rope_cache, qkv_rope_cache_ref
from sonic.models.llama import RMSNorm
from sonic.models.rope import apply_rope, rope_tables

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter mishandles bfloat16, so it is only tested on the GPU.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
SENTINEL = 7.0
CACHE_LEN = 100
START = 37  # positions deliberately not starting at 0
# (M, Hq, Hkv, D)
SHAPES = [(1, 4, 4, 16), (3, 8, 2, 48), (16, 14, 2, 64)]


def _tables(head_dim):
    config = ModelConfig("llama", 32, 64, 64, 1, 2, 1, head_dim, rope_theta=10000.0)
    return rope_tables(config, CACHE_LEN, DEVICE)


def _inputs(m, hq, hkv, dim, dtype, norm, qkv_dtype=None):
    qkv = torch.randn(m, (hq + 2 * hkv) * dim, device=DEVICE).to(qkv_dtype or dtype)
    positions = torch.arange(START, START + m, dtype=torch.int32, device=DEVICE)
    weights = [(1 + 0.5 * torch.randn(dim, device=DEVICE)).to(dtype) if norm else None for _ in range(2)]
    return qkv, positions, weights


def _run(fn, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights):
    k_cache = torch.full((hkv, CACHE_LEN, dim), SENTINEL, dtype=dtype, device=DEVICE)
    v_cache = torch.full_like(k_cache, SENTINEL)
    q = torch.full((qkv.shape[0], hq, dim), float("nan"), dtype=dtype, device=DEVICE)
    fn(qkv, positions, cos, sin, k_cache, v_cache, q, num_heads=hq, num_kv_heads=hkv, head_dim=dim,
       q_norm_weight=weights[0], k_norm_weight=weights[1], eps=1e-6)
    return q, k_cache, v_cache


def _model_path(qkv, positions, cos, sin, hq, hkv, dim, weights):
    """What `Attention.forward` does to one step's projections, with the model's own RMSNorm and RoPE."""
    m, dt = qkv.shape[0], qkv.dtype
    q, k, v = qkv.split([hq * dim, hkv * dim, hkv * dim], dim=-1)
    q, k, v = q.view(1, m, hq, dim), k.view(1, m, hkv, dim), v.view(1, m, hkv, dim)
    for i, w in enumerate(weights):
        if w is not None:
            norm = RMSNorm(dim, 1e-6).to(device=DEVICE, dtype=dt)
            norm.weight.data.copy_(w)
            with torch.no_grad():
                if i == 0:
                    q = norm(q)
                else:
                    k = norm(k)
    q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [1, heads, M, D]
    pos = positions.long()
    c, s = cos[pos].to(dt), sin[pos].to(dt)
    return apply_rope(q, c, s)[0].transpose(0, 1), apply_rope(k, c, s)[0], v[0]


def _close(a, b, dtype):
    # Only the norm's summation order differs, so at most an ulp of the working dtype.
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "qk_norm"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}-Hq{}-Hkv{}-D{}".format(*s))
def test_matches_ref_and_model(shape, norm, dtype):
    m, hq, hkv, dim = shape
    cos, sin = _tables(dim)
    qkv, positions, weights = _inputs(m, hq, hkv, dim, dtype, norm)
    q, k_cache, v_cache = _run(qkv_rope_cache, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    q_ref, k_ref, v_ref = _run(qkv_rope_cache_ref, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    for got, want in ((q, q_ref), (k_cache, k_ref), (v_cache, v_ref)):
        _close(got, want, dtype)

    rows = slice(START, START + m)
    q_model, k_model, v_model = _model_path(qkv, positions, cos, sin, hq, hkv, dim, weights)
    _close(q, q_model, dtype)
    _close(k_cache[:, rows], k_model, dtype)
    assert torch.equal(v_cache[:, rows], v_model)
    if not norm:  # no reduction involved: every rounding is the reference's, so the bits agree
        assert torch.equal(q, q_model) and torch.equal(k_cache[:, rows], k_model)

    untouched = torch.ones(CACHE_LEN, dtype=torch.bool)
    untouched[rows] = False
    for cache in (k_cache, v_cache):
        assert (cache[:, untouched] == SENTINEL).all()


def test_float32_qkv_into_half_cache():
    """The projection may hand over float32: everything stays float32 until the store."""
    m, hq, hkv, dim, dtype = 3, 8, 2, 64, torch.float16
    cos, sin = _tables(dim)
    qkv, positions, weights = _inputs(m, hq, hkv, dim, dtype, True, qkv_dtype=torch.float32)
    weights = [w.float() for w in weights]
    got = _run(qkv_rope_cache, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    want = _run(qkv_rope_cache_ref, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    for a, b in zip(got, want):
        _close(a, b, dtype)


def test_scattered_positions():
    """Rows land exactly where positions say, gaps included."""
    hq, hkv, dim, dtype = 4, 2, 32, torch.float32
    cos, sin = _tables(dim)
    qkv, _, weights = _inputs(3, hq, hkv, dim, dtype, False)
    positions = torch.tensor([5, 40, 99], dtype=torch.int32, device=DEVICE)
    q, k_cache, v_cache = _run(qkv_rope_cache, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    _, k_ref, v_ref = _run(qkv_rope_cache_ref, qkv, positions, cos, sin, hq, hkv, dim, dtype, weights)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
