"""Speculative verification on the fast path: m query tokens in one fused step, one CUDA graph per m.

The graph for m runs `forward_step(m)` (each row's logits, their K/V written at their positions) and
then the GPU argmax of every row, so for greedy decoding only m token ids cross to the host. The host
writes tokens[:m] and positions[:m] before each replay; nothing inside the graph advances them.
"""
from __future__ import annotations

import torch

from sonic.errors import SonicError


class VerifyGraphs:
    def __init__(self, runner):
        from sonic.engine.runner_graph import MAX_QUERY_TOKENS

        self.runner = runner
        self.max_rows = MAX_QUERY_TOKENS
        dev = runner.device
        self.use_graphs = dev.type == "cuda"  # on CPU (Triton interpreter) the step runs eagerly
        pinned = self.use_graphs
        self.ids = torch.zeros(self.max_rows, dtype=torch.long, device=dev)
        self.offsets = torch.arange(self.max_rows, dtype=torch.int32, device=dev)
        self.host_tokens = torch.zeros(self.max_rows, dtype=torch.long, pin_memory=pinned)
        self.host_ids = torch.zeros(self.max_rows, dtype=torch.long, pin_memory=pinned)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # Set when the last host-to-device copy of tokens is done, so the pinned buffer can be reused.
        self.copied = torch.cuda.Event() if self.use_graphs else None

    def _load(self, tokens: list[int], start: int) -> int:
        m = len(tokens)
        if not 1 <= m <= self.max_rows:
            raise SonicError(f"a verification step takes 1 to {self.max_rows} tokens, got {m}")
        r = self.runner
        if self.copied is not None:
            self.copied.synchronize()
        self.host_tokens[:m].copy_(torch.tensor(tokens, dtype=torch.long))
        r.tokens[:m].copy_(self.host_tokens[:m], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        torch.add(self.offsets[:m], start, out=r.positions[:m])
        return m

    def _step(self, m: int):
        # The LM head picks each row's token in its own epilogue, as the plain decode step does.
        r = self.runner
        r.matvec.lm_head_argmax(r._layers(m), r.packed.lm_head, r.logits[:m], self.ids[:m], norm_weight=r.packed.final_norm,
                       eps=r.config.rms_norm_eps)

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
        else:
            self._step(m)
        self.runner.position = start + m
        return m

    def argmax(self, tokens: list[int], start: int) -> list[int]:
        m = self._run(tokens, start)
        self.host_ids[:m].copy_(self.ids[:m], non_blocking=self.use_graphs)
        if self.use_graphs:
            torch.cuda.current_stream().synchronize()
        return self.host_ids[:m].tolist()

    def logits(self, tokens: list[int], start: int) -> torch.Tensor:
        m = self._run(tokens, start)
        return self.runner.logits[:m].clone()
