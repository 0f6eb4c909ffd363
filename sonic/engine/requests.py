"""What a caller asks the scheduler for, and the events it answers with (in the engine thread)."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from sonic.engine.generate import GenerationStats
from sonic.engine.sampling import SamplingParams

_ids = itertools.count()


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]   # the most likely tokens at that position (id, logprob), best first


@dataclass
class Delta:
    """One generated token and the text it completed (often "" while a character or stop string is pending)."""
    text: str
    token_id: int
    logprob: TokenLogprob | None = None
    stats: GenerationStats | None = None     # the request's running statistics (live: TTFT, tok/s so far)


@dataclass
class PromptLogprobs:
    """Logprobs of the prompt's own tokens, teacher-forced; the first token has none."""
    entries: list[TokenLogprob | None]


@dataclass
class Finished:
    reason: str               # "stop" (EOS or a stop string) or "length"
    text: str                 # text held back until the end (an unfinished character, a partial stop string)
    stats: GenerationStats


@dataclass
class Failed:
    status: int               # the HTTP status that fits: 503 busy or shutting down, 500 engine failure
    message: str


Event = Delta | PromptLogprobs | Finished | Failed


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    max_tokens: int                          # 0 only with prompt_logprobs: score the prompt, generate nothing
    emit: Callable[[Event], None]            # called in the engine thread; must not block
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    logprobs: int | None = None              # per output token: None = off, N = the chosen token and top N
    prompt_logprobs: int | None = None       # the same for each prompt token (completions `echo`)
    id: int = field(default_factory=lambda: next(_ids))
    arrival: float = field(default_factory=time.perf_counter)
    aborted: bool = False                    # set by any thread; the engine loop checks it every iteration


def logprobs_of(logits: torch.Tensor, token_ids: list[int], top_n: int) -> list[TokenLogprob]:
    """log_softmax of float32 logits [N, V] at the given tokens, with each row's top `top_n`."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(token_ids, device=logp.device)[:, None])[:, 0].tolist()
    if top_n > 0:
        values, indices = logp.topk(min(top_n, logp.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [[] for _ in token_ids]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(token_ids, chosen, tops)]
