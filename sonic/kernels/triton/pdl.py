"""Programmatic dependent launch: a kernel's launch and setup overlap the tail of the kernel before it.

Every fused kernel starts with `pdl_prologue(USE_PDL)`: it waits until the previous kernel's writes are
visible, then lets the next kernel launch. Off under the interpreter and on GPUs older than Hopper, and
switched by SONIC_PDL (early = on, the default; 1 = on, the next kernel launching after the wait;
0 = off); kernels that stream more than SONIC_PDL_MAX_MB (default 100) launch without it. With early,
the next kernel launches before the wait, so kernels further down the chain can start loading their
weights while an earlier one still runs (each still waits for its predecessor before it reads anything
that kernel writes).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from sonic.errors import SonicError

DEFAULT = "early"  # measured faster on an H100 than 1 and than off (docs/benchmarks.md)
# A kernel that streams more than this launches after its predecessor: early programs of a long stream
# slowed it (llama-3.1-8b on an H200: 4192 us per step with PDL everywhere, 4017 without it past 100 MB,
# 4088 without it anywhere in the matvecs); smaller models gain from PDL on every kernel.
DEFAULT_MAX_MB = "100"


@functools.lru_cache(maxsize=None)
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def setting() -> str:
    value = os.environ.get("SONIC_PDL", DEFAULT)
    if value not in ("0", "1", "early"):
        raise SonicError(f"SONIC_PDL={value!r} is not a setting: use early (the default), 1 or 0 (off)")
    return value


def pdl_enabled(t: torch.Tensor) -> bool:
    if setting() == "0" or t.device.type != "cuda":
        return False
    return _supported(t.device.index if t.device.index is not None else torch.cuda.current_device())


def launch_options(t: torch.Tensor, stream_bytes: int = 0) -> dict:
    """Keyword arguments for a kernel launch on `t`'s device: the constexpr and the launch flag.
    `stream_bytes`: what the kernel reads; past SONIC_PDL_MAX_MB it launches after its predecessor."""
    if stream_bytes > max_stream_mb() * 1e6:
        return {"USE_PDL": False}
    if not pdl_enabled(t):
        return {"USE_PDL": False}
    return {"USE_PDL": EARLY if setting() == "early" else True, "launch_pdl": True}


def max_stream_mb() -> float:
    value = os.environ.get("SONIC_PDL_MAX_MB", DEFAULT_MAX_MB)
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not mb >= 0:  # also refuses nan
        raise SonicError(f"SONIC_PDL_MAX_MB={value!r} is not a size: set it to megabytes, e.g. 100, or unset it")
    return mb


EARLY = 2  # USE_PDL's value for SONIC_PDL=early (a literal in pdl_prologue: jit code reads no globals)


@triton.jit
def pdl_prologue(USE_PDL: tl.constexpr):
    if USE_PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    elif USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
