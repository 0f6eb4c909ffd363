"""Generated ids to the text one request sees: streaming detokenization, then stop strings."""
from __future__ import annotations

from sonic.stop import StopStrings


class TextStream:
    """`add(id)` returns the text that is safe to show now; `finish()` the rest once generation ends.

    After a stop string is hit, `stopped` is True and nothing more comes out: the stop string and
    anything after it are never part of the text.
    """

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.detok = tokenizer.detokenizer()
        self.stops = StopStrings(list(stop)) if stop else None
        self.stopped = False

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        return self._through_stops(self.detok.add(token_id))

    def finish(self) -> str:
        if self.stopped:
            return ""
        tail = self._through_stops(self.detok.flush())
        if self.stops is not None and not self.stopped:
            tail += self.stops.flush()
        return tail

    def _through_stops(self, piece: str) -> str:
        if self.stops is None:
            return piece
        piece, self.stopped = self.stops.feed(piece)
        return piece
