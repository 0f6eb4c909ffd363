"""Rank 0 of a tensor-parallel engine: starts the workers itself and drives every request.

Rank 0 lives in the calling process and owns the tokenizer, the sampled tokens and the stream; ranks
1..N-1 are spawned processes (`worker.py`) that meet it on a free local port. A peer that stays silent
longer than the timeout, or dies, ends the request with one clear error and the workers are stopped.
"""
from __future__ import annotations

import atexit
import os
import random
import socket
import sys
import time
from contextlib import contextmanager
from multiprocessing.connection import wait
from dataclasses import replace
from typing import Iterator

import torch
import torch.distributed as dist

from sonic.dist.allreduce import NO_MULTICAST_ENV, CollectiveError
from sonic.dist.worker import WorkerOptions, join_and_build, load_state, worker_main
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError

DEFAULT_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tp_options(model: str | None, world: int, device: str, runner: str = "auto", allreduce: str = "ordered",
               spec=None, preset: str | None = None) -> tuple[str, str]:
    """(device, per-rank runner) of a tensor-parallel engine, or the user error; nothing starts. Every
    command that takes --tp checks this before its slow work."""
    from sonic.engine.generate import resolve_device
    device = resolve_device(device)
    if runner not in ("auto", "ref", "graph"):
        raise SonicError(f"--runner {runner} is not supported with --tp: use ref (the default) or graph")
    # auto stays on the reference path per rank: the fused path over shards is opt-in (--runner graph).
    runner = "ref" if runner == "auto" else runner
    if spec is not None and spec.on:
        raise SonicError("--speculative is not supported yet with --tp: drop one of them")
    check_tp_request(model, world, device, allreduce, runner, preset)
    return device, runner


def check_tp_request(model: str | None, world: int, device: str, allreduce: str = "ordered", runner: str = "ref",
                     preset: str | None = None):
    """User errors before anything starts: a bad count, too few GPUs, a model that does not split."""
    from sonic.dist.allreduce import COMMUNICATORS
    from sonic.dist.tp import check_tp
    from sonic.presets import get_preset
    from sonic.spec.draft import model_config
    if world < 1:
        raise SonicError(f"invalid --tp {world}: use 1 (one device) or more")
    if allreduce not in COMMUNICATORS:
        raise SonicError(f"unknown --tp-allreduce '{allreduce}': choose one of {', '.join(COMMUNICATORS)}")
    if runner == "graph" and not device.startswith("cuda"):
        raise SonicError("--runner graph with --tp runs on GPUs: add --device cuda, or use --runner ref")
    if allreduce == "one-shot" and not device.startswith("cuda"):
        raise SonicError("--tp-allreduce one-shot runs on GPUs: add --device cuda, or use ordered")
    if device.startswith("cuda") and world > torch.cuda.device_count():
        raise SonicError(f"--tp {world} needs {world} GPUs but {torch.cuda.device_count()} are visible: "
                         f"lower --tp or check CUDA_VISIBLE_DEVICES")
    check_tp(get_preset(preset) if preset is not None else model_config(model), world)


