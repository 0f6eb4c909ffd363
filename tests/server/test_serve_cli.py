"""`sonic serve` as a process: flag errors in one line, and a graceful drain on SIGTERM."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from live_server import request, sse_events
from sonic.cli import main

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--max-concurrency", "0"], ["--max-concurrency", "at least 1"]),
    (["--max-model-len", "-4"], ["--max-model-len"]),
    (["--port", "70000"], ["--port 70000"]),
    (["--queue-timeout", "0"], ["--queue-timeout"]),
    (["--model", "/no/such/model"], ["model path not found"]),
    (["--runner", "graph"], ["--runner graph", "--max-concurrency 1"]),
])
def test_bad_flags(capsys, flags, words):
    one_line_error(capsys, ["serve", *flags], *words)


def test_busy_port(capsys, tiny_chat_model_dir):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        one_line_error(capsys, ["serve", "--model", str(tiny_chat_model_dir), "--port", str(port)],
                       "cannot listen", str(port), "--port")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if request(url, "GET", "/health", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def test_sigterm_lets_in_flight_requests_finish(tiny_chat_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "sonic", "serve", "--model", str(tiny_chat_model_dir),
                             "--port", str(port), "--shutdown-timeout", "60"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        wait_healthy(url, proc)
        started, events = threading.Event(), []

        def stream():
            body = {"prompt": "Tell me everything", "max_tokens": 300, "temperature": 0, "stream": True}
            for event in sse_events(url, "/v1/completions", body, on_event=lambda _: started.set()):
                events.append(event)

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not refused(port):  # new connections are turned away while the stream drains
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reader.join(120)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 0 and "Traceback" not in err, err
    assert events[-1] == "[DONE]"
    finals = [e for e in events[:-1] if e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["timings"]["output_tokens"] == 300, json.dumps(events[-3:])


def test_a_model_that_fails_to_load_ends_the_server_with_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "sonic", "serve", "--model", str(broken), "--port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sonic: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "broken.gguf" in errors[0]
