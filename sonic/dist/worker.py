"""A tensor-parallel worker process (ranks 1..N-1): load its shard, then follow rank 0's requests.

Requests arrive on a pipe, so an idle worker may wait for the next prompt as long as the user takes;
inside a request every collective is bounded by the process group's timeout. A worker reports
"loaded", "ready" or ("error", message) on its results pipe and exits on any error, or when its
parent is gone (the pipe closes). Pipes, unlike queues, leave no semaphores behind a killed worker.
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass

import torch

from sonic.dist.allreduce import NO_MULTICAST_ENV


@dataclass(frozen=True)
class WorkerOptions:
    model: str | None
    world: int
    port: int
    device: str       # "cpu" or "cuda" (rank r takes cuda:r)
    dtype: str
    timeout_s: float
    allreduce: str = "ordered"
    runner: str = "ref"  # ref: the reference model per rank; graph: the fused kernels, one CUDA graph a step
    preset: str | None = None  # random weights of this named shape instead of `model` (benchmarks)


def rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else "cpu"


def split_threads(world: int):
    """Ranks share the CPU cores instead of each oversubscribing all of them."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))


def load_state(options: WorkerOptions, rank: int, with_tokenizer: bool):
    from sonic.weights.loader import LoadedWeights, load_weights
    device = rank_device(options.device, rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dtype = getattr(torch, options.dtype)
    if options.preset is not None:  # seeded: every rank draws the same full weights, then keeps its shard
        from pathlib import Path

        from sonic.presets import get_preset
        from sonic.weights.random import random_state_dict
        config = get_preset(options.preset)
        return LoadedWeights(config, random_state_dict(config, 0, dtype, device), None, Path(options.preset))
    return load_weights(options.model, dtype, device, with_tokenizer=with_tokenizer)


def join_and_build(options: WorkerOptions, rank: int, loaded):
    """Join the process group and build this rank's runner from the full weights (freed after)."""
    from sonic.dist.allreduce import init_group, make_communicator
    from sonic.dist.runner import ShardRunner
    from sonic.dist.tp import ShardPlan, build_shard

    device = rank_device(options.device, rank)
    init_group(rank, options.world, options.port, device, options.timeout_s)
    comm = make_communicator(options.allreduce, options.timeout_s)
    plan = ShardPlan(loaded.config, rank, options.world)
    model = build_shard(plan, loaded.state_dict, comm, getattr(torch, options.dtype), device)
    if options.runner == "graph":
        from sonic.dist.graph_runner import ShardGraphRunner
        return ShardGraphRunner(model, plan, comm)
    return ShardRunner(model, plan, comm)


def describe(e: BaseException) -> str:
    """The first line of an error, without the source location gloo puts in front."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", line)


def worker_main(rank: int, options: WorkerOptions, commands, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle: it stops the workers
    os.environ.update(NO_MULTICAST_ENV)
    split_threads(options.world)
    from sonic.progress import disable
    disable()  # one progress bar (rank 0's); tqdm's lock would also be a semaphore a killed worker leaks
    try:
        loaded = load_state(options, rank, with_tokenizer=False)
        results.send(("loaded", rank, None))
        runner = join_and_build(options, rank, loaded)
        del loaded
        results.send(("ready", rank, None))
        follow(runner, commands)
    except Exception as e:  # noqa: BLE001 - whatever went wrong, rank 0 reports it
        try:
            results.send(("error", rank, describe(e)))
        except OSError:  # rank 0 is gone: nobody to tell
            pass
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def follow(runner, commands):
    """Run rank 0's requests until it says exit or goes away."""
    flag = torch.zeros(1, dtype=torch.int64, device=runner.device)

    def keep_going() -> bool:
        return bool(runner.comm.broadcast(flag, 0).item())

    while True:
        try:
            command = commands.recv()
        except EOFError:  # rank 0 exited
            return
        if command[0] == "exit":
            return
        if command[0] == "time_allreduce":  # rank 0 times the same calls; its figure is the one reported
            from sonic.dist.bench_allreduce import time_size
            time_size(runner.comm, *command[1:], device=runner.device)
            continue
        _, ids, max_tokens, sampling = command
        for _ in runner.generate(ids, max_tokens, sampling, keep_going):
            pass
