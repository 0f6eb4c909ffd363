"""One rank's decode loop: the reference runner over a shard, with the vocabulary-parallel sampler.

Every rank runs this same loop on the same tokens; the sampler hands every rank the same next token,
so no rank waits on another for its input. Rank 0 decides before each step whether there is one
(`keep_going`, a broadcast), because only it sees EOS, stop strings and a client that went away.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from sonic.dist.tp import ShardPlan
from sonic.dist.vocab import VocabParallelSampler
from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams


class ShardRunner(ReferenceRunner):
    name = "tp"

    def __init__(self, model, plan: ShardPlan, comm):
        super().__init__(model)  # the KV cache follows the local config: this rank's KV heads only
        self.plan, self.comm = plan, comm
        self.sampler = VocabParallelSampler(comm, plan.config.vocab_size, plan.vocab)
        self.flag_due = False  # whether the peers wait on rank 0's next keep_going broadcast

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams,
                 keep_going: Callable[[], bool] = lambda: True) -> Iterator[int]:
        """Token ids, one per step, the same on every rank. `sampling.seed` must be set, and equal on
        every rank: the Gumbel noise is drawn from it. While a token is out, `flag_due` says whether
        the peers will wait on `keep_going` before the next step (rank 0 owes them a stop if it ends)."""
        self.reserve(len(prompt_ids) + max_tokens)
        gen = None if sampling.greedy else torch.Generator(device=self.device).manual_seed(sampling.seed)
        token = self.sampler(self.prefill(prompt_ids), sampling, gen)
        self.flag_due = max_tokens > 1
        yield token
        for i in range(max_tokens - 1):
            if not keep_going():
                return
            token = self.sampler(self.decode(torch.tensor(token, device=self.device)), sampling, gen)
            self.comm.check()  # cheap here: the sampler has synced already
            self.flag_due = i < max_tokens - 2
            yield token

    def full_logits(self, local: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary [..., V] from every rank's slice (for tests and checks)."""
        size = self.sampler.slice_size
        pad = torch.nn.functional.pad(local, (0, size - local.shape[-1]), value=float("nan"))
        parts = self.comm.all_gather(pad)
        return torch.cat(parts.unbind(0), dim=-1)[..., :self.plan.config.vocab_size]
