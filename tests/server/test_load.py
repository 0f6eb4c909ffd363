"""Many clients at once, some hanging up early: streams stay well-formed and the server recovers."""
import threading
import time

from live_server import metric, post, sse_events

CLIENTS = 32
LEAVE_AFTER = 3   # events a leaving client reads before it hangs up


def leaves_early(i: int) -> bool:
    return i % 4 == 3


def check_stream(events, max_tokens: int):
    """The OpenAI stream contract: one id, role first, exactly one finish_reason, usage, then [DONE]."""
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [chunks[-2]] and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and 0 < usage["completion_tokens"] <= max_tokens
    if finals[0]["choices"][0]["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens


def test_concurrent_streams_with_early_disconnects(server):
    aborted_before = metric(server.url, "sonic_requests_total", finish_reason="abort")
    finished_before = sum(metric(server.url, "sonic_requests_total", finish_reason=r) for r in ("stop", "length"))
    results = [None] * CLIENTS
    errors = []

    def client(i):
        # A client that leaves asks for far more than it reads, so only an abort can end it quickly.
        body = {"model": server.model, "messages": [{"role": "user", "content": f"Request {i}: tell me a story"}],
                "max_tokens": 400 if leaves_early(i) else 8, "temperature": 0.8, "seed": i, "stream": True,
                "stream_options": {"include_usage": True}}
        try:
            results[i] = sse_events(server.url, "/v1/chat/completions", body,
                                    stop_after=LEAVE_AFTER if leaves_early(i) else None)
        except Exception as e:  # noqa: BLE001 - reported below with the client's number
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for i, events in enumerate(results):
        if leaves_early(i):
            assert len(events) == LEAVE_AFTER
        else:
            check_stream(events, 8)

    deadline = time.monotonic() + 60
    while (metric(server.url, "sonic_num_requests_running"), metric(server.url, "sonic_num_requests_waiting")) != (0, 0):
        assert time.monotonic() < deadline, "running/waiting gauges did not return to 0"
        time.sleep(0.05)
    leavers = sum(map(leaves_early, range(CLIENTS)))
    assert metric(server.url, "sonic_requests_total", finish_reason="abort") - aborted_before == leavers
    finished = sum(metric(server.url, "sonic_requests_total", finish_reason=r) for r in ("stop", "length"))
    assert finished - finished_before == CLIENTS - leavers
    assert not server.state.scheduler.runner.decoding and server.state.scheduler.runner.filling is None

    status, body = post(server.url, "/v1/completions", {"prompt": "Still there?", "max_tokens": 4})
    assert status == 200 and body["usage"]["completion_tokens"] == 4


def test_non_streaming_client_that_hangs_up_is_aborted(make_server, monkeypatch):
    import json
    import socket
    from urllib.parse import urlparse

    live = make_server()
    runner = live.state.scheduler.runner
    real = runner.decode
    monkeypatch.setattr(runner, "decode", lambda tokens: (time.sleep(0.02), real(tokens))[1])
    body = json.dumps({"prompt": "Take your time", "max_tokens": 400}).encode()
    u = urlparse(live.url)
    with socket.create_connection((u.hostname, u.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while live.state.scheduler.num_running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # Without the abort it would run all 400 steps (8 s at least) and end as "length".
    deadline = time.monotonic() + 60
    while live.state.scheduler.num_running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert metric(live.url, "sonic_requests_total", finish_reason="abort") == 1
    assert metric(live.url, "sonic_requests_total", finish_reason="length") == 0
