"""The engine loop: requests queue up, then prefill in chunks between decode steps of the running batch.

It runs in one thread of its own; callers `submit` and `abort` from any thread and hear back through
each request's `emit`. Every iteration it drops aborted requests (freeing their cache rows at once),
expires requests that waited too long for a slot, admits the next waiting request when a row is
free, runs one prefill chunk, then one decode step for every decoding sequence. So a long prompt
delays a running stream by one chunk per token at most, never by its whole prefill.

Each sequence samples with its own seeded generator, so a seed gives the same text whatever else
runs; see batch_runner.py for how rows are batched and why greedy tokens match batch-1 decoding.

With a speculator (`sonic serve --speculative`), the runner holds one sequence at a time and each
decode step of a request without logprobs is a speculative step (spec_slot.py): several tokens
verified in one step, emitted one by one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Callable

from sonic.engine.batch_runner import BatchRunner
from sonic.engine.generate import GenerationStats
from sonic.engine.requests import Delta, Failed, Finished, PromptLogprobs, Request, logprobs_of
from sonic.engine.sampling import sample
from sonic.engine.spec_slot import SpecSession
from sonic.spec.loop import SpecStats
from sonic.text_stream import TextStream

log = logging.getLogger("sonic.scheduler")

PREFILL_CHUNK = 64        # prompt tokens per iteration while other sequences are decoding
SOLO_PREFILL = 2048       # with nothing decoding there is nothing to stall: take the prompt in big bites


class Sequence:
    """A request the engine is working on: its cache slot, text, sampler and statistics."""

    def __init__(self, request: Request, slot, tokenizer, device):
        self.request, self.slot = request, slot
        self.text = TextStream(tokenizer, request.stop)
        sampling = request.sampling
        self.generator = None if sampling.greedy else sampling.generator(device)
        self.stats = GenerationStats(prompt_tokens=len(request.prompt_ids), finish_reason="length")
        self.prefilled = 0
        self.next_token: int | None = None
        self.prompt_logprobs: list = [None]
        self.ended = False
        self.spec: SpecSession | None = None


class Scheduler:
    def __init__(self, runner: BatchRunner, tokenizer, eos_ids, *, queue_timeout: float = 60.0,
                 prefill_chunk: int = PREFILL_CHUNK,
                 on_finish: Callable[[Request, GenerationStats, str], None] | None = None,
                 speculator=None):
        if speculator is not None and runner.max_batch != 1:
            # The proposer (a draft model's cache, the n-gram index) follows one sequence.
            raise ValueError("speculative decoding in the scheduler needs a runner of one sequence")
        self.runner, self.tokenizer, self.eos_ids = runner, tokenizer, frozenset(eos_ids)
        self.speculator = speculator  # a sonic.spec.speculator.Speculator, or None
        self.queue_timeout, self.prefill_chunk, self.on_finish = queue_timeout, prefill_chunk, on_finish
        self._inbox: deque[Request] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.waiting: deque[Request] = deque()
        self.filling: Sequence | None = None

    # ---- any thread ----
    def submit(self, request: Request):
        with self._wake:
            self._inbox.append(request)
            self._wake.notify()

    def abort(self, request: Request):
        request.aborted = True
        with self._wake:
            self._wake.notify()

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.runner.decoding) + (self.runner.filling is not None)

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self.run, name="sonic-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0):
        """End the loop; whatever is still queued or running is told the server is shutting down."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the engine thread ----
    def run(self):
        while True:
            with self._wake:
                if self._stopping:
                    break
                if not self._inbox and not self.waiting and not self.num_running:
                    self._wake.wait(timeout=1.0)
                    continue
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a bug here must cost the requests at hand, not the server
                log.exception("engine loop failed")
                self._fail_running(e)
        self._fail_everything(Failed(503, "the server is shutting down: try again later"))

    def step(self):
        """One iteration: housekeeping, one prefill chunk, one decode step."""
        self._take_inbox()
        self._drop_aborted()
        if self.runner.has_room and self.waiting:
            self._admit(self.waiting.popleft())
        self._expire_waiting()
        if self.filling is not None:
            self._guarded([self.filling], self._prefill_chunk, self.filling)
        if self.runner.decoding:
            self._guarded(None, self._decode)

    def _admit(self, request: Request):
        seq = self._new_sequence(request, self.runner.device)
        if seq is not None:
            seq.slot = self.runner.open(owner=seq)
            self.filling = seq

    def _new_sequence(self, request: Request, device) -> Sequence | None:
        """The request's sequence, or None once the request has heard why it cannot start."""
        try:
            return Sequence(request, None, self.tokenizer, device)
        except Exception as e:  # noqa: BLE001 - e.g. a seed the generator refuses
            self._refuse(request, f"cannot start this request: {e}")
            return None

    def _refuse(self, request: Request, message: str):
        """A 400 for a request that never started."""
        self._never_started(request, "error")
        _send(request, Failed(400, message))

    def _guarded(self, seqs: list[Sequence] | None, work: Callable, *args):
        """An engine failure ends the requests it touched (None: all running) with a 500; the loop goes on."""
        try:
            work(*args)
        except Exception as e:  # noqa: BLE001 - any failure of the model must not stop the server
            log.exception("engine step failed")
            self._fail_running(e, seqs)

    def _fail_running(self, error: Exception, seqs=None):
        event = self._failure(error)
        for seq in seqs or self._sequences():
            if not seq.ended:
                self._end(seq, "error")
                _send(seq.request, event)

    def _failure(self, error: Exception) -> Failed:
        return Failed(500, f"the engine failed on this request ({type(error).__name__}: {error}); "
                           "the server is still running")

    def _prefill_chunk(self, seq: Sequence):
        req = seq.request
        ids = req.prompt_ids
        want_logprobs = req.prompt_logprobs is not None
        size = self.prefill_chunk if self.runner.decoding or want_logprobs else SOLO_PREFILL
        start = seq.prefilled
        chunk = ids[start:start + size]
        logits = self.runner.prefill(seq.slot, chunk, all_logits=want_logprobs)
        seq.prefilled += len(chunk)
        if want_logprobs:
            # Row i (position start+i) predicts the prompt token at start+i+1.
            targets = ids[start + 1:start + 1 + len(chunk)]
            seq.prompt_logprobs += logprobs_of(logits[:len(targets)], targets, req.prompt_logprobs)
        if seq.prefilled < len(ids):
            return
        self.filling = None
        self.runner.activate(seq.slot)
        if want_logprobs:
            _send(req, PromptLogprobs(seq.prompt_logprobs))
        if req.max_tokens == 0:
            self._finish(seq, "length")
            return
        speculate = self.speculator is not None and req.logprobs is None
        if speculate:
            seq.stats.spec = SpecStats()
        self._accept(seq, logits[-1])
        if speculate and not seq.ended:
            # After the first token is out, so a draft model's prefill never delays it.
            seq.spec = SpecSession(self.speculator, req.prompt_ids, seq.next_token, req.max_tokens,
                                   seq.stats.spec)

    def _decode(self):
        seqs = [s.owner for s in self.runner.decoding]
        if len(seqs) == 1 and seqs[0].spec is not None:
            return self._guarded(seqs, self._spec_step, seqs[0])
        logits = self.runner.decode([s.next_token for s in seqs])
        for seq, row in zip(seqs, logits):
            self._guarded([seq], self._accept, seq, row)

    def _spec_step(self, seq: Sequence):
        req = seq.request
        tokens = seq.spec.step(self.runner, seq.slot, req.max_tokens - seq.stats.output_tokens,
                               req.sampling, seq.generator)
        if tokens is None:
            return self._accept(seq, self.runner.decode([seq.next_token])[0])
        for token in tokens:
            self._emit(seq, token)
            if seq.ended:
                return

    def _accept(self, seq: Sequence, logits):
        """Sample the next token from logits [V]; emit it, or end the sequence."""
        token = int(sample(logits[None], seq.request.sampling, seq.generator)[0])
        self._emit(seq, token, logits)

    def _emit(self, seq: Sequence, token: int, logits=None):
        """Send one chosen token (its logits [V] give logprobs), or end the sequence on it."""
        req, stats = seq.request, seq.stats
        now = time.perf_counter()
        if not stats.token_times:
            stats.ttft_s = now - req.arrival
        stats.token_times.append(now)
        stats.decode_s = now - stats.token_times[0]
        if token in self.eos_ids:
            return self._finish(seq, "stop")
        stats.output_tokens += 1
        stats.token_ids.append(token)
        lp = logprobs_of(logits[None], [token], req.logprobs)[0] if req.logprobs is not None else None
        if seq.spec is not None:
            seq.spec.context.append(token)
        # The figures as of this token (not the live object, which the engine keeps changing).
        now_stats = replace(stats, token_ids=[], token_times=[], spec=stats.spec and replace(stats.spec))
        _send(req, Delta(seq.text.add(token), token, lp, now_stats))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif stats.output_tokens >= req.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, reason: str):
        tail = seq.text.finish()
        if seq.text.stopped:
            reason = "stop"
        self._end(seq, reason)
        _send(seq.request, Finished(reason, tail, seq.stats))

    def _end(self, seq: Sequence, reason: str):
        """Free the sequence's cache row; `reason` (stop, length, abort, error) goes to on_finish."""
        seq.ended = True
        self._release(seq)
        seq.stats.finish_reason = reason
        if self.on_finish is not None:
            self.on_finish(seq.request, seq.stats, reason)

    def _release(self, seq: Sequence):
        if self.filling is seq:
            self.filling = None
        self.runner.release(seq.slot)

    def _take_inbox(self):
        with self._wake:
            self.waiting.extend(self._inbox)
            self._inbox.clear()

    def _drop_aborted(self):
        for seq in self._sequences():
            if seq.request.aborted:
                self._end(seq, "abort")
        if any(r.aborted for r in self.waiting):
            for r in self.waiting:
                if r.aborted:
                    self._never_started(r, "abort")
            self.waiting = deque(r for r in self.waiting if not r.aborted)

    def _expire_waiting(self):
        now = time.perf_counter()
        while self.waiting and now - self.waiting[0].arrival > self.queue_timeout:
            r = self.waiting.popleft()
            self._never_started(r, "timeout")
            _send(r, Failed(503, f"the server is busy: the request waited {self.queue_timeout:g} s "
                                 "for a free slot; try again later"))

    def _never_started(self, request: Request, reason: str):
        if self.on_finish is not None:
            self.on_finish(request, GenerationStats(prompt_tokens=len(request.prompt_ids)), reason)

    def _sequences(self) -> list[Sequence]:
        return [s.owner for s in self.runner.decoding] + ([self.filling] if self.filling else [])

    def _fail_everything(self, event: Failed):
        for seq in self._sequences():
            self._end(seq, "error")
            _send(seq.request, event)
        self._take_inbox()
        while self.waiting:
            request = self.waiting.popleft()
            self._never_started(request, "error")
            _send(request, event)


def _send(request: Request, event):
    """Deliver an event; a caller that can no longer listen (its loop closed) must not break the loop."""
    try:
        request.emit(event)
    except Exception:  # noqa: BLE001
        log.debug("dropped an event for request %s", request.id, exc_info=True)
