"""A discrete-event simulation of the per-SM queues with random durations: the GPU's dataflow, timed.

Each SM runs its queue epoch after epoch. An instruction starts once every wait reads
`counter >= (epoch - lag) * count`, reads its inputs at its start, writes its outputs and signals
at its end. Durations are the cost model's times scaled by a random factor, and SMs start at random
offsets, so each seed is another interleaving. The run fails on a deadlock (no SM can start and
none is running), on a wait satisfied before all of its epoch's producers signalled, or on an access
that sequential execution would order differently (a read before the write it needs, a write over
data a sequentially earlier instruction has not finished with).
"""
from __future__ import annotations

import heapq
import random

from sonic.mono.access import prior_conflicts
from sonic.mono.instructions import Program
from sonic.mono.schedule import CostModel, Schedule
from sonic.mono.validate import InvalidSchedule


def simulate(program: Program, schedule: Schedule, epochs: int = 3, seed: int = 0,
             cost: CostModel = CostModel(), jitter: float = 4.0) -> float:
    """Runs `epochs` epochs; returns the simulated time, raises InvalidSchedule on a failure."""
    rng = random.Random(seed)
    n, instrs = len(program.instructions), program.instructions
    earlier = [[other for other, _, _ in c] for c in prior_conflicts(program, epochs)]
    counters = [0] * len(program.counters)
    signalled: dict[tuple[int, int], int] = {}  # (counter, epoch) -> signals so far
    head = [0] * schedule.num_sms                # position in the SM's queue, over all epochs
    busy_until = [rng.uniform(0.0, 2.0) for _ in range(schedule.num_sms)]
    running: list[tuple[float, int, int]] = []   # (end time, SM, node)
    finished: set[int] = set()
    started: set[int] = set()
    now, total = 0.0, epochs * n

    def node_at(sm: int) -> int | None:
        queue = schedule.queues[sm]
        if not queue or head[sm] >= epochs * len(queue):
            return None
        e, k = divmod(head[sm], len(queue))
        return e * n + queue[k]

    def try_start(sm: int) -> bool:
        node = node_at(sm)
        if node is None or busy_until[sm] > now or any(r[1] == sm for r in running):
            return False
        e, ins = node // n, instrs[node % n]
        for w in ins.waits:
            need = (e + 1 - w.lag) * w.count  # epochs are 1-based on the GPU
            if counters[w.counter] < need:
                return False
            if e - w.lag >= 0 and signalled.get((w.counter, e - w.lag), 0) < w.count:
                raise InvalidSchedule(f"#{node % n} {ins.describe()} (epoch {e}) sees counter "
                                      f"{program.counters[w.counter]} at {counters[w.counter]} before all of "
                                      f"epoch {e - w.lag}'s producers signalled")
        for other in earlier[node]:
            if other not in finished:
                raise InvalidSchedule(f"#{node % n} {ins.describe()} (epoch {e}) starts before #{other % n} "
                                      f"{instrs[other % n].describe()} (epoch {other // n}) is done with a "
                                      "buffer they share")
        started.add(node)
        head[sm] += 1
        duration = cost.cost_us(program, ins) * rng.uniform(1.0 / jitter, jitter)
        heapq.heappush(running, (now + duration, sm, node))
        return True

    while len(finished) < total:
        progress = True
        while progress:
            progress = False
            for sm in rng.sample(range(schedule.num_sms), schedule.num_sms):
                progress |= try_start(sm)
        pending = [t for t in busy_until if t > now]
        if not running and not pending:
            stuck = [node_at(sm) for sm in range(schedule.num_sms) if node_at(sm) is not None]
            first = min(stuck)
            raise InvalidSchedule(f"deadlock at t={now:.2f}: {len(stuck)} SMs wait forever, e.g. on "
                                  f"#{first % n} {instrs[first % n].describe()} (epoch {first // n})")
        if running and (not pending or running[0][0] <= min(pending)):
            now, sm, node = heapq.heappop(running)
            ins = instrs[node % n]
            counters[ins.signal] += 1
            key = (ins.signal, node // n)
            signalled[key] = signalled.get(key, 0) + 1
            finished.add(node)
        else:
            now = min(pending)
    return now
