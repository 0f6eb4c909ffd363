"""Which drafted tokens the target keeps.

Greedy: the longest prefix of the draft that matches the target's argmax, then the target's own choice.
Sampling: the rejection rule of Leviathan et al. and Chen et al. (2023). Draft token x, drawn from q, is
kept with probability min(1, p(x) / q(x)); at the first rejection the next token is drawn from
norm(max(0, p - q)); with every draft token kept, a bonus token is drawn from p of the last row. The
output is then distributed exactly as the target's p. A proposer that picks tokens outright (prompt
lookup) has q = a point mass at x: x is kept with probability p(x), and the residual is p without x.
"""
from __future__ import annotations

import torch


def greedy_accept(draft: list[int], target: list[int]) -> int:
    """How many draft tokens match `target` (the target's argmax after the pending token and each draft)."""
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return n


def residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """Where to draw from after draft token x was rejected: norm(max(0, p - q)), q a point mass if None."""
    if q is None:
        r = p.clone()
        r[x] = 0
    else:
        r = (p - q).clamp_min(0)
    total = r.sum()
    # Rejection has probability zero when nothing is left (p <= q everywhere means p == q), but float
    # rounding can still get here: p itself is then the right distribution.
    return r / total if total > 0 else p


def rejection_accept(draft: list[int], p: torch.Tensor, q: torch.Tensor | None,
                     gen: torch.Generator | None) -> tuple[int, int]:
    """(number of draft tokens kept, the token that follows them).

    p: target probabilities [k + 1, V] after the pending token and each draft token; q: the draft's
    probabilities [k, V], or None for a point-mass proposer."""
    k = len(draft)
    if k:
        rows = torch.arange(k, device=p.device)
        x = torch.tensor(draft, device=p.device)
        px = p[rows, x]
        qx = q[rows, x] if q is not None else torch.ones_like(px)
        u = torch.rand(k, generator=gen, device=p.device)
        # u < p/q, written without the division: a draft token has q(x) > 0 since it was drawn from q.
        kept = (u * qx < px).long()
        n = int(kept.cumprod(0).sum())
    else:
        n = 0
    dist = p[n] if n == k else residual(p[n], q[n] if q is not None else None, draft[n])
    return n, int(torch.multinomial(dist, 1, generator=gen))
