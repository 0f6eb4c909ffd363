"""`--speculative off|ngram|draft|auto`: the settings, and the object the engine decodes through.

ngram and draft draft `--spec-max-tokens` tokens before every step (as many as the proposer finds;
default 8); auto adapts the depth to the request and the measured verification costs, from 0 (plain
decoding) up to `--spec-max-tokens` (default 15), with the draft model when one is given and prompt
lookup otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError
from sonic.spec.adaptive import AdaptiveDepth, FixedDepth, LookupDepth, measure_costs
from sonic.spec.loop import MAX_DRAFT, SpecStats, speculative_generate

MODES = ("off", "ngram", "draft", "auto")


DEFAULT_DEPTH = {"auto": MAX_DRAFT}  # auto drafts deep only where it pays; fixed depths default to 8


@dataclass(frozen=True)
class SpecConfig:
    mode: str = "off"
    max_tokens: int | None = None  # None: the mode's default depth
    draft_model: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise SonicError(f"unknown --speculative '{self.mode}': use {', '.join(MODES)}")
        if self.max_tokens is None:
            object.__setattr__(self, "max_tokens", DEFAULT_DEPTH.get(self.mode, 8))
        if not 1 <= self.max_tokens <= MAX_DRAFT:
            raise SonicError(f"invalid --spec-max-tokens {self.max_tokens}: use 1 to {MAX_DRAFT} "
                             f"(a verification step holds {MAX_DRAFT + 1} tokens)")
        if self.mode == "draft" and not self.draft_model:
            raise SonicError("--speculative draft needs --draft-model PATH: a smaller model with the same tokenizer")
        if self.draft_model and self.mode in ("off", "ngram"):
            raise SonicError(f"--draft-model is used by --speculative draft or auto, not {self.mode}")

    @property
    def on(self) -> bool:
        return self.mode != "off"


class Speculator:
    """A proposer and a depth policy around one target runner."""

    def __init__(self, runner, proposer, policy):
        self.runner, self.proposer, self.policy = runner, proposer, policy
        self.last = SpecStats()

    @classmethod
    def build(cls, config: SpecConfig, runner, dtype, device: str, runner_name: str) -> "Speculator | None":
        if not config.on:
            return None
        if config.draft_model:
            from sonic.spec.draft import load_draft
            proposer = load_draft(config.draft_model, runner.config, dtype, device, runner_name)
        else:
            from sonic.spec.ngram import NgramProposer
            proposer = NgramProposer()
        return cls(runner, proposer, make_policy(config.mode, config.max_tokens, runner, proposer))

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams,
                 stop_ids=frozenset()) -> Iterator[int]:
        self.last = SpecStats()
        return speculative_generate(self.runner, self.proposer, self.policy, prompt_ids, max_tokens,
                                    sampling, stop_ids, self.last)


def make_policy(mode: str, max_tokens: int, runner, proposer):
    """Fixed depth for ngram and draft; for auto, an adaptive policy on costs measured here: one that
    judges each draft when drafts are free (prompt lookup), one that decides first for a draft model."""
    if mode != "auto":
        return FixedDepth(max_tokens)
    draft_runner = getattr(proposer, "runner", None)
    costs = measure_costs(runner, max_tokens + 1, draft_runner)
    return AdaptiveDepth(costs, max_tokens) if draft_runner is not None else LookupDepth(costs, max_tokens)
