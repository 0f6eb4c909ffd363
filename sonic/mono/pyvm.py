"""A PyTorch interpreter of the monokernel: the same instruction list, schedule and counters, on CPU.

The VM runs the per-SM queues the way the GPU could: it visits SMs round-robin (or in a seeded
random order) and runs an SM's next instruction only when every wait reads
`counter >= (epoch - lag) * count`; counters are monotonic and never reset, across epochs and
across launches. It asserts that a satisfied wait really means all of that epoch's producers are
done (never a count reached early by the next epoch's signals), and that some SM makes progress on
every sweep (no deadlock). Each epoch embeds the current token, runs every layer, the LM head and
sampling, advances the position and hands the token out, as one launch of the kernel would.
"""
from __future__ import annotations

import random

import torch

from sonic.engine.kv_cache import KVCache
from sonic.engine.packed import pack_model
from sonic.engine.sampling import SamplingParams, seed_of
from sonic.models.llama import LlamaModel
from sonic.models.rope import rope_tables
from sonic.mono.builder import packed_shapes, shapes_of
from sonic.mono.guard import run_guarded
from sonic.mono.instructions import Op, Program
from sonic.mono.ops import OPS
from sonic.mono.schedule import Schedule
from sonic.mono.tiles import pack_tiles


class Deadlock(RuntimeError):
    """No SM can run its next instruction and the launch is not finished."""


class MonoVM:
    def __init__(self, model: LlamaModel, program: Program, schedule: Schedule, cache: KVCache,
                 sampling: SamplingParams = SamplingParams(), order_seed: int | None = None,
                 eos: tuple[int, ...] | None = None, guard: bool = False):
        self.config, self.program, self.schedule, self.cache = model.config, program, schedule, cache
        self.packed = pack_model(model)
        if shapes_of(self.packed) != packed_shapes(program.config):
            raise ValueError("the program was built for another model's shapes")
        self.blob = pack_tiles(self.packed, program)
        c, m, dtype = self.config, program.rows, self.packed.embed.dtype
        self.cos, self.sin = rope_tables(c, cache.max_len)
        self.token = torch.zeros(m, dtype=torch.long)
        self.pos = torch.zeros(m, dtype=torch.long)
        self.h = torch.zeros(m, c.hidden_size)
        self.q = torch.zeros(m, c.q_size, dtype=dtype)
        self.k_new = torch.zeros(m, c.kv_size, dtype=dtype)  # raw k (Program.norm_in_attention)
        splits = program.tiling.kv_splits
        self.attn_o = torch.zeros(m, c.num_attention_heads, splits, c.head_dim)
        self.attn_max = torch.zeros(m, c.num_attention_heads, splits)
        self.attn_sum = torch.zeros(m, c.num_attention_heads, splits)
        self.attn = torch.zeros(m, c.q_size, dtype=dtype)
        self.kpart = torch.zeros(program.tiling.k_splits, m, c.hidden_size)
        self.act = torch.zeros(m, c.intermediate_size, dtype=dtype)
        self.logits = torch.zeros(m, c.vocab_size)
        self.sampling = sampling
        # The sampling stream (engine/gumbel.py): a seed per request, as the graph runner draws it, and
        # one step per epoch.
        self.seed = 0 if sampling.greedy else seed_of(sampling.generator("cpu"))
        self.sample_step = 0
        self.eos = set(c.eos_token_ids if eos is None else eos)
        self.counters = [0] * len(program.counters)
        self.signalled: dict[tuple[int, int], int] = {}
        self.epochs_done = 0
        self.rng = random.Random(order_seed) if order_seed is not None else None
        self.guard = guard  # poison undeclared state around each instruction (guard.py)
        self.out: list[list[int]] = []
        self.logits_history: list[torch.Tensor] = []
        self.done = False
        self.finished_epoch = 0
        # The host's stop flag (stop strings, a client gone): called with each epoch's tokens as
        # the host would read them; returning True stops the launch after that epoch.
        self.stop_requested = None

    # ---- the launch ----
    def run(self, epochs: int) -> int:
        """One launch of `epochs` epochs (fewer if a token hits EOS); returns the epochs run."""
        n, first = len(self.program.instructions), self.epochs_done + 1
        queues = self.schedule.queues
        heads = [0] * len(queues)
        last = first + epochs - 1
        self.done = False
        while True:
            progress, busy = False, False
            order = range(len(queues)) if self.rng is None else self.rng.sample(range(len(queues)), len(queues))
            for sm in order:
                queue = queues[sm]
                if not queue or heads[sm] >= epochs * len(queue):
                    continue
                epoch = first + heads[sm] // len(queue)
                if self.done and epoch > self.finished_epoch:
                    continue  # the kernel's stop flag: nothing past the epoch that hit EOS
                busy = True
                index = queue[heads[sm] % len(queue)]
                if self._ready(index, epoch):
                    self._execute(index, epoch)
                    heads[sm] += 1
                    progress = True
            if not busy:
                break
            if not progress:
                raise Deadlock(f"no SM can run its next instruction (epochs {first}..{last}, {n} instructions)")
        ran = (self.finished_epoch if self.done else last) - first + 1
        self.epochs_done += ran
        return ran

    def _ready(self, index: int, epoch: int) -> bool:
        ins = self.program.instructions[index]
        for w in ins.waits:
            if self.counters[w.counter] < (epoch - w.lag) * w.count:
                return False
        for w in ins.waits:  # satisfied: it must be by this epoch's producers, all of them
            src = epoch - w.lag
            if src >= 1 and self.signalled.get((w.counter, src), 0) != len(self.program.producers(w.counter)):
                raise AssertionError(f"#{index} {ins.describe()} in epoch {epoch} sees counter "
                                     f"{self.program.counters[w.counter]} satisfied before epoch {src} finished")
        return True

    def _execute(self, index: int, epoch: int) -> None:
        ins = self.program.instructions[index]
        if self.guard:
            run_guarded(self, ins, OPS[ins.op])
        else:
            OPS[ins.op](self, ins)
        self.counters[ins.signal] += 1
        key = (ins.signal, epoch)
        self.signalled[key] = self.signalled.get(key, 0) + 1
        if ins.op == Op.SAMPLE and self.done:
            self.finished_epoch = epoch

    # ---- what a runner would call ----
    def decode(self, token: int, position: int, n: int, stop=None) -> list[int]:
        """`n` decode steps in one launch from `token` at `position`: the tokens chosen (M = 1).
        `stop(tokens)` returning True ends the launch after that token."""
        if self.program.rows != 1:
            raise ValueError("decode runs a one-row program; verification programs use verify()")
        self.token[0], self.pos[0] = token, position
        start = len(self.out)
        self.stop_requested = stop
        try:
            self.run(n)
        finally:
            self.stop_requested = None
        return [row[0] for row in self.out[start:]]

    def verify(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits [M, V] for `tokens` at positions start.. in one epoch, writing their K/V."""
        if len(tokens) != self.program.rows:
            raise ValueError(f"this program verifies {self.program.rows} tokens, got {len(tokens)}")
        self.token.copy_(torch.tensor(tokens))
        self.pos.copy_(torch.arange(start, start + len(tokens)))
        self.run(1)
        return self.logits_history[-1]
