"""Live servers on free ports (uvicorn in a thread of the test process), their fixtures (made available
to every test by conftest.py) and small HTTP helpers for tests/server."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, replace
from urllib.parse import urlparse

import pytest

from sonic.engine.generate import Engine
from sonic.server.state import ServerState, ServeSettings

SERVE_EXTRA = "the server tests need the serve extra: pip install -e '.[test]'"


@dataclass
class LiveServer:
    url: str
    state: ServerState
    server: object
    thread: threading.Thread

    @property
    def model(self) -> str:
        return self.state.model_name

    def openai(self, **kwargs):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", "unused"),
                             max_retries=0, timeout=60, **kwargs)


def start_server(load_engine, model_path, settings: ServeSettings = ServeSettings(),
                 wait_ready: bool = True) -> LiveServer:
    uvicorn = pytest.importorskip("uvicorn", reason=SERVE_EXTRA)

    from sonic.server.app import DrainingServer, create_app
    from sonic.server.cli import bind

    sock = bind("127.0.0.1", 0)
    state = ServerState(settings, load_engine, str(model_path))
    config = uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=5)
    server = DrainingServer(config, state)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", state, server, thread)
    deadline = time.monotonic() + 60
    while wait_ready and not (server.started and state.ready):
        assert time.monotonic() < deadline and not state.load_error, state.load_error or "server did not start"
        time.sleep(0.02)
    return live


def stop_server(live: LiveServer):
    live.server.should_exit = True
    live.thread.join(15)


@pytest.fixture(scope="session")
def tiny_chat_engine(tiny_chat_model_dir):
    return Engine.load(str(tiny_chat_model_dir))


@pytest.fixture(scope="session")
def server(tiny_chat_engine, tiny_chat_model_dir):
    """The shared server: the tiny random model with the default model's tokenizer, 8 concurrent slots."""
    live = start_server(lambda: tiny_chat_engine, tiny_chat_model_dir, ServeSettings(max_body_bytes=1 << 20))
    yield live
    stop_server(live)


@pytest.fixture
def make_server(tiny_chat_engine, tiny_chat_model_dir):
    """Extra servers with other settings, on the same engine; stopped after the test."""
    started = []

    def make(wait_ready=True, load_engine=None, **settings):
        live = start_server(load_engine or (lambda: tiny_chat_engine), tiny_chat_model_dir,
                            replace(ServeSettings(), **settings), wait_ready)
        started.append(live)
        return live

    yield make
    for live in started:
        stop_server(live)


@pytest.fixture
def client(server):
    pytest.importorskip("openai", reason=SERVE_EXTRA)
    return server.openai()


# ---- raw HTTP, for what the official client will not send ----
def request(url: str, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
    """(status, parsed JSON or text) of one request; `body` is a dict (sent as JSON), bytes, or an
    iterator of bytes (sent chunked)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    # An iterator is sent chunked (no Content-Length), as streaming uploads are.
    conn.request(method, path, body=data, headers=hdrs, encode_chunked=not isinstance(data, (bytes, type(None))))
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


def post(url: str, path: str, body=None, headers: dict | None = None):
    return request(url, "POST", path, body, headers)


def sse_events(url: str, path: str, body: dict, stop_after: int | None = None, timeout: float = 120,
               on_event=None):
    """The `data:` payloads of a streamed response, parsed ("[DONE]" kept as is).

    With `stop_after`, the connection is closed after that many events (a client that goes away);
    `on_event` is called with each event as it arrives.
    """
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    events = []
    for line in resp:
        line = line.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        events.append(data if data == "[DONE]" else json.loads(data))
        if on_event is not None:
            on_event(events[-1])
        if data == "[DONE]" or (stop_after is not None and len(events) >= stop_after):
            break
    if stop_after is not None:
        conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    return events


def metric(url: str, name: str, **labels) -> float:
    """One sample's value from /metrics (0 if absent)."""
    status, text = request(url, "GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.rsplit(" ", 1)[0]
            if head.split("{")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0