@contextmanager
def main_module_hidden():
    """Spawned children re-run the parent's main script unless it hides behind `if __name__ ==
    "__main__"`; workers need nothing from it, so they are started without it."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class TPRunner:
    """The runner `Engine` talks to; `generate` yields the tokens every rank agreed on."""
    name = "tp"

    def __init__(self, options: WorkerOptions, workers, commands, results):
        self.options, self.workers, self.commands, self.results = options, workers, commands, results
        self.shard = None
        self.failed: str | None = None
        self.closed = False
        self._threads = torch.get_num_threads()
        self._flag = torch.zeros(1, dtype=torch.int64)
        atexit.register(self.close)

    @classmethod
    def start(cls, model: str | None, world: int, device: str, dtype: str,
              timeout_s: float = DEFAULT_TIMEOUT_S, allreduce: str = "ordered", runner: str = "ref",
              preset: str | None = None):
        """Spawn ranks 1..N-1, load rank 0 alongside them, join. Returns (runner, loaded weights)."""
        if dist.is_initialized():
            raise SonicError("this process already runs a tensor-parallel engine: close it before loading another")
        os.environ.update(NO_MULTICAST_ENV)  # inherited by the workers, before any communicator exists
        options = WorkerOptions(model, world, free_port(), device, dtype, timeout_s, allreduce, runner, preset)
        ctx = torch.multiprocessing.get_context("spawn")
        commands = [ctx.Pipe(duplex=False) for _ in range(1, world)]  # (worker's end, ours)
        results = [ctx.Pipe(duplex=False) for _ in range(1, world)]   # (ours, worker's end)
        workers = [ctx.Process(target=worker_main, args=(r, options, commands[r - 1][0], results[r - 1][1]),
                               daemon=True, name=f"sonic-tp-rank{r}") for r in range(1, world)]
        with main_module_hidden():
            for w in workers:
                w.start()
        for end in [c[0] for c in commands] + [r[1] for r in results]:
            end.close()  # the workers' ends: a worker's exit then reads as end-of-file here
        runner = cls(options, workers, [c[1] for c in commands], [r[0] for r in results])
        try:
            from sonic.dist.worker import split_threads
            split_threads(world)
            loaded = load_state(options, 0, with_tokenizer=True)
            runner.wait_for("loaded")
            runner.shard = join_and_build(options, 0, loaded)
            runner._flag = runner._flag.to(runner.shard.device)
            runner.wait_for("ready")
            loaded.state_dict = {}  # the shard keeps what it needs
        except BaseException:
            runner.close()
            raise
        return runner, loaded

    def wait_for(self, state: str):
        """Block until every worker reports `state`; a worker's error or death is a SonicError."""
        pending = set(range(1, self.options.world))
        while pending:
            report = self.receive(0.5)
            if report is None:
                dead = [r for r in pending if self.workers[r - 1].exitcode is not None]
                if dead:
                    raise SonicError(f"tensor-parallel rank {dead[0]} exited while starting "
                                     f"(exit code {self.workers[dead[0] - 1].exitcode})") from None
                continue
            kind, rank, message = report
            if kind == "error":
                raise SonicError(f"tensor-parallel rank {rank} failed to start: {message}")
            if kind == state:
                pending.discard(rank)

    def receive(self, timeout_s: float):
        """The next (kind, rank, message) any worker sent, or None after `timeout_s`."""
        for conn in wait(self.results, timeout_s):
            try:
                return conn.recv()
            except EOFError:  # that worker exited; its exit code tells why
                self.results.remove(conn)
                conn.close()
        return None

    # ---- requests ----
    def time_allreduce(self, size: int, dtype: str, calls: int, repeats: int) -> float:
        """Median microseconds per all-reduce of `size` values, timed on every rank at once through the
        engine's own communicator (between requests); rank 0's figure."""
        from sonic.dist.bench_allreduce import time_size
        self._send_all(("time_allreduce", size, dtype, calls, repeats))
        try:
            return time_size(self.shard.comm, size, dtype, calls, repeats, self.shard.device)
        except CollectiveError:
            raise SonicError(self._fail()) from None

    def _send_all(self, command: tuple):
        if self.failed or self.closed:
            raise SonicError(self.failed or "the tensor-parallel workers are stopped: start sonic again")
        try:
            for conn in self.commands:
                conn.send(command)
        except OSError:  # a worker is gone
            raise SonicError(self._fail()) from None

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams) -> Iterator[int]:
        if not sampling.greedy and sampling.seed is None:
            # Every rank draws the same noise, so rank 0 picks the seed for all of them.
            sampling = replace(sampling, seed=random.SystemRandom().randrange(2**63))
        self._send_all(("generate", list(prompt_ids), max_tokens, sampling))
        steps = self.shard.generate(prompt_ids, max_tokens, sampling, self._keep_going)
        produced = 0
        try:
            for token in steps:
                produced += 1
                yield token
        except GeneratorExit:
            if self.shard.flag_due and not self.closed:  # the workers wait on the next flag
                self._send_flag(0)
            raise
        except CollectiveError:  # a peer timed out or went away
            raise SonicError(self._fail()) from None
        except BaseException:  # Ctrl-C mid-step: the ranks are out of step, so stop them all
            self.close(wait_s=1.0)
            raise

    def _keep_going(self) -> bool:
        self._send_flag(1)
        return True

    def _send_flag(self, value: int):
        self._flag.fill_(value)
        try:
            self.shard.comm.broadcast(self._flag, 0)
        except CollectiveError:
            raise SonicError(self._fail()) from None

    def _fail(self) -> str:
        """One line naming the rank that failed; the workers are stopped."""
        deadline = time.monotonic() + 2.0
        reports = {}
        while time.monotonic() < deadline and len(reports) < len(self.workers):
            report = self.receive(0.1)
            if report is None:
                if all(w.exitcode is not None for w in self.workers) and not self.results:
                    break
                continue
            if report[0] == "error":
                reports[report[1]] = report[2]
        exited = [r for r, w in enumerate(self.workers, 1) if w.exitcode is not None and r not in reports]
        silent = [r for r in range(1, self.options.world) if r not in reports and r not in exited]
        if exited:
            why = f"rank {exited[0]} exited (exit code {self.workers[exited[0] - 1].exitcode})"
        elif silent:
            why = f"rank {', '.join(map(str, silent))} did not answer within {self.options.timeout_s:g} s"
        else:
            why = f"rank {min(reports)}: {reports[min(reports)]}"
        self.failed = f"tensor parallelism stopped: {why}; start sonic again"
        self.close(wait_s=0.5)
        return self.failed

    def close(self, wait_s: float = 3.0):
        """Stop the workers (politely for `wait_s`, then by force) and leave the process group."""
        if self.closed:
            return
        self.closed = True
        if dist.is_initialized():  # first: a worker blocked in a collective then fails at once and exits
            dist.destroy_process_group()
        for conn, w in zip(self.commands, self.workers):
            if w.is_alive():
                try:
                    conn.send(("exit",))
                except OSError:  # it is exiting already
                    pass
        for w in self.workers:
            w.join(timeout=wait_s)
            if w.is_alive():
                w.kill()
                w.join(timeout=3.0)
        for conn in [*self.commands, *self.results]:
            conn.close()
        torch.set_num_threads(self._threads)
        atexit.unregister(self.close)
