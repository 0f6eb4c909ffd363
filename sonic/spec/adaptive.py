"""How many tokens to draft before each step: fixed, or adapted to this request and this hardware.

Both adaptive policies keep exponentially weighted estimates a_i of the chance that draft token i is
accepted given that the ones before it were. Drafting k tokens then yields 1 + a_1 + a_1 a_2 + ... +
a_1...a_k tokens per step, at a cost (in plain decode steps) of verifying k + 1 tokens plus drafting k.
The cost table is measured once per model and device at start-up, on the runner itself; each policy
picks the k with the most tokens per unit time.

`AdaptiveDepth` decides before drafting, since a draft model's tokens cost time. Where no k beats plain
decoding it turns speculation off for a stretch, then probes with a short draft to find out whether the
text has become predictable again (stretches double while probes keep failing).

`LookupDepth` is for prompt lookup, whose drafts cost nothing: it looks first and judges the draft by
how it was found. A continuation of a long matched suffix is far likelier to hold than one found by a
single token, so it keeps one chain of estimates per match length. It verifies the best k of the draft,
or decodes plainly when no k beats a lone plain step; plain stretches end as soon as a lookup is worth
verifying (the loop looks up after every plain token, while the GPU runs ahead).
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
    lone_step: float = 1.0           # time of one plain step decoded on its own (with its host sync)

    def verify(self, m: int) -> float:
        return self.verify_steps[min(m, len(self.verify_steps)) - 1]

    def step(self, k: int) -> float:
        """Cost of one speculative step with k drafted tokens, in plain decode steps."""
        return self.verify(k + 1) + k * self.draft_step


class FixedDepth:
    """Always draft k tokens (the proposer may find fewer).

    The policy interface: `depth()` tokens to ask the proposer for (0: decode plainly); `trim` how many
    of the proposal's tokens to verify (0: decode plainly); `plain_run()` plain tokens to decode then;
    `watches_plain` whether a plain run ends early once `trim` of a new lookup is above 0; `update`
    after each verification."""
    watches_plain = False

    def __init__(self, k: int):
        self.k = k

    def start(self):
        pass

    def depth(self) -> int:
        return self.k

    def trim(self, found: int, match: int = 0) -> int:
        return found

    def plain_run(self) -> int:
        return 1

    def update(self, drafted: int, accepted: int, match: int = 0):
        pass


class AdaptiveDepth(FixedDepth):
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

    def gain(self, k: int) -> float:
        """Tokens per unit of time against plain decoding (1.0 for k = 0)."""
        return 1.0 if k == 0 else expected_tokens(self.accept, k) / self.costs.step(k)

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

    def update(self, drafted: int, accepted: int, match: int = 0):
        learn(self.accept, drafted, accepted, self.weight)


def learn(chain: list[float], drafted: int, accepted: int, weight: float):
    """Move the acceptance estimates toward one step's outcome: `accepted` of `drafted` kept."""
    for i in range(accepted):
        chain[i] += weight * (1.0 - chain[i])
    if accepted < drafted:
        chain[accepted] -= weight * chain[accepted]


def expected_tokens(chain: list[float], k: int) -> float:
    """Tokens a step yields drafting k: the target's own, plus each draft token kept with its chain."""
    total, p = 1.0, 1.0
    for a in chain[:k]:
        p *= a
        total += p
    return total


class LookupDepth(FixedDepth):
    """Judge each prompt-lookup draft after it is found, by the length of its match (see above)."""
    watches_plain = True
    PRIORS = (0.2, 0.4, 0.5, 0.7)  # first guesses of acceptance for matches of 1, 2, 3 and 4+ tokens
    STRETCH = 128                  # most plain tokens queued at once (a lookup worth verifying ends it)

    def __init__(self, costs: CostTable, max_k: int, weight: float = 0.25):
        self.costs, self.max_k, self.weight = costs, max_k, weight
        self.start()

    def start(self):
        self.chains = {n: [p] * self.max_k for n, p in enumerate(self.PRIORS, 1)}

    def _chain(self, match: int) -> list[float]:
        return self.chains[min(max(match, 1), len(self.PRIORS))]

    def depth(self) -> int:
        return self.max_k  # looking costs nothing: ask for the most, then trim

    def trim(self, found: int, match: int = 0) -> int:
        """The k <= found with the most tokens per unit time; 0 where a lone plain step does better."""
        best, best_gain = 0, 1.0 / self.costs.lone_step
        tokens, p = 1.0, 1.0
        for k, a in enumerate(self._chain(match)[:min(found, self.max_k)], 1):
            p *= a
            tokens += p  # expected_tokens(chain, k), grown one draft token at a time
            gain = tokens / self.costs.verify(k + 1)
            if gain > best_gain:
                best, best_gain = k, gain
        return best

    def plain_run(self) -> int:
        return self.STRETCH

    def update(self, drafted: int, accepted: int, match: int = 0):
        learn(self._chain(match), drafted, accepted, self.weight)


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


def step_time(runner, reps: int = 9, steps: int = 8) -> float:
    """Seconds per plain decode step (queued as plain decoding queues them; steps=1: one on its own)."""
    ids = _scratch(runner, steps)
    greedy = SamplingParams()
    run = lambda: list(runner.decode_steps(ids[-1], SCRATCH_TOKENS, steps, greedy))  # noqa: E731
    return _median_time(run, runner.device, reps) / steps


def verify_times(runner, max_rows: int, reps: int = 9, every_m: bool = True) -> dict[int, float]:
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


def monotone(costs: tuple[float, ...]) -> tuple[float, ...]:
    """Each cost at most the next one's: verifying more rows never takes less time, so a dip below an
    earlier value means that value caught a delay (timing noise only ever adds)."""
    out = list(costs)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return tuple(out)


def measure_costs(runner, max_rows: int, draft_runner=None) -> CostTable:
    """The cost table for `runner` (and a draft model's runner), measured once per process."""
    key = (_cost_key(runner), max_rows, _cost_key(draft_runner) if draft_runner is not None else None)
    if key not in _COSTS:
        plain = step_time(runner)
        lone = step_time(runner, steps=1)
        # Where one step takes milliseconds of host time (the CPU reference), a few m suffice.
        every_m = plain < SLOW_CALL_S / max_rows
        verify = verify_times(runner, max_rows, every_m=every_m)
        if every_m:  # once more, now that the clocks are up: the lower of the two
            plain = min(plain, step_time(runner))
        draft = verify_times(draft_runner, 1)[1] / plain if draft_runner is not None else 0.0
        verify_steps = monotone(tuple(t / plain for t in interpolate(verify, max_rows)))
        _COSTS[key] = CostTable(verify_steps, draft, lone / plain)
    return _COSTS[key]
