"""fused_matvec against its PyTorch reference: every option, odd shapes, several blocks, determinism."""
from __future__ import annotations

import itertools

import pytest
import torch

from sonic.kernels.triton.matvec import (MAX_ARGMAX_TILES, MAX_ROWS, MatvecConfig, fused_matvec, fused_matvec_ref,
                                        matvec_config, num_tiles)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter mishandles bfloat16, so the CPU run covers float16 for the low-precision path.
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32, torch.float16]
# Relative to the largest reference value: fp32 differs only in summation order; a low-precision
# weight can also see one input rounding flip where the kernel's rstd differs in the last bit.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _inputs(m, n, k, dtype, *, silu_mul=False, x_dtype=torch.float32):
    n_w = 2 * n if silu_mul else n
    return dict(
        x=torch.randn(m, k, device=DEVICE).to(x_dtype),
        w=(torch.randn(n_w, k, device=DEVICE) / k ** 0.5).to(dtype),
        norm_weight=(1 + 0.1 * torch.randn(k, device=DEVICE)).to(dtype),
        bias=torch.randn(n_w, device=DEVICE).to(dtype),
        residual=torch.randn(m, n, device=DEVICE),
    )


def _run(m, n, k, dtype, *, norm, bias, residual, silu_mul, out_dtype=torch.float32, x_dtype=torch.float32,
         config=None, eps=1e-6):
    t = _inputs(m, n, k, dtype, silu_mul=silu_mul, x_dtype=x_dtype)
    opts = dict(norm_weight=t["norm_weight"] if norm else None, bias=t["bias"] if bias else None,
                silu_mul=silu_mul, eps=eps)
    ref = fused_matvec_ref(t["x"], t["w"], residual=t["residual"] if residual else None, out_dtype=out_dtype,
                           **opts)
    if residual:  # the in-place residual update, as the decode loop uses it
        out = t["residual"].clone()
        fused_matvec(t["x"], t["w"], out, residual=out, config=config, **opts)
    else:
        out = torch.full((m, n), float("nan"), device=DEVICE, dtype=out_dtype)
        fused_matvec(t["x"], t["w"], out, config=config, **opts)
    return out, ref


def _assert_close(out, ref, dtype):
    assert not out.isnan().any(), "output not fully written"
    scale = ref.float().abs().max().item()
    tol = REL_TOL[dtype] if out.dtype == torch.float32 else max(REL_TOL[dtype], torch.finfo(out.dtype).eps)
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} over scale {scale:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("norm,bias,residual,silu_mul", list(itertools.product([False, True], repeat=4)))
def test_every_option(m, dtype, norm, bias, residual, silu_mul):
    out, ref = _run(m, 37, 72, dtype, norm=norm, bias=bias, residual=residual, silu_mul=silu_mul)
    _assert_close(out, ref, dtype)


# Small blocks so that the odd shapes span several programs and several K steps, ragged at both ends.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,config", [
    (1, 130, 200, MatvecConfig(8, 64)),
    (1, 130, 200, MatvecConfig(4, 256)),
    (3, 130, 200, MatvecConfig(16, 32)),
    (16, 130, 200, MatvecConfig(32, 64)),
    (1, 96, 256, MatvecConfig(16, 64)),   # even K: the unmasked weight loads
    (1, 130, 200, MatvecConfig(8, 64, group=3)),    # several tiles per program, the last one short
    (16, 130, 200, MatvecConfig(16, 64, group=4)),
    (5, 96, 256, MatvecConfig(16, 64)),
    (1, 40, 520, None),                      # the heuristic's own choice
    (4, 40, 520, None),
])
@pytest.mark.parametrize("silu_mul", [False, True])
def test_several_blocks(m, n, k, config, dtype, silu_mul):
    # A large eps, so that a kernel ignoring it would fail.
    out, ref = _run(m, n, k, dtype, norm=True, bias=False, residual=True, silu_mul=silu_mul, config=config, eps=0.5)
    _assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("m", [1, 3])
def test_low_precision_input_and_output(m, dtype):
    out, ref = _run(m, 130, 200, dtype, norm=False, bias=True, residual=False, silu_mul=False,
                    out_dtype=dtype, x_dtype=dtype, config=MatvecConfig(8, 64) if m == 1 else None)
    assert out.dtype == dtype
    _assert_close(out, ref, dtype)


