"""Decode speed per request: tok/s, TTFT, inter-token latency, and % of the measured bandwidth ceiling."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sonic.engine.sampling import SamplingParams
from sonic.estimate.cost import kv_bytes_per_token, weight_bytes_per_token


def build_model(preset: str | None, model: str | None, device: str, dtype: torch.dtype, seed: int = 0):
    """The reference model with random weights of a preset's shape, or loaded from a path."""
    from sonic.models.registry import build_model as build
    if preset:
        from sonic.presets import get_preset
        from sonic.weights.random import random_state_dict
        config = get_preset(preset)
        return build(config, random_state_dict(config, seed, dtype, device), dtype, device), preset
    from sonic.weights.loader import load_weights
    loaded = load_weights(model, dtype, device, with_tokenizer=False)
    return build(loaded.config, loaded.state_dict, dtype, device), source_name(loaded.source)


def source_name(source: Path) -> str:
    """What a report calls a model loaded from a path: the .gguf file's stem or the folder's name."""
    return source.stem if source.is_file() else source.name


def bench_prompt(vocab_size: int, args) -> list[int]:
    """Seeded random token ids: --prompt-tokens of them, or CONTEXT - output tokens with --context."""
    prompt_len = args.context - args.output_tokens if args.context else args.prompt_tokens
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (prompt_len,), generator=gen).tolist()


def mean_context(prompt: list[int], args) -> float:
    """The KV cache's average length over the timed decode, which sets its bytes per token."""
    return len(prompt) + args.output_tokens / 2


def token_bytes(config, context: float, bytes_per_elem: int) -> dict:
    """Bytes one device reads per decode step of the whole (unsharded) model."""
    weights = weight_bytes_per_token(config, bytes_per_elem)
    kv = kv_bytes_per_token(config, context, bytes_per_elem)
    return {"weight_bytes_per_token": weights, "kv_bytes_per_token": kv, "bytes_per_token": weights + kv}


def pct_of_bandwidth(bytes_per_token: float, ms_per_token: float, bandwidth: float) -> float:
    """The share of `bandwidth` that reading `bytes_per_token` every `ms_per_token` uses, in percent."""
    return 100 * bytes_per_token / (ms_per_token / 1e3) / bandwidth


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def time_decode(runner, prompt: list[int], output_tokens: int, repeats: int,
                sampling: SamplingParams = SamplingParams()) -> dict:
    """Decode of exactly `output_tokens` (EOS ignored; greedy unless `sampling` says otherwise),
    `repeats` times; medians over runs."""
    runs = []
    for _ in range(repeats + 1):  # the first run warms up (compiles, captures graphs)
        start = time.perf_counter()
        times = []
        for _token in runner.generate(prompt, output_tokens, sampling):
            times.append(time.perf_counter())
        runs.append((times[0] - start, times))
    runs = runs[1:]
    tok_s = [(len(t) - 1) / (t[-1] - t[0]) for _, t in runs]
    itl = [b - a for _, t in runs for a, b in zip(t, t[1:])]
    median = statistics.median(tok_s)
    return {
        "decode_tok_s": median, "decode_tok_s_runs": tok_s, "ms_per_token": 1e3 / median,
        "ttft_ms": statistics.median(r[0] for r in runs) * 1e3,
        "itl_p50_ms": percentile(itl, 50) * 1e3, "itl_p99_ms": percentile(itl, 99) * 1e3,
    }


def decode_result(runner, name: str, prompt: list[int], args) -> dict:
    """The timed decode of one request on `runner`, as a report's result (before its byte counts)."""
    result = {"runner": name, "prompt_tokens": len(prompt), "output_tokens": args.output_tokens}
    sampling = bench_sampling(args)
    if not sampling.greedy:
        result["sampling"] = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    result.update(time_decode(runner, prompt, args.output_tokens, args.repeats, sampling))
    return result


def bench_runner(name: str, model, prompt: list[int], args, bandwidth: float) -> dict:
    from sonic.engine.runners import make_runner
    runner = make_runner(name, model)
    result = decode_result(runner, name, prompt, args)
    if getattr(args, "verify_cost", 0) and hasattr(runner, "verify_argmax"):
        result["verify_cost"] = verify_cost(runner, args.verify_cost)
    if getattr(args, "profile", False) and hasattr(runner, "profile"):
        result["profile"] = runner.profile(prompt, args.output_tokens)
    elem = model.model.embed_tokens.weight.element_size()
    result.update(token_bytes(model.config, mean_context(prompt, args), elem))
    result.update({"ceiling_tok_s": bandwidth / result["bytes_per_token"],
                   "pct_of_ceiling": pct_of_bandwidth(result["bytes_per_token"], result["ms_per_token"], bandwidth)})
    del runner
    return result


