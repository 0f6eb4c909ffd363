"""The engine loop, driven step by step: batching, chunked prefill, seeds, logprobs, aborts, failures."""
import threading

import pytest
import torch

from sonic.engine.batch_runner import BatchRunner
from sonic.engine.generate import Engine
from sonic.engine.requests import Delta, Failed, Finished, PromptLogprobs, Request
from sonic.engine.sampling import SamplingParams
from sonic.engine.scheduler import Scheduler

PROMPTS = ["Hello there", "The capital of France is", "Once upon a time, in a land far away,", "1 2 3"]


@pytest.fixture(scope="module")
def engine(tiny_chat_engine):
    return tiny_chat_engine


def make_scheduler(engine, max_batch=4, **kwargs):
    runner = BatchRunner(engine.runner.model, max_batch, engine.config.max_position_embeddings)
    return Scheduler(runner, engine.tokenizer, engine.eos_ids, **kwargs)


def request(engine, prompt, max_tokens=8, **kwargs):
    ids = prompt if isinstance(prompt, list) else engine.tokenizer.encode(prompt)
    events = []
    return Request(ids, max_tokens, events.append, **kwargs), events


def run_until_done(scheduler, requests, limit=10_000):
    for _ in range(limit):
        if all(any(isinstance(e, (Finished, Failed)) for e in ev) for _, ev in requests):
            return
        scheduler.step()
    raise AssertionError("requests did not finish")


def tokens(events):
    return [e.token_id for e in events if isinstance(e, Delta)]


def text(events):
    return "".join(e.text for e in events if isinstance(e, (Delta, Finished)))


def test_batched_greedy_equals_batch_one_engine(engine):
    scheduler = make_scheduler(engine)
    reqs = [request(engine, p, max_tokens=10) for p in PROMPTS]
    for r, _ in reqs:
        scheduler.submit(r)
    run_until_done(scheduler, reqs)
    for prompt, (_, events) in zip(PROMPTS, reqs):
        want = "".join(engine.stream(engine.tokenizer.encode(prompt), 10))
        assert text(events) == want
        assert tokens(events) == engine.last_stats.token_ids
        assert events[-1].stats.output_tokens == 10 and events[-1].reason == "length"
    assert scheduler.num_running == 0 and scheduler.num_waiting == 0


def test_seed_gives_same_tokens_whatever_runs_beside(engine):
    sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    alone = make_scheduler(engine)
    solo = request(engine, "Tell me", max_tokens=12, sampling=sampling)
    alone.submit(solo[0])
    run_until_done(alone, [solo])

    crowded = make_scheduler(engine)
    reqs = [request(engine, p, max_tokens=12, sampling=SamplingParams(temperature=1.0, seed=i))
            for i, p in enumerate(PROMPTS[:2])]
    same = request(engine, "Tell me", max_tokens=12, sampling=sampling)
    other_seed = request(engine, "Tell me", max_tokens=12, sampling=SamplingParams(temperature=1.0, top_p=0.9, seed=8))
    for r, _ in reqs + [same, other_seed]:
        crowded.submit(r)
    run_until_done(crowded, reqs + [same, other_seed])
    assert tokens(same[1]) == tokens(solo[1])
    assert tokens(other_seed[1]) != tokens(solo[1])


def test_long_prefill_does_not_stall_a_running_stream(engine):
    scheduler = make_scheduler(engine, prefill_chunk=8)
    first, first_events = request(engine, "Hello", max_tokens=40)
    scheduler.submit(first)
    scheduler.step()
    assert tokens(first_events)  # decoding
    long_prompt = list(range(1000, 1100))  # 100 tokens: 13 chunks of 8
    second, second_events = request(engine, long_prompt, max_tokens=4)
    scheduler.submit(second)
    before = len(tokens(first_events))
    while not tokens(second_events):
        scheduler.step()
    assert len(tokens(first_events)) - before >= 12  # a decode step after every chunk


