"""The schedule validator: checks that make the persistent kernel deadlock-free and race-free.

- counters: every wait names a counter that is signalled, and its count equals the number of
  instructions that signal it (one signal each per epoch); lags are 0 or 1.
- graph: the lag-0 wait graph is acyclic and the program order is a topological order of it.
- queues: every instruction is on exactly one SM, and each SM's queue follows the program order.
- hazards, over several unrolled epochs with happens-before taken from the waits only (never from
  two instructions sharing an SM): every pair of conflicting accesses to a buffer region (one of them
  a write) is ordered as in sequential execution, so no buffer is read before it is written or
  rewritten before all readers of its old contents are done; and every signal of a counter in epoch
  e+1 happens after all its signals of epoch e, so `counter >= e * count` can never be reached early.
"""
from __future__ import annotations

from sonic.mono.access import prior_conflicts
from sonic.mono.instructions import Program
from sonic.mono.schedule import Schedule


class InvalidSchedule(Exception):
    """An instruction list or schedule the kernel must not run: it could deadlock or race."""


def check_counters(program: Program) -> None:
    for i, ins in enumerate(program.instructions):
        if not 0 <= ins.signal < len(program.counters):
            raise InvalidSchedule(f"#{i} {ins.describe()} signals unknown counter {ins.signal}")
        for w in ins.waits:
            if not 0 <= w.counter < len(program.counters):
                raise InvalidSchedule(f"#{i} {ins.describe()} waits on unknown counter {w.counter}")
            if w.lag not in (0, 1):
                raise InvalidSchedule(f"#{i} {ins.describe()} waits with lag {w.lag}; only 0 and 1 exist")
            signals = len(program.producers(w.counter))
            if w.count != signals:
                raise InvalidSchedule(f"#{i} {ins.describe()} waits for {w.count} signals of counter "
                                      f"{program.counters[w.counter]}, but {signals} instructions signal it")


def check_graph(program: Program) -> None:
    n = len(program.instructions)
    succ: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for i, ins in enumerate(program.instructions):
        for w in ins.waits:
            if w.lag == 0:
                for p in program.producers(w.counter):
                    succ[p].append(i)
                    indegree[i] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for s in succ[node]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    if seen < n:
        stuck = next(i for i in range(n) if indegree[i] > 0)
        raise InvalidSchedule(f"the wait graph has a cycle through #{stuck} "
                              f"{program.instructions[stuck].describe()}")
    for i, ins in enumerate(program.instructions):
        for w in ins.waits:
            late = [p for p in program.producers(w.counter) if w.lag == 0 and p >= i]
            if late:
                raise InvalidSchedule(f"#{i} {ins.describe()} waits on #{late[0]}, which comes later in "
                                      "the global order")


def check_queues(program: Program, schedule: Schedule) -> None:
    owner: dict[int, int] = {}
    for sm, queue in enumerate(schedule.queues):
        for pos, i in enumerate(queue):
            if i in owner:
                raise InvalidSchedule(f"#{i} is queued on SM {owner[i]} and SM {sm}")
            owner[i] = sm
            if pos and queue[pos - 1] >= i:
                raise InvalidSchedule(f"SM {sm} runs #{queue[pos - 1]} before #{i}: its queue breaks the "
                                      "global order (a possible deadlock)")
    missing = set(range(len(program.instructions))) - set(owner)
    if missing:
        raise InvalidSchedule(f"{len(missing)} instructions are on no SM, e.g. #{min(missing)}")


def happens_before(program: Program, epochs: int) -> list[int]:
    """Ancestor bitsets of the unrolled instructions (node e * N + i), from the waits alone."""
    n = len(program.instructions)
    ancestors: list[int] = []
    done: dict[tuple[int, int], int] = {}  # (counter, epoch) -> its producers and their ancestors
    for e in range(epochs):
        for i, ins in enumerate(program.instructions):
            bits = 0
            for w in ins.waits:
                src = e - w.lag
                if src < 0:
                    continue
                key = (w.counter, src)
                if key not in done:
                    acc = 0
                    for p in program.producers(w.counter):
                        node = src * n + p
                        acc |= ancestors[node] | (1 << node)
                    done[key] = acc
                bits |= done[key]
            ancestors.append(bits)
    return ancestors


def check_hazards(program: Program, epochs: int = 2) -> None:
    n = len(program.instructions)
    anc = happens_before(program, epochs)

    def name(node: int) -> str:
        return f"#{node % n} {program.instructions[node % n].describe()} (epoch {node // n})"

    for node, conflicts in enumerate(prior_conflicts(program, epochs)):
        for other, b, a in conflicts:
            if not anc[node] >> other & 1:
                what = "writes" if a.write else "reads"
                raise InvalidSchedule(f"{name(node)} {what} {a.buffer}[{a.lo}:{a.hi}] without waiting for "
                                      f"{name(other)}, which {'writes' if b.write else 'reads'} it first")


def check_signal_order(program: Program, epochs: int = 2) -> None:
    """Each signal of a counter in epoch e+1 happens after all of its signals in epoch e."""
    n = len(program.instructions)
    anc = happens_before(program, epochs)
    for e in range(1, epochs):
        for c in range(len(program.counters)):
            before = 0
            for q in program.producers(c):
                before |= 1 << ((e - 1) * n + q)
            for p in program.producers(c):
                missing = before & ~anc[e * n + p]
                if missing:
                    q = (missing & -missing).bit_length() - 1
                    raise InvalidSchedule(f"#{p} {program.instructions[p].describe()} (epoch {e}) can signal "
                                          f"{program.counters[c]} before #{q % n} (epoch {e - 1}) does: the "
                                          f"count of epoch {e - 1} could be reached early")


def validate(program: Program, schedule: Schedule, epochs: int = 2, hazards: bool = True) -> None:
    """All static checks; raises InvalidSchedule naming the first problem. `hazards=False` skips the
    buffer check, whose happens-before sets grow as the square of the instruction count."""
    check_counters(program)
    check_graph(program)
    check_queues(program, schedule)
    if hazards:
        check_hazards(program, epochs)
    check_signal_order(program, epochs)
