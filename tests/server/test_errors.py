"""Bad input and failures: the right status, the OpenAI error shape, and the server keeps serving."""
import json
import threading
import time

import pytest

from live_server import SERVE_EXTRA, metric, post, request

openai = pytest.importorskip("openai", reason=SERVE_EXTRA)

GOOD = {"prompt": "Hello", "max_tokens": 2}


def assert_error(status, body, want_status, *words, param=None):
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    for word in words:
        assert word in body["error"]["message"], body
    if param is not None:
        assert body["error"]["param"] == param, body


def assert_still_serving(url):
    status, body = post(url, "/v1/completions", GOOD)
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_context_overflow_names_the_numbers(server):
    status, body = post(server.url, "/v1/completions", {"prompt": "Hello there", "max_tokens": 600})
    assert_error(status, body, 400, "prompt (2 tokens)", "max tokens (600)", "context length of 512", "max_tokens")
    assert body["error"]["code"] == "context_length_exceeded"
    long_chat = {"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 4}
    assert_error(*post(server.url, "/v1/chat/completions", long_chat), 400, "context length of 512")
    assert_still_serving(server.url)


@pytest.mark.parametrize("field, value, words", [
    ("temperature", -1, ["temperature"]),
    ("temperature", 3.5, ["temperature"]),
    ("top_p", 0, ["top_p"]),
    ("top_k", -7, ["top_k"]),
    ("n", 2, ["n=2", "n=1"]),
    ("logprobs", 99, ["logprobs"]),
    ("seed", 2 ** 70, ["seed"]),
    ("stop", [""], ["stop"]),
    ("max_tokens", -1, ["max_tokens"]),
    ("max_tokens", 0, ["max_tokens 0"]),
])
def test_bad_parameters_are_400_naming_the_field(server, field, value, words):
    status, body = post(server.url, "/v1/completions", {**GOOD, field: value})
    assert_error(status, body, 400, *words)


def test_bad_parameter_through_the_official_client(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}], n=3)
    assert e.value.status_code == 400 and "n=3" in e.value.message
    assert_still_serving(server.url)


def test_wrong_model_is_404(server):
    status, body = post(server.url, "/v1/completions", {**GOOD, "model": "gpt-17"})
    assert_error(status, body, 404, "gpt-17", server.model, param="model")


def test_unknown_route_is_404_in_shape(server):
    assert_error(*request(server.url, "GET", "/v1/engines"), 404, "/v1/engines")


