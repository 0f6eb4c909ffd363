"""The GPU fast path: fused Triton kernels, the decode step captured once as a CUDA graph.

Token, position and RNG state live on the GPU, so the host never waits on a step to launch the next:
it keeps a couple of steps queued and reads tokens from a pinned buffer as they land.
"""
from __future__ import annotations

from typing import Iterator

import torch

from sonic.engine.kv_cache import KVCache
from sonic.engine.packed import pack_model
from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams, filter_logits, sample, seed_of
from sonic.errors import SonicError
from sonic.kernels.matvec_backend import Matvec
from sonic.kernels.triton import MAX_ROWS
from sonic.models.llama import LlamaModel
from sonic.models.rope import rope_tables

DEFAULT_MAX_LEN = 8192   # cache length when the model's context is longer
MAX_QUERY_TOKENS = MAX_ROWS  # rows one step can verify (speculative decoding)
QUEUE_AHEAD = 2          # steps kept queued on the GPU while the host reads tokens


def capture_graph(step, warmups: int = 2) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `step()`, after `warmups` eager runs on a side stream that compile every kernel
    and allocate every workspace (a capture may allocate nothing new)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


class GraphRunner(ReferenceRunner):
    """Prefill (and `forward_all`) come from the reference runner, on the same weights and cache."""
    name = "graph"

    def __init__(self, model: LlamaModel, max_len: int | None = None, require_cuda: bool = True):
        from sonic.kernels.triton import decode_attention as attn_k

        super().__init__(model)
        # require_cuda=False lets CPU tests run the fused kernels eagerly under the Triton interpreter.
        if require_cuda and self.device.type != "cuda":
            raise SonicError("the graph runner needs a CUDA GPU: use --device cuda, or --runner ref on CPU")
        c = self.config
        self.max_len = max_len or min(c.max_position_embeddings, DEFAULT_MAX_LEN)
        self.packed = pack_model(model)
        self.cache = KVCache(c, self.max_len, dtype=self.dtype, device=self.device)
        cos, sin = rope_tables(c, self.max_len, self.device)
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.num_splits = attn_k.default_num_splits(c.num_key_value_heads, self.max_len, c.head_dim)
        dev, m = self.device, MAX_QUERY_TOKENS
        # Static buffers: graphs capture their addresses.
        self.tokens = torch.zeros(m, dtype=torch.long, device=dev)
        self.positions = torch.zeros(m, dtype=torch.int32, device=dev)
        self.h = torch.zeros(m, c.hidden_size, dtype=torch.float32, device=dev)
        self.qkv = torch.zeros(m, c.q_size + 2 * c.kv_size, dtype=self.dtype, device=dev)
        self.attn = torch.zeros(m, c.num_attention_heads, c.head_dim, dtype=self.dtype, device=dev)
        self.act = torch.zeros(m, c.intermediate_size, dtype=self.dtype, device=dev)
        self.logits = torch.zeros(m, c.vocab_size, dtype=torch.float32, device=dev)
        self.seed = torch.zeros(1, dtype=torch.long, device=dev)
        self.step_counter = torch.zeros(1, dtype=torch.long, device=dev)
        self._token0, self._position0 = self.tokens[:1], self.positions[:1]
        self._token_ring(QUEUE_AHEAD + 1)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.matvec = Matvec()  # Triton or the CUDA tensor-core kernel (SONIC_MATVEC), for every step

    def _token_ring(self, slots: int):
        """Pinned slots the queued steps' tokens land in, with their events (one more to drain on).
        Made once: a host operation costs microseconds, and a plain run that a draft ends is short."""
        on_gpu = self.device.type == "cuda"
        self.host_tokens = torch.zeros(slots, dtype=torch.long, pin_memory=on_gpu)
        self._host_token_np = self.host_tokens.numpy()
        self._host_slots = list(self.host_tokens.split(1))
        self._events = [torch.cuda.Event() for _ in range(slots + 1)] if on_gpu else None

    # ---- one step of the fused path (eager; also what the graph captures) ----
    def _layers(self, m: int) -> torch.Tensor:
        """The residual stream [m, H] after every layer for tokens[:m] at positions[:m]; writes their
        K/V into the cache. Layer 0 reads the embedding rows in place (no gather launch)."""
        from sonic.kernels.triton.decode_attention import decode_attention

        c, p, mv = self.config, self.packed, self.matvec
        h, qkv, attn, act = self.h[:m], self.qkv[:m], self.attn[:m], self.act[:m]
        pos, tokens = self.positions[:m], self.tokens[:m]
        eps = c.rms_norm_eps
        for i, layer in enumerate(p.layers):
            k_cache, v_cache = self.cache.k[i, 0], self.cache.v[i, 0]
            first = i == 0
            mv(p.embed if first else h, layer.w_qkv, qkv, norm_weight=layer.attn_norm, eps=eps,
               bias=layer.b_qkv, index=tokens if first else None)
            decode_attention(qkv, pos, self.cos, self.sin, k_cache, v_cache, attn, num_heads=c.num_attention_heads,
                             num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, sm_scale=c.head_dim ** -0.5,
                             num_splits=self.num_splits, q_norm_weight=layer.q_norm, k_norm_weight=layer.k_norm,
                             eps=eps, sliding_window=c.sliding_window)
            self._add_projection(attn.view(m, c.q_size), layer.w_o, h, p.embed if first else h,
                                 index=tokens if first else None)
            mv(h, layer.w_gate_up, act, norm_weight=layer.mlp_norm, eps=eps, silu_mul=True)
            self._add_projection(act, layer.w_down, h, h)
        return h

    def _add_projection(self, x, w, h, residual, index=None):
        """h = residual + x @ w.T, for O and down (residual rows gathered by `index` in layer 0).
        A tensor-parallel rank sums its partial product with its peers' here."""
        self.matvec(x, w, h, residual=residual, index=index, gather="residual")

    def forward_step(self, m: int) -> torch.Tensor:
        """Logits [m, V] for tokens[:m] at positions[:m]; writes their K/V into the cache."""
        logits = self.logits[:m]
        self.matvec(self._layers(m), self.packed.lm_head, logits, norm_weight=self.packed.final_norm,
                     eps=self.config.rms_norm_eps)
        return logits

    def _decode_step(self, sampling: SamplingParams):
        """One captured step: forward, choose the next token on the GPU; the choosing launch also
        advances the position (and the RNG step)."""
        from sonic.kernels.triton.lm_head_sample import gumbel_argmax

        if sampling.greedy:
            self.matvec.lm_head_argmax(self._layers(1), self.packed.lm_head, self.logits[:1], self.tokens[:1],
                           norm_weight=self.packed.final_norm, eps=self.config.rms_norm_eps,
                           advance=self.positions[:1])
        else:
            logits = filter_logits(self.forward_step(1), sampling)
            gumbel_argmax(logits, self.seed, self.step_counter, self.tokens[:1], advance=self.positions[:1])

    def _graph(self, sampling: SamplingParams) -> torch.cuda.CUDAGraph:
        key = ("greedy",) if sampling.greedy else (sampling.temperature, sampling.top_k, sampling.top_p)
        if key not in self.graphs:
            saved = (self.tokens.clone(), self.positions.clone(), self.step_counter.clone())
            self.graphs[key] = capture_graph(lambda: self._decode_step(sampling))
            for buf, value in zip((self.tokens, self.positions, self.step_counter), saved):
                buf.copy_(value)
        return self.graphs[key]

    # ---- the runner interface ----
    def reserve(self, max_len: int):
        """The cache is fixed (graphs hold its address): check the request fits, start a new sequence."""
        if max_len > self.max_len:
            raise SonicError(f"this request needs {max_len} positions but the GPU cache holds {self.max_len}: "
                             "shorten the prompt or lower --max-tokens")
        self.position = 0

    def forward_tokens(self, ids: list[int], start: int) -> torch.Tensor:
        """Teacher-forced logits [len(ids), V] of the fused path, eagerly (tests, verification)."""
        m = len(ids)
        self.tokens[:m].copy_(torch.tensor(ids, device=self.device))
        self.positions[:m].copy_(torch.arange(start, start + m, dtype=torch.int32, device=self.device))
        return self.forward_step(m).clone()

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams) -> Iterator[int]:
        self.reserve(len(prompt_ids) + max_tokens)
        graph = self._graph(sampling)
        gen = None if sampling.greedy else sampling.generator(self.device)
        self._seed(sampling, gen)
        first = sample(self.prefill(prompt_ids)[None], sampling, gen)
        self.tokens[:1].copy_(first)
        self.positions[:1].fill_(len(prompt_ids))
        steps = self._queue(graph.replay, max_tokens - 1)
        try:
            yield int(first[0])  # the GPU is already busy with the next steps
            yield from steps
        finally:
            self._drain()

    def _seed(self, sampling: SamplingParams, gen: torch.Generator | None):
        if not sampling.greedy:
            self.seed.fill_(seed_of(gen))
            self.step_counter.zero_()

    def _queue(self, step, n: int, stop=None, ahead: int = QUEUE_AHEAD) -> Iterator[int]:
        """Run `step` (a graph's replay) n times, `ahead` steps ahead of the host (fewer than the ring's
        slots). The first steps are queued now; the iterator returned yields each step's token as it
        lands in the pinned ring. `stop` is called after each token is taken: True queues no more, and
        the queued steps still yield. Without a GPU (the interpreter) the steps run as they are queued."""
        events, slots = self._events, len(self._host_slots)
        host, token0 = self._host_token_np, self._token0

        def enqueue(i: int):
            step()
            self._host_slots[i % slots].copy_(token0, non_blocking=events is not None)
            if events is not None:
                events[i % slots].record()

        queued = min(ahead, n)
        for i in range(queued):
            enqueue(i)

        def tokens():
            nonlocal n, queued
            i = 0
            while i < n:
                if events is not None:
                    events[i % slots].synchronize()
                token = int(host[i % slots])
                if queued < n:
                    enqueue(queued)
                    queued += 1
                yield token
                i += 1
                if stop is not None and i < n and stop():
                    n = queued
        return tokens()

    def _drain(self):
        """Wait for every queued step, so the buffers can be reused."""
        if self._events is not None:
            done = self._events[-1]
            done.record()
            done.synchronize()

    # ---- speculative decoding (the verify graphs live in verify_graph.py) ----
    def verify(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits [m, V] of `tokens` at positions start.. in one fused step (m <= MAX_QUERY_TOKENS)."""
        return self._verify_graphs().logits(tokens, start)

    def verify_argmax(self, tokens: list[int], start: int) -> list[int]:
        """The greedy choice after each of `tokens`, chosen on the GPU: only m ids reach the host."""
        return self._verify_graphs().argmax(tokens, start)

    def _verify_graphs(self):
        if getattr(self, "_verify", None) is None:
            from sonic.engine.verify_graph import VerifyGraphs
            self._verify = VerifyGraphs(self)
        return self._verify

    def decode_steps(self, token: int, position: int, n: int, sampling: SamplingParams,
                     gen: torch.Generator | None = None, stop=None) -> Iterator[int]:
        """`n` plain steps of the captured decode graph from `token` at `position`, queued as in
        `generate`: the speculative loop's stretches without drafts cost what plain decoding costs.
        `stop` (see `_queue`) may end the run early, after the steps already queued."""
        self._seed(sampling, gen)
        self._token0.fill_(token)
        self._position0.fill_(position)
        # Set before a first capture: its warm-up steps then write K/V only at and past `position`,
        # never over the accepted sequence before it.
        graph = self._graph(sampling)
        done = 0
        try:
            for token in self._queue(graph.replay, n, stop):
                done += 1
                yield token
        finally:
            self._drain()
        self.position = position + done