@pytest.mark.parametrize("m", [1, 3])
def test_strided_rows(m):
    # x may be a row slice of a wider buffer (the last position of a prefill, say).
    buf = torch.randn(m, 3, 72, device=DEVICE)
    x = buf[:, 1]
    w = torch.randn(37, 72, device=DEVICE)
    nw = torch.randn(72, device=DEVICE)
    out = torch.full((m, 37), float("nan"), device=DEVICE)
    fused_matvec(x, w, out, norm_weight=nw)
    _assert_close(out, fused_matvec_ref(x, w, norm_weight=nw, out_dtype=torch.float32), torch.float32)


@pytest.mark.parametrize("m", [1, 16])
def test_bit_identical_across_calls(m):
    t = _inputs(m, 130, 200, DTYPES[-1], silu_mul=True)
    outs = []
    for _ in range(2):
        out = torch.full((m, 130), float("nan"), device=DEVICE)
        fused_matvec(t["x"], t["w"], out, norm_weight=t["norm_weight"], silu_mul=True,
                     config=MatvecConfig(8, 64) if m == 1 else None)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("gather", ["x", "residual"])
def test_rows_gathered_from_a_table(m, gather):
    """Layer 0 reads its input (QKV) or its residual (O projection) straight from the embedding."""
    dtype = DTYPES[-1]
    table = torch.randn(50, 72, device=DEVICE).to(dtype)
    index = torch.tensor([7, 49, 0][:m], device=DEVICE)
    w = (torch.randn(72, 72, device=DEVICE) / 72 ** 0.5).to(dtype)
    nw = (1 + 0.1 * torch.randn(72, device=DEVICE)).to(dtype)
    out = torch.full((m, 72), float("nan"), device=DEVICE)
    if gather == "x":
        x = table
        fused_matvec(x, w, out, norm_weight=nw, index=index)
        ref = fused_matvec_ref(x, w, norm_weight=nw, index=index, out_dtype=torch.float32)
    else:
        x = torch.randn(m, 72, device=DEVICE)
        fused_matvec(x, w, out, residual=table, index=index, gather="residual")
        ref = fused_matvec_ref(x, w, residual=table, index=index, gather="residual", out_dtype=torch.float32)
    _assert_close(out, ref, dtype)


@pytest.mark.parametrize("m,config", [(1, MatvecConfig(8, 64)), (1, None), (4, MatvecConfig(16, 32, group=3))])
def test_argmax_partials(m, config):
    """Every tile leaves the max of its columns and the lowest index holding it, per row."""
    n, k = 300, 72
    x = torch.randn(m, k, device=DEVICE)
    w = torch.randn(n, k, device=DEVICE)
    w[40] = w[41] = w[45]  # equal logits inside a tile: the lowest index wins
    cfg = config or matvec_config(m, n, k, elem_bytes=4, argmax=True)
    tiles = num_tiles(n, cfg)
    vals = torch.full((m, tiles), float("nan"), device=DEVICE)
    idxs = torch.full((m, tiles), -1, dtype=torch.int32, device=DEVICE)
    out = torch.empty(m, n, device=DEVICE)
    fused_matvec(x, w, out, norm_weight=torch.ones(k, device=DEVICE), argmax_partials=(vals, idxs), config=cfg)
    padded = torch.full((m, tiles * cfg.block_n), float("-inf"), device=DEVICE)
    padded[:, :n] = out
    want_vals, want_pos = padded.view(m, tiles, cfg.block_n).max(-1)  # max() returns the first maximum
    assert torch.equal(vals, want_vals)
    assert torch.equal(idxs.long(), want_pos + torch.arange(tiles, device=DEVICE) * cfg.block_n)


def test_rejects_bad_shapes():
    x, w = torch.randn(17, 8, device=DEVICE), torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError):
        fused_matvec(x, w, torch.empty(17, 4, device=DEVICE))
    with pytest.raises(ValueError):
        fused_matvec(x[:2], w, torch.empty(2, 3, device=DEVICE))
    with pytest.raises(ValueError):
        fused_matvec(x[:2], w[:3], torch.empty(2, 1, device=DEVICE), silu_mul=True)


