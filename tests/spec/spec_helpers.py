"""Shared pieces of the speculative decoding tests: tiny models, a Markov-chain target, proposers."""
from __future__ import annotations

import pytest
import torch

from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import sample
from sonic.models.registry import build_model
from sonic.spec.proposer import Proposal
from sonic.weights.random import random_state_dict
from threads import single_thread  # noqa: F401  (autouse: one torch thread)


def tiny_runner(config, seed: int = 1, noise: float = 0.0, base_seed: int | None = None) -> ReferenceRunner:
    """A reference runner on random weights; with `noise`, the weights of `base_seed` nudged, so the
    model agrees with that one often but not always (a realistic draft)."""
    state = random_state_dict(config, seed if base_seed is None else base_seed)
    if noise:
        gen = torch.Generator().manual_seed(seed)
        state = {k: v + noise * v.std() * torch.randn(v.shape, generator=gen) if v.dim() > 1 else v
                 for k, v in state.items()}
    return ReferenceRunner(build_model(config, state))


class MarkovRunner:
    """A target whose next-token distribution depends only on the previous token: P[prev]."""
    name = "markov"
    device = torch.device("cpu")

    def __init__(self, probs: torch.Tensor):
        self.logits = probs.log()
        self.position = 0
        self.verified: list[tuple[int, int]] = []  # (start, rows) of every verification
        self.plain_runs: list[int] = []              # tokens decoded by each run of plain steps

    def reserve(self, max_len: int):
        self.position = 0

    def prefill(self, ids: list[int]) -> torch.Tensor:
        return self.logits[ids[-1]]

    def verify(self, tokens: list[int], start: int) -> torch.Tensor:
        self.verified.append((start, len(tokens)))
        return self.logits[tokens]

    def verify_argmax(self, tokens: list[int], start: int) -> list[int]:
        return self.verify(tokens, start).argmax(-1).tolist()

    def rewind(self, length: int):
        self.position = length

    def decode_steps(self, token, position, n, sampling, gen=None, stop=None):
        self.plain_runs.append(0)
        for i in range(n):
            if i and stop is not None and stop():
                return
            token = int(sample(self.logits[token][None], sampling, gen)[0])
            self.plain_runs[-1] += 1
            yield token


class MarkovDraft:
    """Samples k tokens from its own chain Q and hands over their probabilities."""
    name = "markov-draft"

    def __init__(self, probs: torch.Tensor):
        self.probs = probs

    def start(self, prompt_ids, max_len):
        pass

    def propose(self, context, k, sampling, gen):
        tokens, rows, prev = [], [], context[-1]
        for _ in range(k):
            rows.append(self.probs[prev])
            prev = int(torch.multinomial(rows[-1], 1, generator=gen))
            tokens.append(prev)
        return Proposal(tokens, torch.stack(rows))


class FixedProposer:
    """Proposes the same tokens whatever the context: a point mass, like prompt lookup."""
    name = "fixed"

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def start(self, prompt_ids, max_len):
        pass

    def propose(self, context, k, sampling, gen):
        return Proposal(list(self.tokens))
