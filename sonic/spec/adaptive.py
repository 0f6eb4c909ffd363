"""How many tokens to draft before each step: fixed, or adapted to this request and this hardware.

The adaptive policy keeps, per draft position i, an exponentially weighted estimate a_i of the chance
that draft token i is accepted given that the ones before it were. Drafting k tokens then yields
1 + a_1 + a_1 a_2 + ... + a_1...a_k tokens per step, at a cost (in plain decode steps) of verifying
k + 1 tokens plus drafting k. The cost table is measured once per model and device at start-up, on
the runner itself. The policy picks the k with the most tokens per unit time; where none beats plain
decoding it turns speculation off for a stretch, then probes with a short draft to find out whether
the text has become predictable again (stretches double while probes keep failing).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from sonic.engine.sampling import SamplingParams


@dataclass(frozen=True)
class CostTable:
    verify_steps: tuple[float, ...]  # [m - 1]: time to verify m tokens / time of one plain decode step
    draft_step: float = 0.0          # time to draft one token / time of one plain decode step

    def verify(self, m: int) -> float:
        return self.verify_steps[min(m, len(self.verify_steps)) - 1]

    def step(self, k: int) -> float:
        """Cost of one speculative step with k drafted tokens, in plain decode steps."""
        return self.verify(k + 1) + k * self.draft_step


class FixedDepth:
    """Always draft k tokens (the proposer may find fewer)."""

    def __init__(self, k: int):
        self.k = k

    def start(self):
        pass

    def depth(self) -> int:
        return self.k

    def plain_run(self) -> int:
        return 1

    def update(self, drafted: int, accepted: int):
        pass


class AdaptiveDepth:
    def __init__(self, costs: CostTable, max_k: int, prior: float = 0.6, weight: float = 0.25,
                 min_gain: float = 1.05, probe_every: int = 16, max_stretch: int = 128, probe_k: int = 2):
        self.costs, self.max_k, self.prior, self.weight = costs, max_k, prior, weight
        # Speculate only for a clear gain: the host work around a speculative step is not in the table.
        self.min_gain = min_gain
        self.probe_every, self.max_stretch, self.probe_k = probe_every, max_stretch, min(probe_k, max_k)
        self.start()

    def start(self):
        self.accept = [self.prior] * self.max_k
        self.stretch = self.probe_every
        self.probe_due = False

    def expected_tokens(self, k: int) -> float:
        total, chain = 1.0, 1.0
        for a in self.accept[:k]:
            chain *= a
            total += chain
        return total

    def gain(self, k: int) -> float:
        """Tokens per unit of time against plain decoding (1.0 for k = 0)."""
        return 1.0 if k == 0 else self.expected_tokens(k) / self.costs.step(k)

    def best(self) -> int:
        k = max(range(self.max_k + 1), key=self.gain)
        return k if self.gain(k) >= self.min_gain else 0

    def depth(self) -> int:
        k = self.best()
        if k > 0:
            self.stretch = self.probe_every
            return k
        if self.probe_due:
            self.probe_due = False
            return self.probe_k
        return 0

    def plain_run(self) -> int:
        """Tokens to decode plainly before the next probe."""
        run, self.stretch = self.stretch, min(2 * self.stretch, self.max_stretch)
        self.probe_due = True
        return run

    def update(self, drafted: int, accepted: int):
        w = self.weight
        for i in range(accepted):
            self.accept[i] += w * (1.0 - self.accept[i])
        if accepted < drafted:
            self.accept[accepted] -= w * self.accept[accepted]


# ---- the cost table, measured on the runner ----
_COSTS: dict[tuple, CostTable] = {}
SCRATCH_TOKENS = 32
SLOW_CALL_S = 0.1


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, reps: int) -> float:
    """Median seconds of `fn` after a warm-up call (compiles kernels, captures graphs); a call slow
    enough to time on its own (the CPU reference) is timed once."""
    fn()
    times = []
    while len(times) < reps:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if times[0] > SLOW_CALL_S:
            break
    return statistics.median(times)


def _cost_key(runner) -> tuple:
    dev = runner.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return runner.name, runner.config, runner.dtype, name


def _scratch(runner, extra: int) -> list[int]:
    """Start a throwaway sequence (the next request's prefill overwrites it); its token ids."""
    ids = [(7919 * i + 11) % runner.config.vocab_size for i in range(SCRATCH_TOKENS + extra)]
    runner.reserve(len(ids) + 1)
    runner.prefill(ids[:SCRATCH_TOKENS])
    return ids


def step_time(runner, reps: int = 5, steps: int = 8) -> float:
    """Seconds per plain decode step (queued as plain decoding queues them)."""
    ids = _scratch(runner, steps)
    greedy = SamplingParams()
    run = lambda: list(runner.decode_steps(ids[-1], SCRATCH_TOKENS, steps, greedy))  # noqa: E731
    return _median_time(run, runner.device, reps) / steps


def verify_times(runner, max_rows: int, reps: int = 5, every_m: bool = True) -> dict[int, float]:
    """Seconds to verify m tokens, for every m up to max_rows or (on slow paths) a few of them."""
    ids = _scratch(runner, max_rows)
    rows = range(1, max_rows + 1) if every_m else sorted({1, 2, (max_rows + 2) // 2, max_rows})
    return {m: _median_time(lambda: runner.verify_argmax(ids[:m], SCRATCH_TOKENS), runner.device, reps)
            for m in rows}


def interpolate(points: dict[int, float], max_rows: int) -> tuple[float, ...]:
    """Piecewise-linear fill between measured m (verification cost grows smoothly with m)."""
    ms = sorted(points)
    out = []
    for m in range(1, max_rows + 1):
        lo = max(x for x in ms if x <= m)
        hi = min((x for x in ms if x >= m), default=lo)
        t = points[lo] if hi == lo else points[lo] + (points[hi] - points[lo]) * (m - lo) / (hi - lo)
        out.append(t)
    return tuple(out)


def measure_costs(runner, max_rows: int, draft_runner=None) -> CostTable:
    """The cost table for `runner` (and a draft model's runner), measured once per process."""
    key = (_cost_key(runner), max_rows, _cost_key(draft_runner) if draft_runner is not None else None)
    if key not in _COSTS:
        plain = step_time(runner)
        # Where one step takes milliseconds of host time (the CPU reference), a few m suffice.
        every_m = plain < SLOW_CALL_S / max_rows
        verify = verify_times(runner, max_rows, every_m=every_m)
        draft = verify_times(draft_runner, 1)[1] / plain if draft_runner is not None else 0.0
        _COSTS[key] = CostTable(tuple(t / plain for t in interpolate(verify, max_rows)), draft)
    return _COSTS[key]
