"""Choosing the next token when each rank holds logits for a slice of the vocabulary.

Ranks exchange a few candidates, never the full logits, and every rank picks the same winner:
- greedy: each rank proposes (max, index); the highest value wins, ties to the lowest index, as
  torch.argmax does on the full row;
- sampling: Gumbel-max. argmax(logits / T + g) is an exact sample from softmax(logits / T) when g is
  Gumbel noise; every rank draws the same seeded noise for the whole vocabulary and adds its slice,
  so the token is the one a single device would draw with that noise. With top-k each rank proposes
  its k best, which contain the global k best; top-p without top-k needs every token as a candidate.
"""
from __future__ import annotations

import torch

from sonic.engine.sampling import SamplingParams, filter_logits


def gumbel_noise(vocab: int, generator: torch.Generator, device) -> torch.Tensor:
    u = torch.rand(vocab, generator=generator, device=device)
    return -torch.log(-torch.log(u))


def candidate_count(params: SamplingParams, slice_size: int) -> int:
    """Candidates each rank proposes: 1 for greedy and plain temperature, else its top-k (or all)."""
    if params.greedy or (params.top_k == 0 and params.top_p >= 1.0):
        return 1
    return params.top_k if params.top_k > 0 else slice_size


def propose(logits: torch.Tensor, lo: int, params: SamplingParams, count: int,
            noise: torch.Tensor | None) -> torch.Tensor:
    """Float64 [2, count]: candidate values and global token ids from this rank's slice `logits` [Vr].

    Float64 holds both float32 values and token ids exactly, so one gather carries them together."""
    if logits.numel() == 0:  # a trailing rank of a tiny vocabulary may hold no tokens
        out = torch.full((2, count), float("-inf"), dtype=torch.float64, device=logits.device)
        out[1] = -1
        return out
    if count == 1:
        scores = logits if params.greedy else logits.float() / params.temperature + noise
        best = torch.argmax(scores)  # the first maximum: the lowest id among ties
        return torch.stack([scores[best].double(), (best + lo).double()])[:, None]
    k = min(count, logits.shape[0])
    values, ids = torch.topk(logits, k, sorted=False)
    order = torch.argsort(ids)  # ascending ids: ties resolve to the lowest id, as on one device
    out = torch.full((2, count), float("-inf"), dtype=torch.float64, device=logits.device)
    out[0, :k], out[1, :k] = values[order].double(), (ids[order] + lo).double()
    out[1, k:] = -1
    return out


def choose(candidates: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None) -> int:
    """The winner among every rank's candidates [world, 2, count], identical on every rank."""
    values = candidates[:, 0].reshape(-1)
    ids = candidates[:, 1].reshape(-1).long()
    if candidates.shape[-1] > 1:  # top-k / top-p over the candidates, then Gumbel-max
        scores = filter_logits(values.float()[None], params)[0]
        values = scores + noise[ids.clamp(min=0)]
    return int(ids[torch.argmax(values)])


class VocabParallelSampler:
    """Samples one token per step from logit slices, through `comm.all_gather`."""

    def __init__(self, comm, vocab: int, bounds: tuple[int, int]):
        self.comm, self.vocab = comm, vocab
        self.lo, self.hi = bounds
        self.slice_size = -(-vocab // comm.world)  # padded: every rank proposes the same count

    def __call__(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        noise = None if params.greedy else gumbel_noise(self.vocab, generator, logits.device)
        local = None if noise is None else noise[self.lo:self.hi]
        count = candidate_count(params, self.slice_size)
        return choose(self.comm.all_gather(propose(logits, self.lo, params, count, local)), params, noise)
