"""The eager reference runner: prefill then one-token decode steps through the reference model."""
from __future__ import annotations

from typing import Iterator

import torch

from sonic.engine.kv_cache import KVCache
from sonic.engine.sampling import SamplingParams, sample
from sonic.models.llama import LlamaModel

# The cache grows in these steps, so a run of similar requests reuses one allocation.
CACHE_GRANULE = 256


class ReferenceRunner:
    name = "ref"

    def __init__(self, model: LlamaModel):
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache: KVCache | None = None
        self.position = 0

    def reserve(self, max_len: int):
        """Make room for `max_len` positions and start a new sequence."""
        need = -(-max_len // CACHE_GRANULE) * CACHE_GRANULE
        if self.cache is None or self.cache.max_len < need:
            self.cache = None  # free the old cache before allocating the new one
            self.cache = KVCache(self.config, need, dtype=self.dtype, device=self.device)
        self.position = 0

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Logits [V] (float32) after the whole prompt."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(x, self.position, self.cache, last_only=True)
        self.position += len(ids)
        return logits[0, -1]

    def decode(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [V] after one more token (a 0-d or 1-element tensor on the device)."""
        logits = self.model(token.view(1, 1), self.position, self.cache)
        self.position += 1
        return logits[0, -1]

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams) -> Iterator[int]:
        """Sampled token ids, one per step; the host reads each token (this path syncs every step)."""
        self.reserve(len(prompt_ids) + max_tokens)
        gen = None if sampling.greedy else sampling.generator(self.device)
        token = int(sample(self.prefill(prompt_ids)[None], sampling, gen)[0])
        yield token
        yield from self.decode_steps(token, len(prompt_ids), max_tokens - 1, sampling, gen)

    def decode_steps(self, token: int, position: int, n: int, sampling: SamplingParams,
                     gen: torch.Generator | None = None, stop=None) -> Iterator[int]:
        """`n` plain decode steps from `token` at `position`, yielding each next token.

        `stop`, if given, is called after each token is taken: True ends the run there."""
        self.position = position
        current = torch.tensor(token, device=self.device)
        for i in range(n):
            if i and stop is not None and stop():
                return
            current = sample(self.decode(current)[None], sampling, gen)[0]
            yield int(current)

    # ---- speculative verification ----
    def verify(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits [len(tokens), V] for `tokens` at positions start.., writing their K/V into the cache.

        Each row runs as its own one-token step: PyTorch's CPU matmuls pick different kernels for one
        row and for several (gemv against gemm), so a batched pass would differ from `decode` in the
        last bits and speculative greedy output could drift from plain decoding. The fast path verifies
        all rows in one pass; here exactness comes first."""
        rows = [self.model(torch.tensor([[t]], device=self.device), start + i, self.cache)[0, -1]
                for i, t in enumerate(tokens)]
        self.position = start + len(tokens)
        return torch.stack(rows)

    def verify_argmax(self, tokens: list[int], start: int) -> list[int]:
        """The target's greedy choice after each of `tokens` (what `verify` would give, argmaxed)."""
        return self.verify(tokens, start).argmax(dim=-1).tolist()

    def rewind(self, length: int):
        """Keep the first `length` positions: entries past them (rejected drafts) are overwritten later."""
        self.position = length
        if self.cache is not None:
            self.cache.length = min(self.cache.length, length)

    def forward_all(self, ids: list[int]) -> torch.Tensor:
        """Teacher-forced logits [T, V] for a whole sequence from position 0 (for tests and checks)."""
        self.reserve(len(ids))
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(x, 0, self.cache)
        self.position = len(ids)
        return logits[0]
