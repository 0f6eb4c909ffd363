"""A draft model proposes: any smaller model with the target's tokenizer, on the same kind of runner
(the fast path on a GPU), with its own KV cache.

The draft keeps the tokens its cache holds. Before each proposal it keeps the part that still agrees
with the accepted context, rewinds its cache to there (rejected drafts are simply overwritten), feeds
what it has not seen and drafts k tokens one at a time: greedy, or sampled from its own filtered
distribution, whose probabilities then go with the proposal for rejection sampling.
"""
from __future__ import annotations

import torch

from sonic.engine.sampling import SamplingParams, filter_logits
from sonic.errors import SonicError
from sonic.spec.proposer import Proposal

MAX_FEED = 16  # tokens fed in one verification step; a longer catch-up is prefilled first


class DraftProposer:
    name = "draft"

    def __init__(self, runner):
        self.runner = runner
        self.fed: list[int] = []   # tokens whose K/V the draft cache holds, at positions 0..len-1
        self.agreed = 0            # fed[:agreed] is known to be a prefix of the context
        self.limit = 0

    @property
    def capacity(self) -> int:
        r = self.runner
        return min(r.config.max_position_embeddings, getattr(r, "max_len", None) or 1 << 62)

    def start(self, prompt_ids: list[int], max_len: int) -> None:
        # Past its own context the draft simply stops proposing: the output never depends on it.
        self.limit = min(max_len, self.capacity)
        self.runner.reserve(self.limit)
        self.fed, self.agreed = [], 0
        if 0 < len(prompt_ids) < self.limit:
            self.runner.prefill(prompt_ids)
            self.fed, self.agreed = list(prompt_ids), len(prompt_ids)

    def _sync(self, context: list[int]) -> list[int]:
        """Drop fed tokens the context disagrees with; the tokens still to feed (at least the last)."""
        i = self.agreed
        end = min(len(self.fed), len(context) - 1)
        while i < end and self.fed[i] == context[i]:
            i += 1
        self.fed = self.fed[:i]
        self.runner.rewind(i)
        return context[i:]

    def _feed(self, pending: list[int], sampling: SamplingParams,
              gen: torch.Generator | None) -> tuple[int, torch.Tensor | None]:
        """Feed `pending` and draft the token after it: (token, its probabilities or None)."""
        r = self.runner
        if len(pending) > MAX_FEED:
            r.rewind(len(self.fed))
            r.prefill(pending[:-MAX_FEED])
            self.fed += pending[:-MAX_FEED]
            pending = pending[-MAX_FEED:]
        start = len(self.fed)
        self.fed += pending
        if sampling.greedy:
            return r.verify_argmax(pending, start)[-1], None
        probs = torch.softmax(filter_logits(r.verify(pending, start)[-1:], sampling), dim=-1)[0]
        return int(torch.multinomial(probs, 1, generator=gen)), probs

    def propose(self, context: list[int], k: int, sampling: SamplingParams,
                gen: torch.Generator | None) -> Proposal:
        # The draft writes positions up to len(context) + k - 2.
        k = min(k, self.limit - len(context))
        if k <= 0:
            return Proposal([])
        pending = self._sync(context)
        self.agreed = len(context)
        tokens, probs = [], []
        for _ in range(k):
            token, p = self._feed(pending, sampling, gen)
            tokens.append(token)
            probs.append(p)
            pending = [token]
        return Proposal(tokens, None if sampling.greedy else torch.stack(probs))


def model_config(path: str | None):
    """A model's config alone (no weights): cheap enough to check before loading anything."""
    from sonic.config import ModelConfig
    from sonic.weights.loader import resolve_model_path

    resolved = resolve_model_path(path)
    return ModelConfig.from_gguf(resolved) if resolved.is_file() else ModelConfig.from_hf(resolved)


def check_vocab(draft_path: str, draft_config, target_config):
    if draft_config.vocab_size != target_config.vocab_size:
        raise SonicError(f"--draft-model {draft_path} has a vocabulary of {draft_config.vocab_size} tokens but "
                         f"the model has {target_config.vocab_size}: use a draft model with the same tokenizer")


def check_draft(draft_path: str, model_path: str | None):
    """A draft that cannot work with the model fails here, from the configs alone (before any load)."""
    check_vocab(draft_path, model_config(draft_path), model_config(model_path))


def load_draft(path: str, target_config, dtype: torch.dtype, device: str, runner_name: str) -> DraftProposer:
    """A draft model from a Hugging Face folder or GGUF file, checked against the target's vocabulary."""
    from sonic.engine.runners import make_runner
    from sonic.models.registry import build_model
    from sonic.weights.loader import load_weights

    check_vocab(path, model_config(path), target_config)
    loaded = load_weights(path, dtype, device, with_tokenizer=False)
    net = build_model(loaded.config, loaded.state_dict, dtype, device)
    return DraftProposer(make_runner(runner_name, net))
