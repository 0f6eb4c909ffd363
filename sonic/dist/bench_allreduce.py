"""All-reduce latency per communicator and size, all measured in one run: `python -m sonic.dist.bench_allreduce`.

On GPUs each figure is the median over replays of a CUDA graph of back-to-back calls (what the
decode step would see); on CPU (gloo) it times eager calls, which only checks the plumbing.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sonic.dist.allreduce import init_group, make_communicator

SIZES = (2048, 4096, 8192)


def time_calls(comm, x: torch.Tensor, calls: int, repeats: int) -> float:
    """Median microseconds per call."""
    if not x.is_cuda:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                comm(x)
            samples.append((time.perf_counter() - start) / calls * 1e6)
        return statistics.median(samples)
    for _ in range(3):
        comm(x)  # compile and warm up before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            comm(x)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(samples)


def time_size(comm, size: int, dtype: str, calls: int, repeats: int, device) -> float:
    """Median microseconds per all-reduce of `size` random values of `dtype` (every rank must call it)."""
    x = torch.randn(size, device=device).to(getattr(torch, dtype))
    us = time_calls(comm, x, calls, repeats)
    comm.check()
    return us


def bench_rank(rank: int, world: int, port: int, device: str, names: list[str], sizes: list[int],
               dtype: str, calls: int, repeats: int) -> dict:
    if device == "cuda":
        device = f"cuda:{rank}"
        torch.cuda.set_device(device)
    init_group(rank, world, port, device, timeout_s=60)
    out = {}
    for name in names:
        comm = make_communicator(name)
        for size in sizes:
            out[name, size] = time_size(comm, size, dtype, calls, repeats, device)
    return out


def format_table(results: dict, names: list[str], sizes: list[int]) -> str:
    lines = ["elements  " + "".join(f"{n:>12}" for n in names)]
    for size in sizes:
        lines.append(f"{size:>8}  " + "".join(f"{results[n, size]:>10.1f}us" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sonic.dist.launch import free_port, main_module_hidden
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--calls", type=int, default=100, help="calls per timed graph replay")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    names = ["native", "ordered"] + (["one-shot"] if args.device == "cuda" else [])
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    port = free_port()
    from sonic.dist.bench_allreduce import _entry  # by its module name, not __main__, for the children
    procs = [ctx.Process(target=_entry, args=(results, r, args.ranks, port, args.device, names, args.sizes,
                                              args.dtype, args.calls, args.repeats)) for r in range(args.ranks)]
    with main_module_hidden():
        for proc in procs:
            proc.start()
    for proc in procs:
        proc.join()  # before reading: each report is a few hundred bytes, well inside a pipe's buffer
    failed = [r for r, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        raise SystemExit(f"rank {failed[0]} failed (exit code {procs[failed[0]].exitcode})")
    reports = [results.get() for _ in procs]
    rank0 = next(r for rank, r in reports if rank == 0)
    print(f"all-reduce over {args.ranks} ranks ({args.device}, {args.dtype}), median per call:")
    print(format_table(rank0, names, args.sizes))
    return 0


def _entry(results, rank, *args):
    results.put((rank, bench_rank(rank, *args)))


if __name__ == "__main__":
    raise SystemExit(main())
