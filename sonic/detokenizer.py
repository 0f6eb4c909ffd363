"""Streaming detokenization: turn generated ids into text one token at a time.

Decoding a single token on its own is wrong in two ways: byte-level and byte-fallback vocabularies
split multi-byte characters across tokens, and SentencePiece decoders drop the leading space of the
first token they see. So each step decodes a short window that starts a few tokens back (the
"prefix") and emits only what the window adds past the prefix's own text -- the prefix-offset /
read-offset scheme of vLLM and TGI. The window only grows while text is held back, so a step costs
O(1) decodes of a few tokens instead of re-decoding the whole sequence.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"  # what decoders produce for bytes that do not (yet) form a character


class IncrementalDetokenizer:
    """`add(id)` returns the newly completed text; `flush()` the rest once generation ends.

    Everything returned, joined, equals `tokenizer.decode(all_ids, skip_special_tokens)`.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix = 0         # window start: tokens kept only as context for the decoder
        self._read = 0           # tokens before this index have been emitted
        self._prefix_text = ""   # decode(token_ids[_prefix:_read]), cached
        self._emitted = 0        # characters emitted so far, for the full-decode fallback

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        self.token_ids.append(int(token_id))
        text = self._decode(self.token_ids[self._prefix:])
        # Nothing new yet, or the tail is a character still missing bytes: wait for more tokens.
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT):
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """The held-back tail (an unfinished character decodes to U+FFFD, as in a full decode)."""
        if self._read == len(self.token_ids):
            return ""
        text = self._decode(self.token_ids[self._prefix:])
        return self._emit(text) if len(text) > len(self._prefix_text) else self._advance("")

    def _emit(self, window_text: str) -> str:
        if window_text.startswith(self._prefix_text):
            new = window_text[len(self._prefix_text):]
        else:  # a decoder whose output for the prefix changed with context: fall back to a full decode
            new = self._decode(self.token_ids)[self._emitted:]
        return self._advance(new)

    def _advance(self, new: str) -> str:
        self._prefix, self._read = self._read, len(self.token_ids)
        self._prefix_text = self._decode(self.token_ids[self._prefix:self._read])
        self._emitted += len(new)
        return new
