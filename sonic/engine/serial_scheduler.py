"""The engine loop for runners the batch scheduler cannot drive: one request at a time, through the
runner's own `generate`.

A tensor-parallel engine is one: rank 0 drives its workers only through `TPRunner.generate`, and the
ranks exchange the chosen token, never the logits, so there is no batched forward to run and nothing
to sample on the host. This loop keeps the batch scheduler's contract and bookkeeping (submit and
abort from any thread, events through each request's `emit`, the queue timeout, the metrics gauges):
every iteration takes in new requests, drops aborted ones, expires those that waited too long, then
pulls one token of the running request, so a disconnect or a stop string ends it within one token.
Ending a request closes the runner's generator, which tells the workers to stop with it.
"""
from __future__ import annotations

import logging
from typing import Callable

from sonic.engine.generate import GenerationStats
from sonic.engine.requests import Failed, Request
from sonic.engine.scheduler import Scheduler, Sequence
from sonic.errors import SonicError

log = logging.getLogger("sonic.scheduler")

NO_LOGITS = ("logprobs are not available with --tp: the ranks exchange only the chosen token, not the "
             "logits; drop logprobs, or serve the model without --tp")


def needs_serial(runner) -> bool:
    """A runner with no local model to batch (a tensor-parallel rank 0) is served one request at a time."""
    return getattr(runner, "model", None) is None


class SerialScheduler(Scheduler):
    def __init__(self, engine, tokenizer, *, queue_timeout: float = 60.0,
                 on_finish: Callable[[Request, GenerationStats, str], None] | None = None):
        super().__init__(engine.runner, tokenizer, engine.eos_ids, queue_timeout=queue_timeout,
                         on_finish=on_finish)
        self.current: Sequence | None = None
        self.path = type(engine.runner).__name__  # the log line already says "up to 1 concurrent"

    @property
    def num_running(self) -> int:
        return int(self.current is not None)

    def step(self):
        self._take_inbox()
        self._drop_aborted()
        if self.current is None and self.waiting:
            self._start(self.waiting.popleft())
        self._expire_waiting()
        if self.current is not None:
            self._guarded([self.current], self._next_token, self.current)

    def _start(self, request: Request):
        if request.logprobs is not None or request.prompt_logprobs is not None:
            return self._refuse(request, NO_LOGITS)
        # Its sampling generator goes unused (the runner seeds its own draws), but a bad seed fails here.
        seq = self._new_sequence(request, "cpu")
        if seq is None:
            return
        # A generator: nothing reaches the workers before its first token is asked for.
        seq.tokens = self.runner.generate(request.prompt_ids, request.max_tokens, request.sampling)
        self.current = seq
        if request.max_tokens == 0:  # scoring without logprobs: nothing to run
            self._finish(seq, "length")

    def _next_token(self, seq: Sequence):
        token = next(seq.tokens, None)
        if token is None:  # the runner gave all it was asked for
            return self._finish(seq, "length")
        self._emit(seq, token)

    def _failure(self, error: Exception) -> Failed:
        stopped = getattr(self.runner, "failed", None)  # the workers are gone: no request can run any more
        return Failed(503, stopped) if stopped else super()._failure(error)

    def _release(self, seq: Sequence):
        if self.current is seq:
            self.current = None
        try:
            seq.tokens.close()  # a request ended early: the workers hear it before their next step
        except SonicError as e:  # the workers are gone; the next request reports it
            log.warning("%s", e)

    def _sequences(self) -> list[Sequence]:
        return [self.current] if self.current is not None else []
