"""What the speculative loop asks of a proposer, and what a proposal carries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from sonic.engine.sampling import SamplingParams


@dataclass
class Proposal:
    tokens: list[int]
    # Draft probabilities [len(tokens), V] the tokens were sampled from, for rejection sampling;
    # None means each token was chosen outright (a point mass), as prompt lookup does.
    probs: torch.Tensor | None = None
    # How the draft was found, for policies that judge drafts by it: prompt lookup gives the length of
    # the matched suffix (a longer match is likelier to hold); 0 says nothing.
    match: int = 0


class Proposer(Protocol):
    name: str

    def start(self, prompt_ids: list[int], max_len: int) -> None:
        """A new request: forget the last one and make room for `max_len` positions."""

    def propose(self, context: list[int], k: int, sampling: SamplingParams,
                gen: torch.Generator | None) -> Proposal:
        """Up to `k` tokens to follow `context` (prompt + accepted output); fewer or none is fine.

        `context` only ever grows by accepted tokens, so a proposer with state (a draft model's cache)
        keeps what still agrees with it and drops the rest."""
