"""One rank's decode on the fast path: the fused kernels over a shard, both all-reduces inside the step.

The O and down projections are row-parallel: each rank writes its partial product in float32, rank 0's
with the residual added, so the all-reduce's sum is the new residual stream. The LM head scores this
rank's slice of the vocabulary, and the greedy choice crosses the same all-reduce: each rank fills its
own row of a [world, 2] table of zeros with its best (value, token id), so after the sum every rank
holds every candidate and picks the same winner (the highest value, ties to the lowest id, as one
device would). A step then needs no other collective, and on a GPU the whole step, all-reduces included,
is one CUDA graph.

Every rank runs the same steps on the same tokens. Rank 0 says whether to go on once per CHECK_EVERY
steps (a broadcast), not per step: all steps of a chunk are queued at once, so a request that ends
mid-chunk never leaves a peer waiting in an all-reduce, and the wasted steps are at most a chunk's.
Sampled requests take the reference path of the same shard (`ShardRunner`'s loop).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from sonic.dist.runner import ShardRunner
from sonic.dist.tp import ShardPlan
from sonic.dist.vocab import VocabParallelSampler
from sonic.engine.runner_graph import MAX_QUERY_TOKENS, GraphRunner
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError

CHECK_EVERY = 16  # steps between rank 0's go-on broadcasts


class ShardGraphRunner(GraphRunner):
    name = "tp-graph"

    def __init__(self, model, plan: ShardPlan, comm, max_len: int | None = None, require_cuda: bool = True):
        super().__init__(model, max_len=max_len, require_cuda=require_cuda)
        self.plan, self.comm = plan, comm
        self.lo, hi = plan.vocab
        if hi <= self.lo:
            raise SonicError(f"rank {plan.rank} holds no part of the {plan.config.vocab_size}-token vocabulary: "
                             "use fewer ranks or --runner ref")
        dev, c = self.device, self.config
        self.logits = torch.zeros(MAX_QUERY_TOKENS, hi - self.lo, dtype=torch.float32, device=dev)
        self.part = torch.zeros(MAX_QUERY_TOKENS, c.hidden_size, dtype=torch.float32, device=dev)
        self.candidates = torch.zeros(plan.world, 2, dtype=torch.float32, device=dev)
        self.sampler = VocabParallelSampler(comm, plan.config.vocab_size, plan.vocab)
        self._token_ring(CHECK_EVERY + 1)  # a whole chunk is queued at once
        self.flag_due = False  # whether the peers wait on rank 0's next go-on broadcast

    def _add_projection(self, x, w, h, residual, index=None):
        part = self.part[:x.shape[0]]
        if self.plan.rank == 0:
            self.matvec(x, w, part, residual=residual, index=index, gather="residual")
        else:
            self.matvec(x, w, part)
        h.copy_(self.comm.all_reduce(part))

    def _decode_step(self, sampling: SamplingParams):
        if not sampling.greedy:
            raise SonicError("the tensor-parallel fast path decodes greedily; sampled requests take the reference path")
        # Reductions and gathers only: indexing by a tensor would read it on the host, which a CUDA
        # graph cannot capture.
        value, best = self.forward_step(1)[0].max(dim=0)  # the first maximum: the lowest id among ties
        cand = self.candidates
        cand.zero_()
        cand[self.plan.rank, 0] = value
        cand[self.plan.rank, 1] = best + self.lo  # token ids are exact in float32 (below 2**24)
        every = self.comm.all_reduce(cand)
        winner = every[:, 0].max(dim=0).indices  # ties: the lowest rank, so the lowest id
        self._token0.copy_(every[:, 1].gather(0, winner.view(1)))
        self._position0.add_(1)

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams,
                 keep_going: Callable[[], bool] = lambda: True) -> Iterator[int]:
        """Token ids, the same on every rank (see ShardRunner.generate); `flag_due` says, while a
        token is out, whether the peers will wait on `keep_going` before their next step."""
        if not sampling.greedy:
            yield from ShardRunner.generate(self, prompt_ids, max_tokens, sampling, keep_going)
            return
        self.reserve(len(prompt_ids) + max_tokens)
        first = self.sampler(self.prefill(prompt_ids), sampling, None)
        self._token0.fill_(first)
        self._position0.fill_(len(prompt_ids))
        step = self._graph(sampling).replay if self.device.type == "cuda" else (lambda: self._decode_step(sampling))
        done = 1
        self.flag_due = max_tokens > 1
        yield first
        try:
            while done < max_tokens:
                if not keep_going():
                    return
                n = min(CHECK_EVERY, max_tokens - done)
                self.flag_due = done + n < max_tokens
                for token in self._queue(step, n, ahead=n):
                    done += 1
                    yield token
                self.comm.check()
        finally:
            self.flag_due = False
            self._drain()

    full_logits = ShardRunner.full_logits
