"""A one-shot all-reduce for GPUs joined by NVLink: one kernel, one hop, a few microseconds.

Buffers are exchanged once at start-up (torch symmetric memory; its multicast stays off). Each call,
every rank stores its partial into its own slot of every peer's buffer, raises its flag in every
peer's flag array to the call's epoch, waits until all flags in its own array show that epoch, then
sums the slots in float32 in rank order: every rank gets the same bits, the same as the `ordered`
baseline. Slots and flags are double-buffered by the epoch's parity, so nothing is reset between
calls, and the epoch lives on the GPU (the kernel advances it), so the call can be captured in a CUDA
graph. A rank that waits past its spin bound raises an error flag that `check` turns into an error.

The kernel is plain stores, a barrier and release/acquire flags, the same steps a persistent
monokernel can do from inside its loop with these buffers. GPU only: imported when asked for.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from sonic.dist.allreduce import TorchCommunicator
from sonic.errors import SonicError

CAPACITY = 16384          # most elements per call (a hidden size); larger tensors take the baseline
SPINS_PER_SECOND = 1_000_000  # one acquire load of a flag takes about a microsecond


@triton.jit
def _one_shot_all_reduce(x_ptr, out_ptr, data_ptrs, flag_ptrs, epoch_ptr, error_ptr, n, max_spins,
                         RANK: tl.constexpr, WORLD: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    epoch = tl.load(epoch_ptr)
    parity = epoch % 2
    x = tl.load(x_ptr + offs, mask=mask)
    for p in tl.static_range(WORLD):  # push: our partial into our slot of every rank's buffer
        peer = tl.load(data_ptrs + p).to(tl.pointer_type(x_ptr.dtype.element_ty))
        tl.store(peer + (parity * WORLD + RANK) * CAP + offs, x, mask=mask)
    tl.debug_barrier()  # every thread's stores are issued before the flags go up
    for p in tl.static_range(WORLD):
        flags = tl.load(flag_ptrs + p).to(tl.pointer_type(tl.int32))
        tl.atomic_xchg(flags + parity * WORLD + RANK, epoch, sem="release", scope="sys")
    own_flags = tl.load(flag_ptrs + RANK).to(tl.pointer_type(tl.int32))
    for p in tl.static_range(WORLD):
        seen = tl.atomic_add(own_flags + parity * WORLD + p, 0, sem="acquire", scope="sys")
        spins = 0
        while (seen != epoch) & (spins < max_spins):
            seen = tl.atomic_add(own_flags + parity * WORLD + p, 0, sem="acquire", scope="sys")
            spins += 1
        tl.store(error_ptr, p + 1, mask=seen != epoch)
    tl.debug_barrier()
    own = tl.load(data_ptrs + RANK).to(tl.pointer_type(x_ptr.dtype.element_ty))
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for p in tl.static_range(WORLD):  # fixed rank order: the same rounding on every rank
        total += tl.load(own + (parity * WORLD + p) * CAP + offs, mask=mask, cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()  # every thread has read the epoch before it moves on
    tl.store(epoch_ptr, epoch + 1)


class OneShotCommunicator(TorchCommunicator):
    """`all_reduce` through the one-shot kernel; all_gather, broadcast and large tensors through NCCL."""

    def __init__(self, name: str = "one-shot", capacity: int = CAPACITY, timeout_s: float = 60.0):
        super().__init__("ordered")
        import torch.distributed._symmetric_memory as symm_mem
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.capacity = capacity
        group = dist.group.WORLD.group_name
        # Slots sized for float32, so every working dtype fits: [parity, rank, capacity].
        self._data = symm_mem.empty(2 * self.world * capacity * 4, dtype=torch.uint8, device=self.device)
        self._flags = symm_mem.empty(2 * self.world, dtype=torch.int32, device=self.device)
        self._flags.zero_()
        handles = [symm_mem.rendezvous(t, group) for t in (self._data, self._flags)]
        self._data_ptrs, self._flag_ptrs = (torch.tensor(h.buffer_ptrs, dtype=torch.int64, device=self.device)
                                            for h in handles)
        self._epoch = torch.ones(1, dtype=torch.int32, device=self.device)
        self._error = torch.zeros(1, dtype=torch.int32, device=self.device)
        self._max_spins = int(timeout_s * SPINS_PER_SECOND)
        torch.cuda.synchronize(self.device)
        dist.barrier()  # every rank's flags are zero before anyone raises one

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if (self.world == 1 or not x.is_cuda or x.numel() > self.capacity
                or x.dtype not in (torch.float32, torch.float16, torch.bfloat16)):
            return super().all_reduce(x)
        x = x.contiguous()
        out = torch.empty_like(x)
        block = triton.next_power_of_2(x.numel())
        _one_shot_all_reduce[(1,)](x, out, self._data_ptrs, self._flag_ptrs, self._epoch, self._error,
                                   x.numel(), self._max_spins, RANK=self.rank, WORLD=self.world,
                                   CAP=self.capacity, BLOCK=block, num_warps=8 if block >= 4096 else 4)
        return out

    def check(self):
        """A user-facing error if a call gave up waiting on a peer (reads a GPU flag: syncs)."""
        peer = int(self._error.item())
        if peer:
            raise SonicError(f"tensor-parallel all-reduce on rank {self.rank} waited too long for rank {peer - 1}: "
                             "a peer stopped; start sonic again")