def test_stop_string_ends_the_sequence_and_frees_its_row(engine):
    full = "".join(engine.stream(engine.tokenizer.encode("Hello there"), 20))
    stop = full[4:7]
    scheduler = make_scheduler(engine)
    r, events = request(engine, "Hello there", max_tokens=20, stop=(stop,))
    scheduler.submit(r)
    run_until_done(scheduler, [(r, events)])
    assert text(events) == full[:full.index(stop)] and events[-1].reason == "stop"
    assert not scheduler.runner.decoding


def test_abort_frees_the_slot_at_once(engine):
    scheduler = make_scheduler(engine, max_batch=1)
    running, running_events = request(engine, "Hello", max_tokens=100)
    queued, queued_events = request(engine, "Hi", max_tokens=3)
    scheduler.submit(running)
    scheduler.submit(queued)
    scheduler.step()
    assert scheduler.num_running == 1 and scheduler.num_waiting == 1
    scheduler.abort(running)
    scheduler.step()
    assert [s.owner.request for s in scheduler.runner.decoding] == [queued]  # it took the freed row
    run_until_done(scheduler, [(queued, queued_events)])
    assert len(tokens(running_events)) < 100 and not any(isinstance(e, Finished) for e in running_events)


def test_waiting_too_long_gives_503(engine):
    scheduler = make_scheduler(engine, max_batch=1, queue_timeout=0.0)
    busy = request(engine, "Hello", max_tokens=5)
    late = request(engine, "Hi", max_tokens=5)
    scheduler.submit(busy[0])
    scheduler.step()
    scheduler.submit(late[0])
    scheduler.step()
    assert isinstance(late[1][-1], Failed) and late[1][-1].status == 503
    run_until_done(scheduler, [busy])
    assert isinstance(busy[1][-1], Finished)


def test_engine_failure_fails_the_batch_and_the_loop_goes_on(engine, monkeypatch):
    scheduler = make_scheduler(engine)
    reqs = [request(engine, p, max_tokens=6) for p in PROMPTS[:2]]
    for r, _ in reqs:
        scheduler.submit(r)
    scheduler.step()
    scheduler.step()
    real = scheduler.runner.decode
    monkeypatch.setattr(scheduler.runner, "decode", lambda tokens: (_ for _ in ()).throw(RuntimeError("boom")))
    scheduler.step()
    for _, events in reqs:
        assert isinstance(events[-1], Failed) and events[-1].status == 500 and "boom" in events[-1].message
    monkeypatch.setattr(scheduler.runner, "decode", real)
    after = request(engine, PROMPTS[0], max_tokens=6)
    scheduler.submit(after[0])
    run_until_done(scheduler, [after])
    assert text(after[1]) == "".join(engine.stream(engine.tokenizer.encode(PROMPTS[0]), 6))


def test_prompt_logprobs_are_teacher_forced(engine):
    from sonic.engine.runner_ref import ReferenceRunner
    ids = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog, then naps")
    scheduler = make_scheduler(engine, prefill_chunk=4)  # several chunks: rows cross chunk edges
    r, events = request(engine, ids, max_tokens=0, prompt_logprobs=3)
    scheduler.submit(r)
    run_until_done(scheduler, [(r, events)])
    entries = next(e for e in events if isinstance(e, PromptLogprobs)).entries
    logp = torch.log_softmax(ReferenceRunner(engine.runner.model).forward_all(ids), -1)
    assert entries[0] is None and len(entries) == len(ids)
    for pos, entry in enumerate(entries[1:], start=1):
        assert entry.token_id == ids[pos]
        assert entry.logprob == pytest.approx(float(logp[pos - 1, ids[pos]]), abs=1e-4)
        assert [t for t, _ in entry.top] == logp[pos - 1].topk(3).indices.tolist()
    assert events[-1].stats.output_tokens == 0


def test_thread_serves_and_stops(engine):
    scheduler = make_scheduler(engine).start()
    done = threading.Event()
    events = []
    r = Request(engine.tokenizer.encode("Hello"), 5,
                lambda e: (events.append(e), isinstance(e, Finished) and done.set()))
    scheduler.submit(r)
    assert done.wait(30)
    pending = Request(engine.tokenizer.encode("Hi"), 5, events.append)
    scheduler.stop()
    scheduler.submit(pending)  # after the loop ended: nobody answers, and nothing breaks
    assert tokens(events) and isinstance(events[-1], Finished)
