"""The speculative decoding loop: propose, verify in one pass, keep the accepted prefix, repeat.

Every step ends with one token chosen by the target itself (the correction at the first rejected draft
token, or a bonus token after the last), so each step moves forward. The token that ends a step is not
in the cache yet; it is the first query row of the next step. Greedy output is the target's argmax at
every position, which is what plain decoding computes, on rows computed as plain decoding computes them.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from typing import Iterator

import torch

from sonic.engine.sampling import SamplingParams, filter_logits, sample
from sonic.spec.verify import greedy_accept, rejection_accept

MAX_DRAFT = 15  # a verification step holds at most 16 query rows (the fast path's limit)


@dataclass
class SpecStats:
    drafted: int = 0    # draft tokens sent to verification
    accepted: int = 0   # of those, kept
    steps: int = 0      # verification steps with at least one draft token

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Draft tokens kept per verification step (each step also adds the target's own token)."""
        return self.accepted / self.steps if self.steps else 0.0


def _target_probs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    return torch.softmax(filter_logits(logits, sampling), dim=-1)


def verify_draft(runner, pending: int, pos: int, draft: list[int], q: torch.Tensor | None,
                 sampling: SamplingParams, gen: torch.Generator | None) -> list[int]:
    """Verify `draft` after the pending token at `pos`: the kept draft tokens, then the target's own.

    The cache keeps the K/V of the pending token and the kept drafts; later steps overwrite the rest."""
    rows = [pending] + draft
    if sampling.greedy:
        target = runner.verify_argmax(rows, pos)
        n = greedy_accept(draft, target)
        nxt = target[n]
    else:
        n, nxt = rejection_accept(draft, _target_probs(runner.verify(rows, pos), sampling), q, gen)
    runner.rewind(pos + n + 1)
    return draft[:n] + [nxt]


def speculative_generate(runner, proposer, policy, prompt_ids: list[int], max_tokens: int,
                         sampling: SamplingParams, stop_ids=frozenset(),
                         stats: SpecStats | None = None) -> Iterator[int]:
    """Token ids as `runner.generate` yields them, ending after a token in `stop_ids` (EOS), if any."""
    stats = stats if stats is not None else SpecStats()
    runner.reserve(len(prompt_ids) + max_tokens)
    gen = None if sampling.greedy else sampling.generator(runner.device)
    first = sample(runner.prefill(prompt_ids)[None], sampling, gen)
    # A proposer that works on the host (prompt lookup) indexes the prompt while the GPU prefills; a
    # draft model starts after the first token, so that its own prefill never delays it.
    on_host = getattr(proposer, "starts_on_host", False)
    if on_host:
        proposer.start(prompt_ids, len(prompt_ids) + max_tokens)
    token = int(first[0])
    yield token
    if not on_host:
        proposer.start(prompt_ids, len(prompt_ids) + max_tokens)
    policy.start()
    context = list(prompt_ids) + [token]
    emitted = 1
    while emitted < max_tokens and token not in stop_ids:
        remaining = max_tokens - emitted
        pos = len(context) - 1  # the pending token's position: it is not in the cache yet
        # A step emits k + 1 tokens at most, never more than are left: verification never runs past
        # max_tokens, nor past the context (prompt + max_tokens fits, as plain decoding needs).
        k = min(policy.depth(), remaining - 1, MAX_DRAFT)
        proposal = proposer.propose(context, k, sampling, gen) if k > 0 else None
        draft = chosen_draft(policy, proposal, k)
        if draft:
            q = proposal.probs[:len(draft)] if proposal.probs is not None else None
            new = verify_draft(runner, context[-1], pos, draft, q, sampling, gen)
            stats.steps += 1
            stats.drafted += len(draft)
            stats.accepted += len(new) - 1
            policy.update(len(draft), len(new) - 1, proposal.match)
            steps = (t for t in new)
        else:
            # No draft: plain steps, queued on the fast path (one, if a draft may come at the next token).
            # A policy that watches plain runs ends one as soon as a lookup is worth verifying.
            n = min(remaining, policy.plain_run() if k == 0 or policy.watches_plain else 1)
            stop = (lambda: worth_drafting(proposer, policy, context, sampling, gen)) if policy.watches_plain else None
            steps = runner.decode_steps(context[-1], pos, n, sampling, gen, stop=stop)
        with closing(steps):
            for token in steps:
                context.append(token)
                yield token
                emitted += 1
                if token in stop_ids:
                    break


def chosen_draft(policy, proposal, k: int) -> list[int]:
    """The draft tokens the policy verifies out of `proposal` (at most k); [] for none."""
    if proposal is None:
        return []
    tokens = proposal.tokens[:k]
    return tokens[:policy.trim(len(tokens), proposal.match)]


def worth_drafting(proposer, policy, context: list[int], sampling: SamplingParams, gen) -> bool:
    """Whether the policy would verify what the proposer drafts after `context` now."""
    k = min(policy.depth(), MAX_DRAFT)
    return bool(chosen_draft(policy, proposer.propose(context, k, sampling, gen), k))
