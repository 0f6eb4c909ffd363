"""Tensor-core fused matvec for 1..16 query rows: the same contract as kernels/triton/matvec.py.

out = [residual +] epilogue(rmsnorm?(x) @ w.T [+ bias]), with the same gathers, SiLU·mul and argmax
partials. The rows ride on the 8-wide side of mma.m16n8k16, so each row costs the same instructions
whatever M is (bit-identical verification rows) and 16 rows cost about what one row costs: the weights
stream once and the tensor cores have time to spare. Hopper only (griddepcontrol); `supports` says
whether a call can run here, else the Triton kernel does.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import astuple, dataclass

import torch
import triton

from sonic.kernels.cuda import build, driver
from sonic.kernels.triton import MAX_ROWS
from sonic.kernels.triton.pdl import pdl_enabled

ROWS_PER_TILE = 16   # weight rows per tile: the 16-row side of the MMA
WARPS = 8            # warps per block, splitting K by 32-wide chunks
CHUNK = 32
X_EARLY_MAX_K = 4096  # longer inputs are loaded where they are used (timed on an H200: the down projection)
_SMEM_LIMIT = 200 * 1024  # dynamic shared memory for the normalised rows (16 rows of K)


@dataclass(frozen=True)
class Flags:
    norm: bool = False
    bias: bool = False
    res: bool = False
    silu: bool = False
    argmax: bool = False
    x_gather: bool = False
    res_gather: bool = False
    x_f32: bool = False
    res_f32: bool = False
    out_f32: bool = False
    x_early: bool = True  # without the norm: inputs loaded with the weights (short K) or where used (long K)
    # With the norm, more than NARROW_ROWS rows: eight rows' inputs in flight at once, not four. It needs
    # more registers (one block per SM, not two), so one-token steps keep the narrow kernel; a row's
    # arithmetic is the same in both.
    wide: bool = False
    # Blocks (one cluster) sharing each tile's K (see ksplit).
    split: int = 1

    @property
    def name(self) -> str:
        *flags, split = astuple(self)
        return "tcmv_" + "".join("1" if f else "0" for f in flags) + (f"_k{split}" if split > 1 else "")

    def smem(self, m: int, k: int) -> int:
        return m * (k + 8) * 2 if self.norm else 0

    def source(self) -> str:
        *flags, early, wide, _ = ("true" if f else "false" for f in astuple(self))
        group = 8 if self.wide else 4
        bounds = f"{WARPS * 32}, 1" if self.wide else f"{WARPS * 32}"  # wide: registers over occupancy
        return (f'extern "C" __global__ void __launch_bounds__({bounds}) {self.name}(TcParams p) '
                f"{{ tcmv::run<{WARPS}, {self.split}, {early}, {group}, {', '.join(flags)}>(p); }}\n")


NARROW_ROWS = 4
# What the graph runner launches (qkv of layer 0 and after, with and without bias; O of layer 0 and
# after; gate/up; down; LM head with and without argmax; the normalising ones also wide, for
# verification): built together in one nvcc run.
_NORMED = (dict(norm=True, x_gather=True), dict(norm=True, x_gather=True, bias=True),
           dict(norm=True, x_f32=True), dict(norm=True, x_f32=True, bias=True),
           dict(norm=True, silu=True, x_f32=True), dict(norm=True, x_f32=True, argmax=True, out_f32=True),
           dict(norm=True, x_f32=True, out_f32=True))
STANDARD = tuple(Flags(**kw) for kw in (
    *_NORMED, *(kw | dict(wide=True) for kw in _NORMED),
    dict(res=True, res_gather=True, out_f32=True), dict(res=True, res_f32=True, out_f32=True),
    dict(res=True, res_f32=True, out_f32=True, x_early=False),
    dict(res=True, res_f32=True, out_f32=True, x_early=False, split=2)))


def kernels_source(flags=STANDARD) -> str:
    return '#include "tc_matvec.cuh"\n' + "".join(f.source() for f in flags)


class _Params(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("x", "w", "out", "nw", "bias", "res", "index", "pval", "pidx")] + \
               [(name, ctypes.c_longlong) for name in ("stride_x", "stride_r", "stride_o")] + \
               [(name, ctypes.c_int) for name in ("M", "N", "K", "tiles", "tiles_per_block")] + [("eps", ctypes.c_float)]


def num_tiles(N: int) -> int:
    return triton.cdiv(N, ROWS_PER_TILE)


def tiles_per_block(N: int) -> int:
    """Tiles one block walks through: one, unless there are thousands (the LM head), where fewer blocks
    mean fewer passes over the rows for the RMSNorm statistics."""
    return max(1, num_tiles(N) // 1024)


FILL_BLOCKS = 264  # two blocks on each of an H100's or H200's 132 SMs


def ksplit(N: int, K: int) -> int:
    """Blocks (one cluster) per tile: two where a tile's K is long (more than X_EARLY_MAX_K) and the
    tiles too few to fill the GPU twice over, so that a tile of 16 rows streams from two SMs. Timed on
    an H200: llama-3.2-1b's down projection 17.9 -> 14.2 us; shorter K lost time to the clusters' syncs.
    A function of the shape alone: every M splits the same way (bit-identical rows)."""
    return 2 if K > X_EARLY_MAX_K and num_tiles(N) * 2 <= FILL_BLOCKS else 1


@functools.lru_cache(maxsize=None)
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    return build.nvcc_path() is not None


def supports(x, w, out, *, norm_weight=None, silu_mul=False, index=None, gather="x", residual=None) -> bool:
    """Whether `matvec` takes this call on this machine (the caller falls back to Triton if not)."""
    if w.device.type != "cuda" or w.dtype != torch.bfloat16 or not available() or not _hopper(w.device.index or 0):
        return False
    k = w.shape[1]
    if k % CHUNK or not w.is_contiguous() or x.stride(1) != 1 or x.data_ptr() % 16 or x.stride(0) % 8:
        return False
    if x.dtype == torch.float32 and norm_weight is None:
        return False  # fp32 inputs are only normalised here
    if index is not None and gather == "x" and norm_weight is None:
        return False
    if norm_weight is not None and MAX_ROWS * (k + 8) * 2 > _SMEM_LIMIT:
        return False
    if residual is not None and residual.dtype not in (torch.float32, torch.bfloat16):
        return False
    return out.dtype in (torch.float32, torch.bfloat16) and x.dtype in (torch.float32, torch.bfloat16)


class _Kernels:
    """The compiled kernels of one device: the standard set, plus any other flags asked for."""

    def __init__(self, device_index: int):
        self.device_index = device_index
        self.modules: dict[Flags, driver.Module] = {}
        self.smem: dict[Flags, int] = {}

    def function(self, flags: Flags, smem: int):
        if flags not in self.modules:
            wanted = STANDARD if flags in STANDARD else (*STANDARD, flags)
            module = driver.Module(build.compile_cubin(kernels_source(wanted)), self.device_index)
            for f in wanted:
                self.modules[f] = module
        if smem > self.smem.get(flags, 48 * 1024):
            self.smem[flags] = smem
            return self.modules[flags].function(flags.name, smem)
        return self.modules[flags].function(flags.name)


_kernels: dict[int, _Kernels] = {}


def _ptr(t) -> int | None:
    return None if t is None else t.data_ptr()


def matvec(x, w, out, *, norm_weight=None, eps=1e-6, bias=None, residual=None, silu_mul=False,
           index=None, gather="x", argmax_partials=None):
    """See kernels/triton/matvec.fused_matvec; argmax partials are [M, num_tiles(N)] here."""
    from sonic.kernels.triton.matvec import check_args

    x_gather = index is not None and gather == "x"
    m, n, k = check_args(x, w, out, norm_weight, bias, residual, silu_mul, index, x_gather, argmax_partials)
    if index is not None and index.dtype != torch.int64:
        raise ValueError("the CUDA matvec gathers with an int64 index")
    tiles = num_tiles(n)
    if argmax_partials is not None and argmax_partials[0].shape != (m, tiles):
        raise ValueError(f"argmax partials must be [{m}, {tiles}]")
    flags = Flags(norm=norm_weight is not None, bias=bias is not None, res=residual is not None, silu=silu_mul,
                  argmax=argmax_partials is not None, x_gather=x_gather,
                  res_gather=index is not None and not x_gather, x_f32=x.dtype == torch.float32,
                  res_f32=residual is not None and residual.dtype == torch.float32,
                  out_f32=out.dtype == torch.float32, x_early=norm_weight is not None or k <= X_EARLY_MAX_K,
                  wide=norm_weight is not None and m > NARROW_ROWS, split=ksplit(n, k))
    dev = w.device.index if w.device.index is not None else torch.cuda.current_device()
    kernels = _kernels.setdefault(dev, _Kernels(dev))
    smem = flags.smem(m, k)
    fn = kernels.function(flags, flags.smem(MAX_ROWS, k))
    vals, idxs = argmax_partials if argmax_partials is not None else (None, None)
    tpb, ks = tiles_per_block(n), flags.split
    p = _Params(x=x.data_ptr(), w=w.data_ptr(), out=out.data_ptr(), nw=_ptr(norm_weight), bias=_ptr(bias),
                res=_ptr(residual), index=_ptr(index), pval=_ptr(vals), pidx=_ptr(idxs),
                stride_x=x.stride(0), stride_r=residual.stride(0) if residual is not None else 0,
                stride_o=out.stride(0), M=m, N=n, K=k, tiles=tiles, tiles_per_block=tpb, eps=eps)
    driver.launch(fn, triton.cdiv(tiles, tpb) * ks, WARPS * 32, smem, p, dev, pdl_enabled(w), cluster=ks)
    return out
