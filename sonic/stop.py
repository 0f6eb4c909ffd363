"""Stop strings over streamed text.

Text arrives in pieces (one per token), and a stop string can straddle several of them. So the
tail of what has arrived that could still grow into a stop string is held back until the next
piece settles it; the stop string itself and anything after it are never emitted.
"""
from __future__ import annotations

from sonic.errors import SonicError


class StopStrings:
    """`feed(piece)` -> (text safe to emit now, whether a stop string was hit); `flush()` at the end."""

    def __init__(self, stops: list[str] | tuple[str, ...]):
        stops = list(stops)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise SonicError(f"stop strings must be non-empty text, got {s!r}")
        self.stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self._held + text
        hit = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self._held, self.stopped = "", True
            return buf[:hit], True
        keep = self._partial_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """The held-back text, for when generation ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_len(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best
