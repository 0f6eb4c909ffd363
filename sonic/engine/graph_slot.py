"""The GPU fast path behind the scheduler, for one sequence at a time (`sonic serve --max-concurrency 1`).

The fused kernels decode one sequence per cache, so this runner holds a single slot: prefill is the
reference model's on the graph runner's own cache (as in `GraphRunner`), and each decode step is one
replay of a CUDA graph of the fused forward. Unlike `GraphRunner.generate`, the step ends at the
logits: the scheduler samples on the host, so seeds, stop strings and logprobs behave exactly as on
the batched path, at the cost of one host sync per token.
"""
from __future__ import annotations

import torch

from sonic.engine.batch_runner import BatchRunner


class GraphSlotRunner(BatchRunner):
    def __init__(self, runner, max_len: int):
        super().__init__(runner.model, max_batch=1, max_len=min(max_len, runner.max_len))
        self.runner = runner
        self.cache = runner.cache   # fixed: the graph holds its address
        self._graph = None

    def _fit(self, length: int):
        if length > self.max_len:
            raise ValueError(f"a sequence needs {length} positions but the GPU cache holds {self.max_len}")

    def decode(self, tokens: list[int]) -> torch.Tensor:
        (slot,) = self.decoding
        self.runner.tokens[:1].fill_(tokens[0])
        self.runner.positions[:1].fill_(slot.length)
        logits = self._step()
        slot.length += 1
        return logits.clone()

    def verify(self, slot, tokens: list[int]) -> torch.Tensor:
        """Logits [m, V] of `tokens` after the slot in one fused step (the graph runner's verify graphs,
        on the same cache)."""
        self._fit(slot.length + len(tokens))
        logits = self.runner.verify(tokens, slot.length)
        slot.length += len(tokens)
        return logits

    def verify_argmax(self, slot, tokens: list[int]) -> list[int]:
        """The greedy choice after each of `tokens`, picked in the LM head's epilogue on the GPU."""
        self._fit(slot.length + len(tokens))
        ids = self.runner.verify_argmax(tokens, slot.length)
        slot.length += len(tokens)
        return ids

    def _step(self) -> torch.Tensor:
        """Logits [1, V] of the fused forward; eager off CUDA (the Triton interpreter in CPU tests)."""
        if self.device.type != "cuda":
            return self.runner.forward_step(1)
        if self._graph is None:
            self._graph = self._capture()
        self._graph.replay()
        return self.runner.logits[:1]

    def _capture(self):
        # Tokens and positions are already set for the real step, so the warm-up runs write the very
        # K/V that step writes: nothing to undo afterwards.
        from sonic.engine.runner_graph import capture_graph
        return capture_graph(lambda: self.runner.forward_step(1))


def make_batch_runner(runner, max_batch: int, max_len: int) -> BatchRunner:
    """The scheduler's runner over an engine's runner: the fused GPU path for one sequence at a time
    when it has one, otherwise batched decoding on the reference model (on whatever device it lives)."""
    if getattr(runner, "name", "") == "graph" and max_batch == 1:
        return GraphSlotRunner(runner, max_len)
    return BatchRunner(runner.model, max_batch, max_len)
