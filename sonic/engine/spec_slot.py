"""Speculative decoding inside the scheduler, for a sequence that decodes alone (`sonic serve --speculative`).

The proposer, the depth policy and the acceptance rule are the ones `sonic generate` uses
(`sonic.spec`); only the target differs: the sequence's slot in the scheduler's runner, whose
verification runs each row as its decode step runs it (the reference path) or all rows in one fused
step (the GPU path). A step returns the accepted draft tokens and the target's own next token; the
scheduler emits them one by one, so stop strings, EOS and max_tokens end a request exactly where
plain decoding would.
"""
from __future__ import annotations

from sonic.spec.loop import MAX_DRAFT, SpecStats, chosen_draft, verify_draft


class SlotTarget:
    """The spec loop's target interface (verify, verify_argmax, rewind) over one scheduler slot."""

    def __init__(self, runner, slot):
        self.runner, self.slot = runner, slot

    def verify(self, tokens: list[int], start: int):
        assert start == self.slot.length, "verification starts right after what the slot holds"
        return self.runner.verify(self.slot, tokens)

    def verify_argmax(self, tokens: list[int], start: int) -> list[int]:
        assert start == self.slot.length, "verification starts right after what the slot holds"
        return self.runner.verify_argmax(self.slot, tokens)

    def rewind(self, length: int):
        self.runner.rewind(self.slot, length)


class SpecSession:
    """One request's speculation: its context so far, its statistics, and when to draft next."""

    def __init__(self, speculator, prompt_ids: list[int], first_token: int, max_tokens: int,
                 stats: SpecStats | None = None):
        self.proposer, self.policy = speculator.proposer, speculator.policy
        self.proposer.start(prompt_ids, len(prompt_ids) + max_tokens)
        self.policy.start()
        self.context = list(prompt_ids) + [first_token]  # prompt and every token emitted
        self.stats = stats if stats is not None else SpecStats()
        self.plain_left = 0  # plain steps the policy asked for before it drafts again

    def step(self, runner, slot, remaining: int, sampling, gen) -> list[int] | None:
        """The tokens of one speculative step, or None: decode the next token plainly.

        `remaining` is how many tokens the request may still emit; a step never emits more."""
        if self.plain_left > 0:
            self.plain_left -= 1
            return None
        k = min(self.policy.depth(), remaining - 1, MAX_DRAFT)
        if k <= 0:
            self.plain_left = self.policy.plain_run() - 1
            return None
        proposal = self.proposer.propose(self.context, k, sampling, gen)
        # Each plain token here is its own step, so a policy that judges drafts looks at every token.
        draft = chosen_draft(self.policy, proposal, k)
        if not draft:
            return None
        q = proposal.probs[:len(draft)] if proposal.probs is not None else None
        # The last emitted token is pending: it enters the cache as the first verified row.
        new = verify_draft(SlotTarget(runner, slot), self.context[-1], slot.length, draft, q, sampling, gen)
        self.stats.steps += 1
        self.stats.drafted += len(draft)
        self.stats.accepted += len(new) - 1
        self.policy.update(len(draft), len(new) - 1, proposal.match)
        return new