def test_api_key(make_server):
    live = make_server(api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-not-bearer"}):
        assert_error(*post(live.url, "/v1/completions", GOOD, headers), 401, "API key")
    with pytest.raises(openai.AuthenticationError):
        live.openai(api_key="wrong").models.list()
    assert live.openai(api_key="s3cret").models.list().data[0].id == live.model
    assert request(live.url, "GET", "/health")[0] == 200  # probes need no key
    status, body = post(live.url, "/v1/completions", GOOD, {"Authorization": "Bearer s3cret"})
    assert status == 200


def test_too_large_body_is_413(server):
    big = {"prompt": "x" * (2 << 20), "max_tokens": 1}
    assert_error(*post(server.url, "/v1/completions", big), 413, "larger than 1048576 bytes")
    chunked = json.dumps(big).encode()
    # Without a Content-Length (chunked transfer) the limit is enforced while reading.
    status, body = request(server.url, "POST", "/v1/completions", iter([chunked[:1000], chunked[1000:]]))
    assert_error(status, body, 413, "larger than 1048576 bytes")
    assert_still_serving(server.url)


def test_engine_failure_is_500_and_the_server_keeps_serving(make_server, monkeypatch):
    live = make_server()
    runner = live.state.scheduler.runner
    real = runner.decode
    calls = []

    def failing_once(tokens):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated device fault")
        return real(tokens)

    monkeypatch.setattr(runner, "decode", failing_once)
    status, body = post(live.url, "/v1/completions", {**GOOD, "max_tokens": 5})
    assert_error(status, body, 500, "simulated device fault", "still running")
    assert_still_serving(live.url)
    assert metric(live.url, "sonic_requests_total", finish_reason="error") == 1


def test_queue_timeout_is_503(make_server, monkeypatch):
    live = make_server(max_concurrency=1, queue_timeout=0.3)
    runner = live.state.scheduler.runner
    real = runner.decode
    monkeypatch.setattr(runner, "decode", lambda tokens: (time.sleep(0.05), real(tokens))[1])
    results = []
    busy = threading.Thread(target=lambda: results.append(post(live.url, "/v1/completions", {**GOOD, "max_tokens": 40})))
    busy.start()
    deadline = time.monotonic() + 30
    while live.state.scheduler.num_running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_error(*post(live.url, "/v1/completions", GOOD), 503, "busy", "try again")
    busy.join(60)
    assert results[0][0] == 200 and results[0][1]["usage"]["completion_tokens"] == 40


def test_health_is_503_while_loading(make_server, tiny_chat_engine):
    loaded = threading.Event()
    live = make_server(wait_ready=False, load_engine=lambda: (loaded.wait(30), tiny_chat_engine)[1])
    deadline = time.monotonic() + 30
    while not live.server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert request(live.url, "GET", "/health") == (503, {"status": "loading", "message": None})
    assert_error(*post(live.url, "/v1/completions", GOOD), 503, "loading")
    loaded.set()
    while request(live.url, "GET", "/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert_still_serving(live.url)


def test_draining_refuses_new_requests(make_server):
    live = make_server()
    live.state.draining = True
    assert_error(*post(live.url, "/v1/completions", GOOD), 503, "shutting down")
    assert request(live.url, "GET", "/health")[0] == 503


MALFORMED = [
    b"",                                                   # no body
    b"{",                                                  # broken JSON
    b'{"prompt": "caf\xe9"}',                              # not UTF-8
    b"\xff\xfe\x00\x00garbage",                            # not even text
    b"[]",                                                 # not an object
    b'"a string"',
    b'{"prompt": "hi", "top_p": NaN}',                     # JSON extension Python accepts
    b"[" * 100_000,                                        # nesting deep enough to break a recursive parser
    {},                                                    # no prompt
    {"prompt": 123},
    {"prompt": []},
    {"prompt": [[1, 2], [3, 4]]},                          # several prompts
    {"prompt": [10 ** 12]},                                # token id outside the vocabulary
    {"prompt": [-1]},
    {"prompt": "\ud800 lone surrogate"},
    {"prompt": "hi", "max_tokens": 1e30},
    {"prompt": "hi", "max_tokens": "ten"},
    {"prompt": "hi", "temperature": "hot"},
    {"prompt": "hi", "top_k": 10 ** 20},
    {"prompt": "hi", "stop": [1, 2]},
    {"prompt": "hi", "stream_options": "yes"},
    {"prompt": "hi", "logprobs": -3, "echo": "maybe"},
]
MALFORMED_CHAT = [
    {"messages": []},
    {"messages": "hello"},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": [{"role": "user", "content": None}], "max_tokens": 1},
    {"messages": [{"role": "user", "content": ""}], "max_tokens": 1},
    {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10 ** 40},
    {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
]


def test_malformed_bodies_never_break_the_server(server):
    count = 0
    for path, bodies in (("/v1/completions", MALFORMED), ("/v1/chat/completions", MALFORMED_CHAT)):
        for body in bodies:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            status, reply = post(server.url, path, data)
            assert status < 500, (body[:80] if isinstance(body, bytes) else body, reply)
            if status != 200:
                assert_error(status, reply, status)
            count += 1
    assert count >= 20
    assert_still_serving(server.url)
    assert request(server.url, "GET", "/health")[0] == 200
