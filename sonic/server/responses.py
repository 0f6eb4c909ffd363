"""Response bodies and stream chunks of the OpenAI API, for chat and (legacy) completions.

Every body and chunk carries `timings` (prompt and output tokens, TTFT, decode tok/s, and the
request's speculative decoding figures, zero when it did not speculate) so clients and the
playground can show speed as it happens.
"""
from __future__ import annotations

import json
import time
import uuid

from sonic.engine.generate import GenerationStats
from sonic.engine.requests import Delta, Finished, PromptLogprobs, TokenLogprob
from sonic.spec.loop import SpecStats


def timings(s: GenerationStats) -> dict:
    spec = s.spec or SpecStats()
    return {"prompt_tokens": s.prompt_tokens, "output_tokens": s.output_tokens,
            "ttft_ms": round(s.ttft_s * 1e3, 2), "decode_tok_s": round(s.decode_tok_s, 2),
            "draft_tokens": spec.drafted, "accepted_tokens": spec.accepted, "verification_steps": spec.steps,
            "mean_accepted_length": round(spec.mean_accepted, 3)}


def usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.output_tokens,
            "total_tokens": stats.prompt_tokens + stats.output_tokens}


def sse(payload: dict | str) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


class TokenTexts:
    """Each token's own text, as logprobs show it (special tokens included), cached per id."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self.cache[token_id]


class Format:
    """What chat and completions share: ids, the envelope, stream bookkeeping."""
    kind = prefix = ""

    def __init__(self, model: str, tokenizer, prompt_ids: list[int], top_logprobs: int | None,
                 include_usage: bool):
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created, self.model, self.prompt_ids = int(time.time()), model, prompt_ids
        self.texts, self.top_logprobs, self.include_usage = TokenTexts(tokenizer), top_logprobs, include_usage
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))

    def envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, **extra, "timings": timings(self.stats)}

    def chunk(self, **choice) -> dict:
        extra = {"usage": None} if self.include_usage else {}
        return self.envelope(self.kind, [{"index": 0, "logprobs": None, "finish_reason": None, **choice}], **extra)

    def events_to_chunks(self, event) -> list[dict]:
        """Chunks for one engine event; the Finished event brings the one chunk with finish_reason."""
        if isinstance(event, Delta):
            self.stats = event.stats
            return self.on_delta(event)
        if isinstance(event, PromptLogprobs):
            return self.on_prompt_logprobs(event)
        if isinstance(event, Finished):
            self.stats = event.stats
            chunks = [self.on_finish(event)]
            if self.include_usage:
                chunks.append(self.envelope(self.kind, [], usage=usage(event.stats)))
            return chunks
        return []

    def on_prompt_logprobs(self, event: PromptLogprobs) -> list[dict]:
        return []


class ChatFormat(Format):
    kind, prefix = "chat.completion.chunk", "chatcmpl"

    def head(self) -> list[dict]:
        return [self.chunk(delta={"role": "assistant", "content": ""})]

    def on_delta(self, event: Delta) -> list[dict]:
        if not event.text and event.logprob is None:
            return []
        lp = {"content": [self.logprob_entry(event.logprob)]} if event.logprob is not None else None
        return [self.chunk(delta={"content": event.text}, logprobs=lp)]

    def on_finish(self, event: Finished) -> dict:
        return self.chunk(delta={"content": event.text} if event.text else {}, finish_reason=event.reason)

    def response(self, out) -> dict:
        self.stats = out.stats
        lp = {"content": [self.logprob_entry(e) for e in out.logprobs]} if self.top_logprobs is not None else None
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": lp,
                  "finish_reason": out.finish_reason}
        return self.envelope("chat.completion", [choice], usage=usage(out.stats))

    def logprob_entry(self, e: TokenLogprob) -> dict:
        def one(token_id, logprob):
            text = self.texts(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "replace"))}
        return {**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}


class CompletionFormat(Format):
    kind, prefix = "text_completion", "cmpl"

    def __init__(self, *args, echo_text: str | None):
        super().__init__(*args)
        self.echo_text = echo_text
        self.offset = 0  # characters of text sent so far, for logprobs' text_offset

    def head(self) -> list[dict]:
        if self.echo_text is None or self.top_logprobs is not None:
            return []  # with logprobs, the prompt goes out with its logprobs
        return [self._text_chunk(self.echo_text)]

    def on_prompt_logprobs(self, event: PromptLogprobs) -> list[dict]:
        return [self._text_chunk(self.echo_text, self.logprobs(self.prompt_ids, event.entries))]

    def on_delta(self, event: Delta) -> list[dict]:
        if not event.text and event.logprob is None:
            return []
        lp = self.logprobs([event.token_id], [event.logprob]) if event.logprob is not None else None
        return [self._text_chunk(event.text, lp)]

    def on_finish(self, event: Finished) -> dict:
        return self.chunk(text=event.text, finish_reason=event.reason)

    def _text_chunk(self, text: str, logprobs: dict | None = None) -> dict:
        chunk = self.chunk(text=text, logprobs=logprobs)
        self.offset += len(text)
        return chunk

    def response(self, out) -> dict:
        self.stats = out.stats
        text, lp = out.text, None
        if self.top_logprobs is not None:
            ids, entries = out.token_ids, list(out.logprobs)
            if self.echo_text is not None:
                ids, entries = self.prompt_ids + ids, list(out.prompt_logprobs or []) + entries
            lp = self.logprobs(ids, entries)
        if self.echo_text is not None:
            text = self.echo_text + text
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": out.finish_reason}
        return self.envelope("text_completion", [choice], usage=usage(out.stats))

    def logprobs(self, token_ids: list[int], entries: list[TokenLogprob | None]) -> dict:
        """The legacy shape: parallel lists; a prompt's first token has no logprob (None)."""
        tokens, offsets, offset = [], [], self.offset
        for t in token_ids:
            tokens.append(self.texts(t))
            offsets.append(offset)
            offset += len(tokens[-1])
        return {"tokens": tokens,
                "token_logprobs": [e.logprob if e else None for e in entries],
                "top_logprobs": [{self.texts(t): lp for t, lp in e.top} if e else None for e in entries],
                "text_offset": offsets}
