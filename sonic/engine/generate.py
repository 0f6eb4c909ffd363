"""The engine a user talks to: load a model once, then stream text for prompts or chats."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from sonic.config import EngineConfig, ModelConfig
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError

if TYPE_CHECKING:
    from sonic.spec.loop import SpecStats
    from sonic.spec.speculator import SpecConfig


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0          # request start to first token sampled (prefill included)
    decode_s: float = 0.0        # first token to last token
    finish_reason: str = ""      # "stop" (EOS or stop string) or "length"
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # host clock when each token arrived
    spec: "SpecStats | None" = None  # speculative decoding: drafted, accepted, verification steps

    @property
    def decode_tok_s(self) -> float:
        steps = self.output_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        line = (f"prompt {self.prompt_tokens} tokens, output {self.output_tokens} tokens, "
                f"TTFT {self.ttft_s * 1e3:.1f} ms, decode {self.decode_tok_s:.1f} tok/s")
        if self.spec is not None:
            s = self.spec
            line += (f", speculative: {s.drafted} drafted, {s.accepted} accepted ({100 * s.acceptance_rate:.0f}%), "
                     f"mean accepted length {s.mean_accepted:.2f}")
        return line


def resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SonicError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SonicError(f"unknown device '{device}': use cpu or cuda")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SonicError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return dtype


def resolve_runner(runner: str, device: str) -> str:
    """`auto` is the fast path on a GPU and the reference on a CPU."""
    if runner == "auto":
        return "graph" if device.startswith("cuda") else "ref"
    return runner


class Engine:
    def __init__(self, config: ModelConfig, runner, tokenizer, engine_config: EngineConfig):
        self.config, self.runner, self.tokenizer, self.engine_config = config, runner, tokenizer, engine_config
        eos = set(config.eos_token_ids) | set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.eos_ids = frozenset(eos)
        self.last_stats = GenerationStats()
        self.speculator = None  # a sonic.spec.speculator.Speculator when speculative decoding is on

    @classmethod
    def load(cls, model: str | None = None, device: str = "cpu", dtype: str = "auto",
             runner: str = "auto", spec: "SpecConfig | None" = None, tp: int = 1,
             tp_timeout_s: float | None = None, tp_allreduce: str = "ordered") -> "Engine":
        if tp != 1:
            return cls.load_tp(model, device, dtype, runner, spec, tp, tp_timeout_s, tp_allreduce)
        from sonic.models.registry import build_model
        from sonic.engine.runners import make_runner
        from sonic.weights.loader import load_weights

        device = resolve_device(device)
        if spec is not None and spec.draft_model:
            from sonic.spec.draft import check_draft
            check_draft(spec.draft_model, model)  # before the slow loads
        ecfg = EngineConfig(device=device, dtype=resolve_dtype(dtype, device),
                            runner=resolve_runner(runner, device))
        loaded = load_weights(model, ecfg.torch_dtype, device)
        net = build_model(loaded.config, loaded.state_dict, ecfg.torch_dtype, device)
        engine = cls(loaded.config, make_runner(ecfg.runner, net), loaded.tokenizer, ecfg)
        if spec is not None and spec.on:
            from sonic.spec.speculator import Speculator
            engine.speculator = Speculator.build(spec, engine.runner, ecfg.torch_dtype, device, ecfg.runner)
        return engine

    @classmethod
    def load_tp(cls, model, device, dtype, runner, spec, tp: int, timeout_s: float | None,
                allreduce: str = "ordered", preset: str | None = None) -> "Engine":
        """`tp` ranks, one process each; this process is rank 0 (see sonic/dist/launch.py). With
        `preset`, random weights of that shape (no tokenizer), as `sonic bench --preset` uses."""
        from sonic.dist.launch import DEFAULT_TIMEOUT_S, TPRunner, tp_options

        device, runner = tp_options(model, tp, device, runner, allreduce, spec, preset)  # before any process starts
        ecfg = EngineConfig(device=device, dtype=resolve_dtype(dtype, device), runner="tp")
        tp_runner, loaded = TPRunner.start(model, tp, device, ecfg.dtype, timeout_s or DEFAULT_TIMEOUT_S,
                                           allreduce, runner, preset)
        return cls(loaded.config, tp_runner, loaded.tokenizer, ecfg)

    def close(self):
        """Release what outlives a request (tensor-parallel worker processes)."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def text_tokenizer(self):
        """The tokenizer, or a user error for a model folder that ships none."""
        if self.tokenizer is None:
            raise SonicError("this model folder has no tokenizer.json, so it cannot work with text")
        return self.tokenizer

    @property
    def context_length(self) -> int:
        """The longest sequence this engine can run: the model's context, or a smaller fixed cache."""
        return min(self.config.max_position_embeddings, getattr(self.runner, "max_len", None) or 1 << 62)

    def check_length(self, prompt_tokens: int, max_tokens: int, flag: str = "--max-tokens",
                     context_length: int | None = None):
        """A user error unless the prompt and `max_tokens` fit; `flag` names the setting in the message."""
        context = context_length or self.context_length
        if max_tokens < 1:
            raise SonicError(f"invalid {flag} {max_tokens}: use a positive number")
        if prompt_tokens == 0:
            raise SonicError("the prompt is empty: give some text to continue")
        if prompt_tokens + max_tokens > context:
            raise SonicError(f"prompt ({prompt_tokens} tokens) + max tokens ({max_tokens}) = "
                             f"{prompt_tokens + max_tokens} exceeds the model's context length "
                             f"of {context}: shorten the prompt or lower {flag}")

    def generate_ids(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams) -> Iterator[int]:
        """Yield token ids until EOS or `max_tokens`; statistics land in `self.last_stats`."""
        self.check_length(len(prompt_ids), max_tokens)
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids), finish_reason="length")
        start = time.perf_counter()
        spec = self.speculator
        if spec is not None:
            tokens = spec.generate(prompt_ids, max_tokens, sampling, self.eos_ids)
            stats.spec = spec.last
        else:
            tokens = self.runner.generate(prompt_ids, max_tokens, sampling)
        try:
            for token_id in tokens:
                now = time.perf_counter()
                if not stats.token_times:
                    stats.ttft_s = now - start
                stats.token_times.append(now)
                stats.decode_s = now - stats.token_times[0]
                if token_id in self.eos_ids:
                    stats.finish_reason = "stop"
                    return
                stats.output_tokens += 1
                stats.token_ids.append(token_id)
                yield token_id
        finally:
            tokens.close()  # tells a runner that streams ahead to stop queueing steps

    def stream(self, prompt_ids: list[int], max_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
               stop: list[str] | tuple[str, ...] = ()) -> Iterator[str]:
        """Yield text pieces; a stop string ends the stream and is not part of it."""
        from sonic.text_stream import TextStream

        text = TextStream(self.text_tokenizer(), stop)
        ids = self.generate_ids(prompt_ids, max_tokens, sampling)
        for token_id in ids:
            piece = text.add(token_id)
            if piece:
                yield piece
            if text.stopped:
                ids.close()
                self.last_stats.finish_reason = "stop"
                return
        tail = text.finish()
        if tail:
            yield tail
