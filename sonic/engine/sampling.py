"""Token sampling on the device that holds the logits: greedy, temperature, top-k, top-p, seeded."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from sonic.errors import SonicError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None    # None = a fresh random seed per request

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SonicError(f"invalid temperature {self.temperature}: use 0 (greedy) or a positive number")
        if self.top_k < 0:
            raise SonicError(f"invalid top-k {self.top_k}: use 0 (off) or a positive number of tokens")
        if not (0 < self.top_p <= 1):
            raise SonicError(f"invalid top-p {self.top_p}: use a probability in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def generator(self, device: str | torch.device) -> torch.Generator:
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**63)
        return torch.Generator(device=device).manual_seed(seed)


def seed_of(generator: torch.Generator) -> int:
    """A request's seed of the GPU sampling stream (engine/gumbel.py), drawn from its generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits [B, V] with tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the tokens before it already cover top_p; the first token always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
