"""Between HTTP and the engine thread: checked prompts in, events out on an asyncio queue, aborts on disconnect."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sonic.engine.generate import GenerationStats
from sonic.engine.requests import Delta, Failed, Finished, PromptLogprobs, Request, TokenLogprob
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError
from sonic.server.errors import APIError

CLIENT_GONE = 499  # nginx's status for a client that closed the connection; never reaches anyone


def tokenize(state, prompt: str | list[int] | None = None, messages: list | None = None,
             add_special_tokens: bool = True) -> list[int]:
    """Token ids for text, ids or chat messages; anything the tokenizer chokes on is a 400."""
    tok = state.tokenizer
    try:
        if messages is not None:
            return tok.encode_chat([m.as_template_message() for m in messages])
        if isinstance(prompt, list):
            bad = next((i for i in prompt if not 0 <= i < state.engine.config.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0..{state.engine.config.vocab_size - 1})",
                               param="prompt")
            return list(prompt)
        return tok.encode(prompt, add_special_tokens=add_special_tokens)
    except (APIError, SonicError):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. lone surrogates the tokenizer library rejects
        raise APIError(400, f"the prompt could not be tokenized ({e}): send valid UTF-8 text",
                       param="messages" if messages is not None else "prompt") from None


def check_length(state, prompt_tokens: int, max_tokens: int, allow_zero: bool = False):
    """A 400 naming prompt tokens, max_tokens and the context length when they do not fit."""
    context = state.context_length
    if allow_zero and max_tokens == 0 and 0 < prompt_tokens <= context:
        return  # scoring a prompt (echo) without generating
    try:
        state.engine.check_length(prompt_tokens, max_tokens, flag="max_tokens", context_length=context)
    except SonicError as e:
        code = "context_length_exceeded" if prompt_tokens + max_tokens > context else None
        raise APIError(400, str(e), param="max_tokens", code=code) from None


def sampling_params(body) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature  # the API's default
    return SamplingParams(temperature=temperature, top_k=max(body.top_k or 0, 0),
                          top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed)


@dataclass
class Outcome:
    """A whole request's result, for non-streaming responses."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str = "length"
    stats: GenerationStats = field(default_factory=GenerationStats)


class RequestRun:
    """One engine request seen from the event loop; `close()` aborts it unless it already ended."""

    def __init__(self, scheduler, prompt_ids: list[int], max_tokens: int, **options):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.scheduler, self.ended = scheduler, False
        emit = lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)  # noqa: E731
        self.request = Request(prompt_ids, max_tokens, emit, **options)
        scheduler.submit(self.request)

    async def next(self):
        event = await self.queue.get()
        self.ended = self.ended or isinstance(event, (Finished, Failed))
        return event

    def close(self):
        if not self.ended:
            self.ended = True
            self.scheduler.abort(self.request)
            self.queue.put_nowait(Failed(CLIENT_GONE, "the client disconnected"))

    async def first(self):
        """The first event, or the error that kept the request from starting (as an APIError)."""
        event = await self.next()
        if isinstance(event, Failed):
            raise APIError(event.status, event.message)
        return event

    async def collect(self) -> Outcome:
        out = Outcome()
        while True:
            event = await self.next()
            if isinstance(event, Failed):
                raise APIError(event.status, event.message)
            if isinstance(event, PromptLogprobs):
                out.prompt_logprobs = event.entries
            elif isinstance(event, Delta):
                out.text += event.text
                out.token_ids.append(event.token_id)
                if event.logprob is not None:
                    out.logprobs.append(event.logprob)
            elif isinstance(event, Finished):
                out.text += event.text
                out.finish_reason, out.stats = event.reason, event.stats
                return out


@asynccontextmanager
async def abort_on_disconnect(http_request, run: RequestRun):
    """While the body of this block waits on the engine, a client that hangs up aborts its request."""
    async def watch():
        while (await http_request.receive())["type"] != "http.disconnect":
            pass
        run.close()

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