def bench_sampling(args) -> SamplingParams:
    """Greedy, or the flags' sampling with a fixed seed."""
    return SamplingParams(temperature=getattr(args, "temperature", 0.0), top_k=getattr(args, "top_k", 0),
                          top_p=getattr(args, "top_p", 1.0), seed=0)


def verify_cost(runner, max_rows: int) -> list[float]:
    """Seconds to verify m = 1..max_rows tokens in one step, in plain decode steps (speculation pays
    when the accepted tokens per step exceed this)."""
    from sonic.spec.adaptive import step_time, verify_times
    plain = step_time(runner)
    return [t / plain for _, t in sorted(verify_times(runner, max_rows).items())]


def git_commit() -> str:
    if os.environ.get("SONIC_COMMIT"):
        return os.environ["SONIC_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def matvec_setting() -> str:
    from sonic.kernels.matvec_backend import choice
    return choice()


def pdl_setting() -> str:
    from sonic.kernels.triton.pdl import DEFAULT
    return os.environ.get("SONIC_PDL", DEFAULT)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_bench(args) -> dict:
    from sonic.bench.bandwidth import measure_read_bandwidth
    from sonic.engine.generate import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = getattr(torch, resolve_dtype(args.dtype, device))
    bandwidth = measure_read_bandwidth(device)
    model, name = build_model(args.preset, args.model, device, dtype)
    prompt = bench_prompt(model.config.vocab_size, args)
    runners = [args.runner] + [r for r in args.compare if r != args.runner]
    results = [bench_runner(r, model, prompt, args, bandwidth) for r in runners]
    return {**report_header(name, device, dtype),
            "bandwidth_GBps": bandwidth / 1e9, "context": len(prompt) + args.output_tokens,
            "options": report_options(), "results": results}


def report_options() -> dict:
    """The environment settings that change the fused kernels' speed."""
    return {"SONIC_PDL": pdl_setting(), "SONIC_MATVEC": matvec_setting()}


def report_header(model: str, device: str, dtype: torch.dtype) -> dict:
    """What every benchmark report starts with: what ran, where, on which code."""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        pass
    return {"model": model, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
            "date": datetime.date.today().isoformat(), "commit": git_commit(), "versions": versions}


def format_table(report: dict) -> str:
    sampled = next((r["sampling"] for r in report["results"] if r.get("sampling")), None)
    how = "" if sampled is None else (f", sampled (temperature {sampled['temperature']:g}, top-k {sampled['top_k']}, "
                                      f"top-p {sampled['top_p']:g})")
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}), commit {report['commit']}, "
             f"read bandwidth {report['bandwidth_GBps']:.0f} GB/s{how}",
             f"{'runner':<8}{'tok/s':>9}{'ms/tok':>9}{'TTFT ms':>9}{'ITL p50':>9}{'ITL p99':>9}"
             f"{'MB/tok':>9}{'ceiling':>9}{'% ceil':>8}"]
    for r in report["results"]:
        lines.append(f"{r['runner']:<8}{r['decode_tok_s']:>9.1f}{r['ms_per_token']:>9.3f}{r['ttft_ms']:>9.1f}"
                     f"{r['itl_p50_ms']:>9.3f}{r['itl_p99_ms']:>9.3f}{r['bytes_per_token'] / 1e6:>9.1f}"
                     f"{r['ceiling_tok_s']:>9.0f}{r['pct_of_ceiling']:>7.1f}%")
    for r in report["results"]:
        if r.get("profile"):
            from sonic.mono.profile import format_profile
            lines.append(format_profile(r["runner"], r["profile"]))
        if r.get("verify_cost"):
            cost = " ".join(f"{c:.2f}" for c in r["verify_cost"])
            lines.append(f"{r['runner']}: verifying 1..{len(r['verify_cost'])} tokens costs {cost} plain steps")
    return "\n".join(lines)


def result_path(report: dict, folder: str | Path = "bench/results", suffix: str | None = None) -> Path:
    device = report["device"].lower().replace("nvidia ", "").replace(" ", "-")
    if suffix is None:  # a tensor-parallel run must not overwrite the one-device result of the same model
        suffix = (f"-tp{report['tp']}" if report.get("tp", 1) > 1 else "") + \
            (f"-ctx{report['context']}" if report["context"] > 1024 else "")
    return Path(folder) / f"{report['date']}-{device}-{report['model']}{suffix}.json"


def write_json(report: dict, path: str | Path | None = None) -> Path:
    path = Path(path) if path else result_path(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
