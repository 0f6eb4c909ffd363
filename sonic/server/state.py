"""What one running server holds: its settings, the engine once loaded, the scheduler and the metrics."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sonic.errors import SonicError
from sonic.server.errors import APIError

log = logging.getLogger("sonic.server")


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None      # None: the model's own context length
    max_concurrency: int = 8              # sequences decoding together; the rest wait in a queue
    api_key: str | None = None
    queue_timeout: float = 60.0           # seconds a request may wait for a slot before a 503
    shutdown_timeout: float = 30.0        # seconds in-flight requests get to finish on SIGTERM
    max_body_bytes: int = 4 << 20
    prefill_chunk: int = 64               # prompt tokens per step while others decode
    served_model_name: str | None = None  # the `model` id clients use; default: the model's file or folder name


def model_id(path: str | None, engine) -> str:
    """A stable, readable id for /v1/models: the .gguf file's stem or the folder's name."""
    from sonic.weights.loader import DEFAULT_MODEL_FILE
    p = Path(path or DEFAULT_MODEL_FILE)
    return (p.stem if p.suffix == ".gguf" else p.name) or engine.config.name or "model"


class ServerState:
    """Filled in by `load()` (in a background thread), so /health can answer 503 while it runs."""

    def __init__(self, settings: ServeSettings, load_engine: Callable[[], object], model_path: str | None = None):
        self.settings, self.load_engine, self.model_path = settings, load_engine, model_path
        self.engine = self.scheduler = self.metrics = None
        self.model_name = settings.served_model_name or ""
        self.load_error: str | None = None
        self.draining = False

    def load(self):
        from sonic.server.metrics import Metrics

        try:
            engine = self.load_engine()
            tokenizer = engine.text_tokenizer()
        except SonicError as e:
            self.load_error = str(e)
            raise
        s = self.settings
        self.model_name = self.model_name or model_id(self.model_path, engine)
        self.context_length = min(engine.config.max_position_embeddings, s.max_model_len or 1 << 62)
        self.metrics = Metrics(self.model_name)
        self.scheduler, concurrency, path = self._scheduler(engine, tokenizer)
        self.metrics.watch(self.scheduler)
        self.tokenizer, self.engine = tokenizer, engine
        self.scheduler.start()
        spec = engine.speculator
        log.info("serving %s (context %d, up to %d concurrent, %s decode path, speculative decoding %s)",
                 self.model_name, self.context_length, concurrency, path,
                 f"with {spec.proposer.name}" if spec is not None else "off")

    def _scheduler(self, engine, tokenizer):
        """(scheduler, requests at once, decode path): batched where the runner can batch, else serial."""
        from sonic.engine.serial_scheduler import SerialScheduler, needs_serial
        s = self.settings
        if needs_serial(engine.runner):
            scheduler = SerialScheduler(engine, tokenizer, queue_timeout=s.queue_timeout,
                                        on_finish=self.metrics.request_ended)
            return scheduler, 1, scheduler.path
        from sonic.engine.graph_slot import make_batch_runner
        from sonic.engine.scheduler import Scheduler
        runner = make_batch_runner(engine.runner, s.max_concurrency, self.context_length)
        self.context_length = runner.max_len
        scheduler = Scheduler(runner, tokenizer, engine.eos_ids, queue_timeout=s.queue_timeout,
                              prefill_chunk=s.prefill_chunk, on_finish=self.metrics.request_ended,
                              speculator=engine.speculator)
        return scheduler, s.max_concurrency, type(runner).__name__

    def close(self):
        if self.scheduler is not None:
            self.scheduler.stop(self.settings.shutdown_timeout)
        if self.engine is not None:
            self.engine.close()  # stops tensor-parallel workers; other engines hold nothing to release

    @property
    def engine_failure(self) -> str | None:
        """Why the loaded engine can serve no more requests (its tensor-parallel workers stopped), or None."""
        return getattr(self.engine.runner, "failed", None) if self.engine is not None else None

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def check_ready(self):
        if self.draining:
            raise APIError(503, "the server is shutting down: try again later")
        if self.load_error:
            raise APIError(503, f"the model failed to load: {self.load_error}")
        if self.engine_failure:
            raise APIError(503, self.engine_failure)
        if not self.ready:
            raise APIError(503, "the model is still loading: retry when GET /health returns 200")

    def check_model(self, name: str | None):
        if name and name != self.model_name:
            raise APIError(404, f"model '{name}' is not served here: use '{self.model_name}' (see GET /v1/models)",
                           param="model", code="model_not_found")
