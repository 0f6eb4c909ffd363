"""Prompt lookup: match the last n tokens against the prompt and output so far, propose what followed.

No extra weights. For each n an index maps every n-gram that has a successor to its starts, latest
last; the index grows with the context, never rescans it. A match of the longest size usually has
several earlier occurrences (a repeated line of code), and the latest is often the wrong one: among
the latest few, the lookup takes the one whose match reaches furthest back before the suffix, and
reports that length. So a lookup costs at most O(max_n + CANDIDATES * REACH), whatever the context.
"""
from __future__ import annotations

import torch

from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError
from sonic.spec.proposer import Proposal


CANDIDATES = 16  # latest occurrences of a longest-size match compared
REACH = 64       # tokens a match is followed back at most


class NgramProposer:
    name = "ngram"
    starts_on_host = True  # `start` indexes the prompt: no GPU work

    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise SonicError(f"n-gram sizes must satisfy 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.start([], 0)

    def start(self, prompt_ids: list[int], max_len: int) -> None:
        self.seen: list[int] = []
        self.index: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in range(self.min_n, self.max_n + 1)}
        self._extend(list(prompt_ids))

    def _extend(self, context: list[int]):
        old = len(self.seen)
        # The loop's context only grows; anything else (a new request) rebuilds the index.
        if len(context) < old or context[max(0, old - self.max_n - 1):old] != self.seen[-self.max_n - 1:]:
            self.start([], 0)
            old = 0
        for n, table in self.index.items():
            # n-grams that now have a successor: those starting at old - n .. len - n - 1.
            for i in range(max(0, old - n), len(context) - n):
                table.setdefault(tuple(context[i:i + n]), []).append(i)
        self.seen.extend(context[old:])

    def lookup(self, context: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the earlier occurrence of the longest matching suffix (see above)."""
        return self.match(context, k)[1]

    def match(self, context: list[int], k: int) -> tuple[int, list[int]]:
        """(length of the suffix matched, up to k tokens that followed it); (0, []) if none."""
        self._extend(context)
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            starts = self.index[n].get(tuple(context[-n:]))
            if starts:
                i, length = starts[-1], n
                if n == self.max_n and len(starts) > 1:
                    i, length = self._furthest_back(context, starts[-CANDIDATES:], n)
                return length, context[i + n:i + n + k]
        return 0, []

    @staticmethod
    def _furthest_back(context: list[int], starts: list[int], n: int) -> tuple[int, int]:
        """Of occurrences `starts` of the last n tokens, the one whose match extends furthest back
        (the latest of equals), and the length of that match (at most REACH)."""
        end = len(context) - 1
        best, best_len = starts[-1], 0
        for i in reversed(starts):
            length = n
            while length < REACH and i - 1 - (length - n) >= 0 and context[i - 1 - (length - n)] == context[end - length]:
                length += 1
            if length > best_len:
                best, best_len = i, length
        return best, best_len

    def propose(self, context: list[int], k: int, sampling: SamplingParams,
                gen: torch.Generator | None) -> Proposal:
        n, tokens = self.match(context, k)
        return Proposal(tokens, match=n)
