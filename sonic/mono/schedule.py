"""Instructions to SMs: a cost-aware list schedule whose per-SM queues follow one global order.

Instructions are taken in the program's global topological order; each goes to the SM on which the
cost model says it finishes first. Every queue
is therefore a subsequence of the global order, which makes the schedule deadlock-free whatever
the real durations: the earliest unfinished instruction of the earliest epoch is at the head of its
SM's queue and everything it waits on comes before it, so it can always run.

Cost of an instruction = bytes it streams / per-SM bandwidth + a fixed cost per instruction; the
stream of an SM runs ahead of its waits (the ring of shared-memory pages is not modelled).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sonic.errors import SonicError
from sonic.mono.instructions import Instruction, Op, Program

H100_SMS = 132
H200_SMS = 132


@dataclass(frozen=True)
class CostModel:
    sm_bytes_per_us: float = 25_000.0  # ~3.3 TB/s of HBM shared by 132 SMs
    # Wait, staging, epilogue and signal of one instruction: 2-3 us measured. At 0.3 the schedule
    # piled instructions onto the SMs that had streamed least and lengthened every layer (llama-3.2-1b
    # on an H200: 845 tok/s at 0.3, 936-947 at 1.5-6 in the same ratio to the bandwidth).
    fixed_us: float = 4.0
    context: int = 512                 # KV positions attention is costed at
    kv_bytes: int = 2                  # bytes per cached K/V element

    def stream_bytes(self, program: Program, ins: Instruction) -> int:
        """Weights (or, for attention, cached K and V) one instruction reads from memory."""
        if ins.op == Op.ATTN_PARTIAL:
            c = program.config
            return 2 * c.head_dim * self.kv_bytes * -(-self.context // program.tiling.kv_splits)
        return ins.weight_bytes

    def cost_us(self, program: Program, ins: Instruction) -> float:
        return self.fixed_us + self.stream_bytes(program, ins) / self.sm_bytes_per_us


@dataclass(frozen=True)
class Schedule:
    num_sms: int
    queues: tuple[tuple[int, ...], ...]  # per SM: instruction indices in global order
    makespan_us: float                   # the cost model's estimate of one epoch

    def sm_of(self) -> dict[int, int]:
        return {i: sm for sm, queue in enumerate(self.queues) for i in queue}

    def encode(self) -> tuple[list[int], list[int]]:
        """(queue_start [num_sms + 1], items): SM s runs items[queue_start[s]:queue_start[s + 1]]."""
        starts, items = [0], []
        for queue in self.queues:
            items.extend(queue)
            starts.append(len(items))
        return starts, items


def producers_of(program: Program, ins: Instruction, lag: int = 0) -> list[int]:
    return [p for w in ins.waits if w.lag == lag for p in program.producers(w.counter)]


def list_schedule(program: Program, num_sms: int = H100_SMS, cost: CostModel = CostModel()) -> Schedule:
    if num_sms < 1:
        raise SonicError(f"invalid number of SMs {num_sms}: use a positive number (132 on an H100 or H200)")
    # An SM's producer warp streams weights back to back, running ahead of its waits, so an
    # instruction ends at max(its weights arrived, its inputs ready, the SM's previous one done) plus
    # a fixed cost. Balancing that balances the bytes each SM streams, which is what bounds an epoch.
    streamed = np.zeros(num_sms)
    free = np.zeros(num_sms)
    finish: list[float] = []
    queues: list[list[int]] = [[] for _ in range(num_sms)]
    for i, ins in enumerate(program.instructions):
        ready = max((finish[p] for p in producers_of(program, ins)), default=0.0)
        arrived = streamed + cost.stream_bytes(program, ins) / cost.sm_bytes_per_us
        end = np.maximum(np.maximum(arrived, free), ready) + cost.fixed_us
        # Of the SMs that finish it first, the one that has streamed the least so far.
        best = np.flatnonzero(end <= end.min() + 1e-9)
        sm = int(best[np.argmin(streamed[best])])
        streamed[sm], free[sm] = arrived[sm], end[sm]
        finish.append(float(end[sm]))
        queues[sm].append(i)
    return Schedule(num_sms, tuple(tuple(q) for q in queues), max(finish, default=0.0))
