"""Speculative verification on the fast path: m query tokens in one fused step, one CUDA graph per m.

The graph for m copies its inputs from a pinned host buffer (the m tokens and the start position),
runs `forward_step(m)` (each row's logits, their K/V written at their positions) and the GPU argmax of
every row, and copies the m token ids back to pinned memory. So a verification costs the host one
replay and one wait: the copies are graph nodes, not launches of their own, and the host reads and
writes the pinned buffers through numpy views (no tensor operations around the replay).
"""
from __future__ import annotations

import torch

from sonic.errors import SonicError


class VerifyGraphs:
    def __init__(self, runner):
        from sonic.engine.runner_graph import MAX_QUERY_TOKENS

        self.runner = runner
        self.max_rows = rows = MAX_QUERY_TOKENS
        dev = runner.device
        self.use_graphs = dev.type == "cuda"  # on CPU (Triton interpreter) the step runs eagerly
        pinned = self.use_graphs
        # Inputs: tokens in [0, rows), the start position at [rows]; staged on the device in one copy.
        self.host_in = torch.zeros(rows + 1, dtype=torch.long, pin_memory=pinned)
        self.host_ids = torch.zeros(rows, dtype=torch.long, pin_memory=pinned)
        self.inputs = torch.zeros(rows + 1, dtype=torch.long, device=dev)
        self.ids = torch.zeros(rows, dtype=torch.long, device=dev)
        self.offsets = torch.arange(rows, dtype=torch.long, device=dev)
        self._in, self._ids = self.host_in.numpy(), self.host_ids.numpy()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # Set after each replay: the pinned inputs are not rewritten while a step may still read them.
        self.done = torch.cuda.Event() if self.use_graphs else None

    def _load(self, tokens: list[int], start: int) -> int:
        m = len(tokens)
        if not 1 <= m <= self.max_rows:
            raise SonicError(f"a verification step takes 1 to {self.max_rows} tokens, got {m}")
        if self.done is not None:
            self.done.synchronize()
        self._in[:m] = tokens
        self._in[self.max_rows] = start
        return m

    def _step(self, m: int):
        r = self.runner
        self.inputs.copy_(self.host_in, non_blocking=self.use_graphs)
        r.tokens[:m].copy_(self.inputs[:m])
        torch.add(self.offsets[:m], self.inputs[self.max_rows], out=r.positions[:m])
        # The LM head picks each row's token in its own epilogue, as the plain decode step does.
        r.matvec.lm_head_argmax(r._layers(m), r.packed.lm_head, r.logits[:m], self.ids[:m],
                                norm_weight=r.packed.final_norm, eps=r.config.rms_norm_eps)
        self.host_ids[:m].copy_(self.ids[:m], non_blocking=self.use_graphs)

    def _graph(self, m: int) -> torch.cuda.CUDAGraph:
        # Inputs are loaded before the first capture, so the warm-up runs write exactly the K/V the
        # real step writes: capturing mid-request leaves the cache as it should be.
        if m not in self.graphs:
            from sonic.engine.runner_graph import capture_graph
            self.graphs[m] = capture_graph(lambda: self._step(m))
        return self.graphs[m]

    def _run(self, tokens: list[int], start: int) -> int:
        m = self._load(tokens, start)
        if self.use_graphs:
            self._graph(m).replay()
            self.done.record()
        else:
            self._step(m)
        self.runner.position = start + m
        return m

    def argmax(self, tokens: list[int], start: int) -> list[int]:
        m = self._run(tokens, start)
        if self.done is not None:
            self.done.synchronize()
        return self._ids[:m].tolist()

    def logits(self, tokens: list[int], start: int) -> torch.Tensor:
        m = self._run(tokens, start)
        return self.runner.logits[:m].clone()