SHAPES = [(3072, 2048, False), (2048, 2048, False), (8192, 2048, True), (2048, 8192, False),
          (128256, 2048, False), (6144, 4096, False), (14336, 4096, True), (4096, 14336, False),
          (2048, 576, False), (37, 72, False)]


@pytest.mark.parametrize("m", [1, 2, 4, 9, 16])
@pytest.mark.parametrize("n,k,silu", SHAPES)
def test_config_fills_the_gpu(m, n, k, silu):
    cfg = matvec_config(m, n, k, silu_mul=silu)
    for b in (cfg.block_n, cfg.block_k):
        assert b & (b - 1) == 0
    assert cfg.block_k <= max(64, 1 << (k - 1).bit_length())
    if n >= 32768:
        assert num_tiles(n, matvec_config(m, n, k, argmax=True)) <= MAX_ARGMAX_TILES
    programs = -(-n // (cfg.block_n * cfg.group))
    assert programs >= min(132, -(-n // cfg.block_n))  # a program per SM at least


@pytest.mark.parametrize("n,k,silu", SHAPES)
def test_config_keeps_the_row_arithmetic_for_every_m(n, k, silu):
    """K step and warps fix the order of each row's sums, so they never depend on M."""
    one = matvec_config(1, n, k, silu_mul=silu)
    for m in range(2, MAX_ROWS + 1):
        cfg = matvec_config(m, n, k, silu_mul=silu)
        assert (cfg.block_k, cfg.num_warps) == (one.block_k, one.num_warps)
        assert cfg.block_n % one.block_n == 0


def _one_row_at_a_time(t, m, **opts):
    rows = []
    for i in range(m):
        out = torch.full((1, t["n"]), float("nan"), device=DEVICE)
        res = t["residual"][i:i + 1].clone() if opts.get("residual") is not None else None
        if res is not None:
            out.copy_(res)
        fused_matvec(t["x"][i:i + 1], t["w"], out, **{**opts, "residual": out if res is not None else None},
                     config=opts_config(1, t))
        rows.append(out)
    return torch.cat(rows)


def opts_config(m, t):
    return matvec_config(m, t["n"], t["k"], silu_mul=t["silu"], elem_bytes=t["w"].element_size())


@pytest.mark.parametrize("m", [2, 3, 5, 9, 16])
@pytest.mark.parametrize("silu_mul,bias,residual", [(False, False, True), (True, False, False), (False, True, False)])
def test_rows_bit_identical_to_one_row_calls(m, silu_mul, bias, residual):
    """Verification of m tokens must give each row exactly what a one-token step gives."""
    n, k = (96, 200) if DEVICE == "cpu" else (3072, 2048)
    t = _inputs(m, n, k, DTYPES[-1], silu_mul=silu_mul)
    t.update(n=n, k=k, silu=silu_mul)
    opts = dict(norm_weight=t["norm_weight"], bias=t["bias"] if bias else None, silu_mul=silu_mul)
    out = torch.full((m, n), float("nan"), device=DEVICE)
    if residual:
        out.copy_(t["residual"])
    fused_matvec(t["x"], t["w"], out, residual=out if residual else None, config=opts_config(m, t), **opts)
    one = _one_row_at_a_time(t, m, residual=t["residual"] if residual else None, **opts)
    assert torch.equal(out, one)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,silu", SHAPES[:5] + SHAPES[8:9])
def test_rows_bit_identical_at_model_shapes(n, k, silu):
    """bf16 at the shapes of real models, with the heuristic's configs (widened tiles for M > 1)."""
    m = 9
    t = _inputs(m, n, k, torch.bfloat16, silu_mul=silu)
    t.update(n=n, k=k, silu=silu)
    out = torch.full((m, n), float("nan"), device=DEVICE)
    fused_matvec(t["x"], t["w"], out, norm_weight=t["norm_weight"], silu_mul=silu, config=opts_config(m, t))
    one = _one_row_at_a_time(t, m, norm_weight=t["norm_weight"], silu_mul=silu)
    assert torch.equal(out, one)
