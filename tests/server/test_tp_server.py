"""`sonic serve --tp 2` on CPU, as a process: one device's greedy text, streamed or not, stop strings,
several clients served one at a time, a client that leaves mid-stream, and its workers stopped when
SIGTERM ends it. One server for the module (starting two ranks takes seconds); the last test stops it."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from live_server import metric, post, request, sse_events
from processes import children, running
from test_serve_cli import ROOT, free_port, one_line_error, wait_healthy

MESSAGES = [{"role": "user", "content": "Write one line about the sea."}]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def tp_server(tiny_chat_model_dir, tmp_path_factory):
    """(url, process, its stderr file): `sonic serve --model M --tp 2` on a free port."""
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path_factory.mktemp("tp_server") / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sonic", "serve", "--model", str(tiny_chat_model_dir),
                                 "--tp", "2", "--port", str(port)], stderr=err, stdout=subprocess.DEVNULL,
                                text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def greedy_text(engine, max_tokens: int = MAX_TOKENS, messages=MESSAGES) -> str:
    """What one device answers at temperature 0 (the single-process engine of the same model)."""
    return "".join(engine.stream(engine.text_tokenizer().encode_chat(messages), max_tokens))


def chat(url: str, messages=MESSAGES, **extra):
    return post(url, "/v1/chat/completions", {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0,
                                              **extra})


def test_chat_answer_is_one_devices_greedy_text(tp_server, tiny_chat_engine):
    url, _, _ = tp_server
    status, body = chat(url)
    assert status == 200, body
    expected = greedy_text(tiny_chat_engine)
    assert expected and body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == MAX_TOKENS
    assert body["timings"]["decode_tok_s"] > 0
    status, models = request(url, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["max_model_len"] == 512


def test_streamed_chunks_add_up_to_the_same_text(tp_server, tiny_chat_engine):
    url, _, _ = tp_server
    events = sse_events(url, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": MAX_TOKENS,
                                                      "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) > 2 and [c["choices"][0]["finish_reason"] for c in chunks].count("length") == 1
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == greedy_text(tiny_chat_engine)


def test_stop_string_cuts_the_answer(tp_server, tiny_chat_engine):
    url, _, _ = tp_server
    full = greedy_text(tiny_chat_engine)
    stop = full[5:8]
    status, body = chat(url, stop=[stop])
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == full[:full.index(stop)]


def test_clients_at_once_are_served_one_at_a_time(tp_server, tiny_chat_engine):
    url, _, _ = tp_server
    chats = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(3)]
    answers = [None] * len(chats)

    def ask(i):
        answers[i] = chat(url, chats[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(chats))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for messages, (status, body) in zip(chats, answers):
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == greedy_text(tiny_chat_engine, messages=messages)


def test_a_client_leaving_mid_stream_stops_the_ranks_in_step(tp_server, tiny_chat_engine):
    url, _, _ = tp_server
    aborted = metric(url, "sonic_requests_total", finish_reason="abort")
    generated = metric(url, "sonic_generation_tokens_total")
    body = {"messages": MESSAGES, "max_tokens": 400, "temperature": 0, "stream": True}
    assert len(sse_events(url, "/v1/chat/completions", body, stop_after=3)) == 3
    deadline = time.monotonic() + 30
    while metric(url, "sonic_requests_total", finish_reason="abort") == aborted:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.05)
    assert metric(url, "sonic_num_requests_running") == 0
    assert metric(url, "sonic_generation_tokens_total") - generated < 400  # it ended early
    # Rank 1 heard the stop: the next request decodes from a clean start on both ranks.
    status, answer = chat(url)
    assert status == 200 and answer["choices"][0]["message"]["content"] == greedy_text(tiny_chat_engine)


def test_logprobs_are_refused_in_one_line(tp_server):
    url, _, _ = tp_server
    status, body = post(url, "/v1/completions", {"prompt": "Once", "max_tokens": 4, "logprobs": 2})
    assert status == 400 and "logprobs are not available with --tp" in body["error"]["message"]
    status, body = chat(url, logprobs=True)
    assert status == 400 and "serve the model without --tp" in body["error"]["message"]


def test_metrics_and_playground(tp_server):
    url, _, _ = tp_server
    assert metric(url, "sonic_time_to_first_token_seconds_count") > 0
    assert metric(url, "sonic_num_requests_waiting") == 0
    status, page = request(url, "GET", "/")
    assert status == 200 and "<html" in page.lower()


def test_sigterm_stops_the_server_and_its_workers(tp_server):
    """The last test on the shared server, which it stops."""
    url, proc, log = tp_server
    workers = children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    err = log.read_text()
    assert "Traceback" not in err and "leaked" not in err, err
    deadline = time.monotonic() + 10
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(p) for p in workers)


@pytest.mark.parametrize("flags, words", [
    (["--tp", "2", "--max-concurrency", "4"], ["--tp 2 serves one request at a time", "--max-concurrency 1"]),
    (["--tp", "2", "--speculative", "ngram"], ["--speculative is not supported yet with --tp"]),
    (["--tp", "3"], ["4 attention heads do not divide by 3", "use one of --tp 1, 2, 4"]),
    (["--tp", "2", "--runner", "mono"], ["--runner mono is not supported with --tp", "use ref"]),
    (["--tp", "2", "--tp-allreduce", "one-shot"], ["--tp-allreduce one-shot runs on GPUs", "--device cuda"]),
])
def test_bad_tp_combinations(capsys, tiny_chat_model_dir, flags, words):
    one_line_error(capsys, ["serve", "--model", str(tiny_chat_model_dir), "--port", str(free_port()), *flags],
                   *words)
