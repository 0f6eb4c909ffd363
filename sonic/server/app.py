"""The HTTP server: OpenAI routes (streamed as Server-Sent Events), health, metrics, tokenizer routes, playground.

Handlers never run the model: they check the request, hand it to the scheduler's engine thread and
relay its events, so a slow client or a burst of requests never stalls decoding.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from sonic.engine.requests import Failed, Finished
from sonic.server.errors import APIError, error_body, error_response, install_handlers
from sonic.server.generation import RequestRun, abort_on_disconnect, check_length, sampling_params, tokenize
from sonic.server.protocol import ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from sonic.server.responses import ChatFormat, CompletionFormat, sse
from sonic.server.state import ServerState

log = logging.getLogger("sonic.server")
STATIC = Path(__file__).parent / "static"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16   # the API's default for /v1/completions
PROTECTED = ("/v1/", "/tokenize", "/detokenize")


class BodyTooLarge(HTTPException):
    """Raised while reading a body sent without a Content-Length; an HTTPException so that
    FastAPI passes it on instead of calling it a parse error."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes: send a shorter prompt")


class Gate:
    """Before any route: refuse while shutting down (503), check the API key (401), cap the body (413)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            await _drain(receive)
            return await refusal(scope, receive, send)
        limit, seen = self.state.settings.max_body_bytes, 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                if message.get("more_body"):
                    await _drain(receive)
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    def refusal(self, scope) -> Response | None:
        path, s = scope["path"], self.state.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.state.draining and path not in ("/health", "/metrics"):
            return error_response(503, "the server is shutting down: try again later")
        if s.api_key and path.startswith(PROTECTED):
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), s.api_key.encode()):
                return error_response(401, "invalid or missing API key: send 'Authorization: Bearer KEY' "
                                           "with the key the server was started with", code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > s.max_body_bytes:
            return error_response(413, BodyTooLarge(s.max_body_bytes).detail)
        return None


async def _drain(receive, cap: int = 64 << 20):
    """Read and drop what the client is still sending, so it reads our error instead of a reset."""
    dropped = 0
    while dropped < cap:
        message = await receive()
        dropped += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def create_app(state: ServerState, on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=_load, args=(state, on_load_error), name="sonic-load", daemon=True).start()
        yield
        state.draining = True
        await asyncio.to_thread(state.close)

    app = FastAPI(title="Sonic", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sonic = state
    install_handlers(app)
    app.add_middleware(Gate, state=state)
    _add_info_routes(app, state)
    _add_generation_routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _load(state: ServerState, on_load_error):
    try:
        state.load()
    except Exception as e:  # noqa: BLE001 - reported on /health and to the command line
        state.load_error = state.load_error or f"{type(e).__name__}: {e}"
        if on_load_error is not None:
            on_load_error(state.load_error)
        else:
            log.error("the model failed to load: %s", state.load_error)


def _add_info_routes(app: FastAPI, state: ServerState):
    @app.get("/health")
    async def health():
        failure = state.load_error or state.engine_failure
        if state.draining or failure or not state.ready:
            status = "draining" if state.draining else "error" if failure else "loading"
            return JSONResponse({"status": status, "message": failure}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        state.check_ready()
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "sonic", "max_model_len": state.context_length}]}

    @app.get("/metrics")
    async def metrics():
        if state.metrics is None:
            return Response("# the model is still loading\n", status_code=503, media_type="text/plain")
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize_route(body: TokenizeRequest):
        state.check_ready()
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give either 'prompt' (text) or 'messages' (a chat), not both or neither")
        ids = tokenize(state, body.prompt, body.messages, body.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.context_length}

    @app.post("/detokenize")
    async def detokenize_route(body: DetokenizeRequest):
        state.check_ready()
        state.check_model(body.model)
        tokenize(state, body.tokens)  # checks the ids are in the vocabulary
        return {"prompt": state.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")


def _add_generation_routes(app: FastAPI, state: ServerState):
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        state.check_ready()
        state.check_model(body.model)
        prompts = body.prompts()
        if len(prompts) != 1:
            raise APIError(400, f"send one prompt per request (got {len(prompts)})", param="prompt")
        ids = await asyncio.to_thread(tokenize, state, prompts[0])  # long prompts must not stall other streams
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        check_length(state, len(ids), max_tokens, allow_zero=body.echo)
        echo = None
        if body.echo:
            echo = prompts[0] if isinstance(prompts[0], str) else state.tokenizer.decode(ids, skip_special_tokens=False)
        fmt = CompletionFormat(state.model_name, state.tokenizer, ids, body.logprobs, body.include_usage(),
                               echo_text=echo)
        options = dict(sampling=sampling_params(body), stop=body.stop_strings(), logprobs=body.logprobs,
                       prompt_logprobs=body.logprobs if body.echo else None)
        return await respond(state, http, fmt, ids, max_tokens, options, body.stream)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        state.check_ready()
        state.check_model(body.model)
        ids = await asyncio.to_thread(tokenize, state, messages=body.messages)
        limit = body.output_limit()
        max_tokens = limit if limit is not None else max(state.context_length - len(ids), 1)
        check_length(state, len(ids), max_tokens)
        top = (body.top_logprobs or 0) if body.logprobs else None
        fmt = ChatFormat(state.model_name, state.tokenizer, ids, top, body.include_usage())
        options = dict(sampling=sampling_params(body), stop=body.stop_strings(), logprobs=top)
        return await respond(state, http, fmt, ids, max_tokens, options, body.stream)


async def respond(state: ServerState, http: Request, fmt, ids: list[int], max_tokens: int, options: dict,
                  stream: bool):
    run = RequestRun(state.scheduler, ids, max_tokens, **options)
    try:
        async with abort_on_disconnect(http, run):
            if not stream:
                return JSONResponse(fmt.response(await run.collect()))
            first = await run.first()
    except BaseException:
        run.close()
        raise
    return StreamingResponse(_stream(run, fmt, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(run: RequestRun, fmt, event):
    """SSE: the same id on every chunk, one chunk with finish_reason, usage (if asked) last, then [DONE]."""
    try:
        for chunk in fmt.head():
            yield sse(chunk)
        while True:
            if isinstance(event, Failed):
                yield sse(error_body(event.status, event.message))
                break
            for chunk in fmt.events_to_chunks(event):
                yield sse(chunk)
            if isinstance(event, Finished):
                break
            event = await run.next()
        yield sse("[DONE]")
    finally:
        run.close()  # a client gone mid-stream cancels this generator: abort its request at once


class DrainingServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C: refuse new requests at once, let in-flight ones finish (bounded), then stop."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame):
        self.state.draining = True
        super().handle_exit(sig, frame)
