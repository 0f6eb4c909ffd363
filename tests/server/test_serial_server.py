"""The serial engine loop behind `sonic serve --tp`, on a runner that has only `generate` (as a
tensor-parallel rank 0 does) but runs in this process: requests wait their turn, the queue timeout
holds, a client that leaves closes the runner's generator, and a runner that stopped for good turns
/health and new requests into 503s."""
import threading
import time

import pytest

from live_server import metric, post, request, sse_events
from sonic.engine.generate import Engine
from sonic.errors import SonicError

DELAY_S = 0.05
STOPPED = "tensor parallelism stopped: rank 1 exited (exit code -9); start sonic again"


class GenerateOnly:
    """No `model` to batch, only `generate`: optionally slowed down, and it notes how many tokens each
    run had handed out when it was closed (the scheduler closes every run it ends)."""

    def __init__(self, runner):
        self.runner, self.delay_s = runner, 0.0
        self.failed: str | None = None  # as TPRunner's, once its workers are gone
        self.fail_after: int | None = None  # tokens until a worker "dies"
        self.ended: list[int] = []

    def generate(self, prompt_ids, max_tokens, sampling):
        given = 0
        try:
            for token in self.runner.generate(prompt_ids, max_tokens, sampling):
                if given == self.fail_after:
                    self.failed = STOPPED
                    raise SonicError(STOPPED)
                time.sleep(self.delay_s)
                given += 1
                yield token
        finally:
            self.ended.append(given)


@pytest.fixture(scope="module")
def serial_engine(tiny_chat_model_dir):
    engine = Engine.load(str(tiny_chat_model_dir))
    engine.runner = GenerateOnly(engine.runner)
    return engine


@pytest.fixture
def serial(make_server, serial_engine):
    runner = serial_engine.runner
    runner.delay_s, runner.failed, runner.fail_after = 0.0, None, None
    return make_server(load_engine=lambda: serial_engine, queue_timeout=0.5)


def complete(live, **body):
    return post(live.url, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
                                              **body})


def test_greedy_text_equals_the_batching_server(serial, server):
    got, want = complete(serial), complete(server)
    assert got[0] == want[0] == 200
    assert got[1]["choices"][0]["text"] == want[1]["choices"][0]["text"]
    assert got[1]["usage"] == want[1]["usage"]


def test_a_waiting_request_times_out_and_a_leaving_client_closes_the_run(serial, serial_engine):
    runner = serial_engine.runner
    runner.delay_s = DELAY_S
    started, events = threading.Event(), []
    body = {"prompt": "Tell me everything", "max_tokens": 200, "temperature": 0, "stream": True}

    def leaves_after_a_while():  # reads 2 s of tokens, then hangs up
        events.extend(sse_events(serial.url, "/v1/completions", body, stop_after=40, on_event=lambda _: started.set()))

    reader = threading.Thread(target=leaves_after_a_while)
    reader.start()
    assert started.wait(30)
    status, waited = complete(serial)  # behind the running one, longer than the queue timeout
    assert status == 503 and "waited 0.5 s" in waited["error"]["message"]
    reader.join(60)
    assert len(events) == 40
    deadline = time.monotonic() + 10
    while metric(serial.url, "sonic_num_requests_running"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert runner.ended and runner.ended[-1] < 200  # closed mid-run, as TPRunner needs to stop its workers
    runner.delay_s = 0.0
    assert complete(serial)[0] == 200 and runner.ended[-1] == 8


def test_echo_without_logprobs_runs_nothing(serial, serial_engine):
    before = len(serial_engine.runner.ended)
    status, body = complete(serial, max_tokens=0, echo=True)
    assert status == 200 and body["choices"][0]["text"] == "Once upon a time"
    assert body["usage"]["completion_tokens"] == 0 and len(serial_engine.runner.ended) == before


def test_a_runner_that_stops_mid_request_turns_health_and_requests_into_503(serial, serial_engine):
    assert request(serial.url, "GET", "/health")[0] == 200
    serial_engine.runner.fail_after = 3
    status, body = complete(serial)
    assert status == 503 and body["error"]["message"] == STOPPED
    status, health = request(serial.url, "GET", "/health")
    assert status == 503 and health == {"status": "error", "message": STOPPED}
    status, body = complete(serial)
    assert status == 503 and body["error"]["message"] == STOPPED
