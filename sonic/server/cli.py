"""`sonic serve`: its flags, and running the HTTP server until SIGTERM or Ctrl-C."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from sonic.errors import SonicError

DEFAULT_CONCURRENCY = 8


def add_serve_args(p: argparse.ArgumentParser):
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="longest prompt + output in tokens (default: the model's context length)")
    p.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                   help=f"requests decoding together; more wait in a queue (default: {DEFAULT_CONCURRENCY}, "
                        "or 1 with --speculative or --tp)")
    p.add_argument("--api-key", default=os.environ.get("SONIC_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $SONIC_API_KEY, or none)")
    p.add_argument("--queue-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a request may wait for a slot before a 503 (default: 60)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="seconds in-flight requests get to finish on SIGTERM (default: 30)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id clients send (default: the model's file or folder name)")


def settings_from_args(args):
    from sonic.server.state import ServeSettings
    for flag in ("max_concurrency", "max_model_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SonicError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.port <= 65535:
        raise SonicError(f"--port {args.port} is not a port number: use 1-65535")
    for flag in ("queue_timeout", "shutdown_timeout"):
        if not getattr(args, flag) > 0:
            raise SonicError(f"--{flag.replace('_', '-')} must be a positive number of seconds")
    return ServeSettings(host=args.host, port=args.port, max_model_len=args.max_model_len,
                         max_concurrency=args.max_concurrency, api_key=args.api_key or None,
                         queue_timeout=args.queue_timeout, shutdown_timeout=args.shutdown_timeout,
                         served_model_name=args.served_model_name)


def check_speculation(args):
    """Speculation and tensor parallelism decode one request at a time: they set the default concurrency
    to 1, and refuse more."""
    from sonic.cli import spec_from_args
    spec = spec_from_args(args)  # the flag checks `sonic generate` makes
    tp = getattr(args, "tp", 1)
    if args.max_concurrency is None:
        args.max_concurrency = 1 if spec.on or tp != 1 else DEFAULT_CONCURRENCY
    elif tp != 1 and args.max_concurrency > 1:
        raise SonicError(f"--tp {tp} serves one request at a time: use --max-concurrency 1 (others wait in the "
                         f"queue), or drop --tp to batch {args.max_concurrency}")
    elif spec.on and args.max_concurrency > 1:
        raise SonicError(f"--speculative {spec.mode} decodes one request at a time: use --max-concurrency 1 "
                         f"(others wait in the queue), or drop --speculative to batch {args.max_concurrency}")
    return spec


def serve_runner(args, spec=None) -> str:
    """The fused graph runner decodes one sequence at a time; batches of several take the reference path.
    With --tp, the per-rank runner, after every tensor-parallel check (nothing has started yet)."""
    from sonic.engine.generate import resolve_device, resolve_runner
    if getattr(args, "tp", 1) != 1:
        from sonic.dist.launch import tp_options
        return tp_options(args.model, args.tp, args.device, args.runner, args.tp_allreduce, spec)[1]
    runner = resolve_runner(args.runner, resolve_device(args.device))
    if runner == "graph" and args.max_concurrency > 1:
        if args.runner == "graph":
            raise SonicError("--runner graph decodes one request at a time: add --max-concurrency 1, "
                             "or use --runner ref to batch several")
        return "ref"
    return runner


def bind(host: str, port: int) -> socket.socket:
    """Listen before loading anything, so a busy port is one clear line instead of a late failure."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as e:
        raise SonicError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SonicError("sonic serve needs the server packages: pip install 'sonic[serve]'") from None
    from sonic.cli import load_engine
    from sonic.server.app import DrainingServer, create_app
    from sonic.server.state import ServerState
    from sonic.weights.loader import resolve_model_path

    spec = check_speculation(args)
    settings = settings_from_args(args)
    resolve_model_path(args.model)  # a wrong path fails now, not in the background load
    if spec.draft_model:
        from sonic.spec.draft import check_draft
        check_draft(spec.draft_model, args.model)
    args.runner = serve_runner(args, spec)
    sock = bind(settings.host, settings.port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    state = ServerState(settings, lambda: load_engine(args), args.model)
    server = None

    def load_failed(message: str):
        sys.stderr.write(f"sonic: error: {message}\n")
        server.should_exit = True

    app = create_app(state, on_load_error=load_failed)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=settings.shutdown_timeout)
    server = DrainingServer(config, state)
    host, port = sock.getsockname()[:2]
    sys.stderr.write(f"sonic: listening on http://{host}:{port} (playground at /); loading the model...\n")
    # uvicorn re-raises the signal that stopped it once it has drained; a no-op handler makes that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    return 2 if state.load_error else 0

