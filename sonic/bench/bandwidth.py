"""The memory-read bandwidth of this device, measured with one large streaming read."""
from __future__ import annotations

import statistics
import time

import torch

GPU_BYTES = 2 << 30   # far beyond any L2, so the read streams from HBM
CPU_BYTES = 256 << 20


def _triton_read(x: torch.Tensor, partial: torch.Tensor):
    import triton
    import triton.language as tl

    @triton.jit
    def read_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = pid * BLOCK * ITERS
        for i in range(ITERS):
            acc += tl.load(x_ptr + base + i * BLOCK + tl.arange(0, BLOCK)).to(tl.float32)
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))

    block, iters = 4096, 16
    grid = (x.numel() // (block * iters),)
    return lambda: read_kernel[grid](x, partial, BLOCK=block, ITERS=iters, num_warps=8)


def measure_read_bandwidth(device: str | torch.device = "cuda", repeats: int = 20) -> float:
    """Bytes per second read, median over `repeats` passes."""
    device = torch.device(device)
    if device.type != "cuda":
        x = torch.rand(CPU_BYTES // 4)
        times = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            x.sum()
            times.append(time.perf_counter() - t0)
        return x.nbytes / statistics.median(times)
    x = torch.rand(GPU_BYTES // 2, device=device).to(torch.bfloat16)
    partial = torch.empty(x.numel() // (4096 * 16), device=device)
    run = _triton_read(x, partial)
    run()  # compile
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del x
    return GPU_BYTES / statistics.median(times)
