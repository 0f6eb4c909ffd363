"""Collectives between tensor-parallel ranks behind one small interface.

`TorchCommunicator` is the correctness baseline: torch.distributed (gloo on CPU, NCCL on GPU). In its
default `ordered` mode an all-reduce gathers every rank's partial and sums them in float32 in rank
order, so every rank computes the same sum bit for bit, the arithmetic a one-shot all-reduce does
(each rank stores its partial into every peer's slot, then each sums the slots in rank order).
`native` is torch.distributed's own all_reduce (NCCL's ring or tree), kept for comparison.
A faster GPU implementation registers in COMMUNICATORS and is imported only when asked for.
"""
from __future__ import annotations

import importlib
from datetime import timedelta

import torch
import torch.distributed as dist

from sonic.errors import SonicError

# name -> (module, class); GPU-only implementations are imported lazily.
COMMUNICATORS = {"ordered": ("sonic.dist.allreduce", "TorchCommunicator"),
                 "native": ("sonic.dist.allreduce", "TorchCommunicator"),
                 "one-shot": ("sonic.dist.one_shot", "OneShotCommunicator")}

# NVLink multicast stays off everywhere: set before any process group or NCCL communicator exists.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class CollectiveError(RuntimeError):
    """A collective failed: a peer timed out or went away (torch.distributed raises plain RuntimeError)."""


def _collective(op, *args):
    try:
        return op(*args)
    except RuntimeError as e:
        raise CollectiveError(str(e)) from e


class TorchCommunicator:
    """all_reduce / all_gather / broadcast over the default torch.distributed process group."""

    def __init__(self, mode: str = "ordered"):
        if mode not in ("ordered", "native"):
            raise SonicError(f"unknown all-reduce '{mode}': use ordered or native")
        self.mode = mode
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(x)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of `x`, in x's dtype (accumulated in float32)."""
        if self.world == 1:
            return x
        if self.mode == "native":
            out = x.contiguous().clone()
            _collective(dist.all_reduce, out)
            return out
        parts = self.all_gather(x)
        total = parts[0].float()
        for part in parts[1:]:  # fixed rank order: the same rounding on every rank
            total = total + part.float()
        return total.to(x.dtype)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[world, *x.shape]: every rank's x, in rank order."""
        out = torch.empty((self.world, *x.shape), dtype=x.dtype, device=x.device)
        if x.is_cuda:
            _collective(dist.all_gather_into_tensor, out, x.contiguous())
        else:  # gloo has no all_gather_into_tensor
            _collective(dist.all_gather, list(out.unbind(0)), x.contiguous())
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        _collective(dist.broadcast, x, src)
        return x

    def check(self):
        """Raise if a collective failed without raising (device-side ones); torch.distributed raises itself."""


def make_communicator(name: str = "ordered", timeout_s: float = 60.0):
    try:
        module, cls = COMMUNICATORS[name]
    except KeyError:
        raise SonicError(f"unknown all-reduce '{name}': choose one of {', '.join(COMMUNICATORS)}") from None
    impl = getattr(importlib.import_module(module), cls)
    return impl(name) if impl is TorchCommunicator else impl(name, timeout_s=timeout_s)


def init_group(rank: int, world: int, port: int, device: str, timeout_s: float):
    """Join the process group on 127.0.0.1:port; every collective then waits at most `timeout_s`."""
    import os
    os.environ.update(NO_MULTICAST_ENV)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
