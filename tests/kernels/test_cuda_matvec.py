"""The tensor-core CUDA matvec against the PyTorch reference, and its rows against one-row calls."""
from __future__ import annotations


import pytest
import torch

from sonic.kernels.cuda import matvec as cmv
from sonic.kernels.triton.lm_head_sample import reduce_argmax
from sonic.kernels.triton.matvec import fused_matvec_ref

pytestmark = pytest.mark.gpu

FLAG_CASES = [
    dict(norm=True), dict(norm=True, bias=True), dict(norm=True, gather=True), dict(norm=True, silu=True),
    dict(norm=True, silu=True, bias=True), dict(res=True), dict(res=True, gather=True), dict(norm=True, argmax=True),
    dict(), dict(bias=True, res=True),
]


def _case(m, n, k, *, norm=False, bias=False, res=False, silu=False, argmax=False, gather=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    n_w = 2 * n if silu else n
    t = dict(w=(r(n_w, k) / k ** 0.5).bfloat16(), nw=(1 + 0.1 * r(k)).bfloat16(), bias=r(n_w).bfloat16())
    table = r(50, k).bfloat16() if gather and norm else r(50, n).bfloat16()
    index = torch.randint(0, 50, (m,), device="cuda", generator=g)
    x = table if gather and norm else (r(m, k) if norm else r(m, k).bfloat16())
    resid = table if gather and not norm else r(m, n)
    opts = dict(norm_weight=t["nw"] if norm else None, bias=t["bias"] if bias else None, silu_mul=silu,
                residual=resid if res else None, index=index if gather else None,
                gather="x" if norm else "residual")
    out_dtype = torch.float32 if res or argmax else torch.bfloat16
    return x, t["w"], opts, out_dtype


def _call(x, w, opts, out_dtype, m, argmax):
    n = w.shape[0] // 2 if opts["silu_mul"] else w.shape[0]
    out = torch.full((m, n), float("nan"), device="cuda", dtype=out_dtype)
    parts = None
    if argmax:
        t = cmv.num_tiles(n)
        parts = (torch.empty(m, t, device="cuda"), torch.empty(m, t, device="cuda", dtype=torch.int32))
    assert cmv.supports(x, w, out, norm_weight=opts["norm_weight"], silu_mul=opts["silu_mul"],
                        index=opts["index"], gather=opts["gather"], residual=opts["residual"])
    cmv.matvec(x, w, out, argmax_partials=parts, **opts)
    return out, parts


@pytest.fixture(autouse=True)
def _needs_hopper_and_nvcc():
    if not cmv.available():
        pytest.skip("nvcc is needed to build the CUDA kernels")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUDA matvec is built for Hopper")


@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(f) or "plain")
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("n,k", [(200, 96), (3072, 2048), (1000, 576), (100, 4160)])  # the last: K split over two blocks
def test_matches_reference_and_one_row_calls(flags, m, n, k):
    x, w, opts, out_dtype = _case(m, n, k, **flags)
    argmax = flags.get("argmax", False)
    out, parts = _call(x, w, opts, out_dtype, m, argmax)
    ref = fused_matvec_ref(x, w, out_dtype=torch.float32, **opts)
    assert not out.isnan().any()
    scale = ref.abs().max().item()
    err = (out.float() - ref).abs().max().item()
    assert err <= 1e-2 * scale, f"max error {err:.3g} over scale {scale:.3g}"
    if argmax:
        ids = torch.empty(m, dtype=torch.long, device="cuda")
        reduce_argmax(*parts, ids)
        assert torch.equal(ids, out.argmax(-1))
    # Each row is bit-identical to the same row computed alone.
    for i in sorted({0, m // 2, m - 1}):
        one_opts = dict(opts)
        x1 = x if opts["index"] is not None and opts["gather"] == "x" else x[i:i + 1].contiguous()
        if opts["index"] is not None:
            one_opts["index"] = opts["index"][i:i + 1].contiguous()
        if opts["residual"] is not None and opts["index"] is None:
            one_opts["residual"] = opts["residual"][i:i + 1].contiguous()
        one, _ = _call(x1, w, one_opts, out_dtype, 1, argmax)
        assert torch.equal(one[0], out[i]), f"row {i} of {m} differs from a one-row call"


def test_in_place_residual_and_repeatability():
    x, w, opts, _ = _case(5, 2048, 8192, res=True)
    h = opts["residual"].clone()
    opts2 = dict(opts, residual=h)
    cmv.matvec(x, w, h, **opts2)
    ref = fused_matvec_ref(x, w, residual=opts["residual"], out_dtype=torch.float32)
    assert (h - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
    again = opts["residual"].clone()
    cmv.matvec(x, w, again, **dict(opts, residual=again))
    assert torch.equal(h, again)


def test_falls_back_where_unsupported():
    w = torch.zeros(64, 72, device="cuda", dtype=torch.bfloat16)  # K not a multiple of 32
    x = torch.zeros(1, 72, device="cuda", dtype=torch.bfloat16)
    assert not cmv.supports(x, w, torch.empty(1, 64, device="cuda"))
    w16 = torch.zeros(64, 96, device="cuda", dtype=torch.float16)
    assert not cmv.supports(x[:, :96], w16, torch.empty(1, 64, device="cuda"))
