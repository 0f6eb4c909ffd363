"""Programmatic dependent launch: a kernel's launch and setup overlap the tail of the kernel before it.

Every fused kernel starts with `pdl_prologue(USE_PDL)`: it waits until the previous kernel's writes are
visible, then lets the next kernel launch. Off under the interpreter and on GPUs older than Hopper, and
switched by SONIC_PDL (1 = on, 0 = off).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

DEFAULT = "1"  # on: measured faster on an H100 (docs/benchmarks.md)


@functools.lru_cache(maxsize=None)
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(t: torch.Tensor) -> bool:
    if os.environ.get("SONIC_PDL", DEFAULT) != "1" or t.device.type != "cuda":
        return False
    return _supported(t.device.index if t.device.index is not None else torch.cuda.current_device())


def launch_options(t: torch.Tensor) -> dict:
    """Keyword arguments for a kernel launch on `t`'s device: the constexpr and the launch flag."""
    return {"USE_PDL": True, "launch_pdl": True} if pdl_enabled(t) else {"USE_PDL": False}


@triton.jit
def pdl_prologue(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
