"""Where one decode step of the graph runner spends its time: step time of graph replays, per-kernel GPU
time from the profiler, and ablations.

Usage (on a GPU machine): python scripts/profile_step.py [preset ...]
ABLATE=attn|norm|bn2|bn4 leaves a part out or changes it (the tokens are then wrong: timing only);
ABLATE=splitsN|bsN|astagesN runs attention with N KV splits, N keys per tile or N key tiles in flight;
warpsN|stagesN the M = 1 matvecs with N warps or pipeline stages (then M = 1 and M > 1 sum in other
orders); tileN the matvecs with N KB of weights per program per K step for the LM head (twice that where
K <= N, half for other long rows); headN|shortN|longN one of those three budgets alone. These are timing
A/Bs whose tokens stay close. Parts join with "+": ABLATE=short64+head32.
PROFILE_JSON=PATH writes the figures with device, date, commit and the measured read bandwidth.
Under programmatic dependent launch a kernel's profiled time includes its wait for the previous one,
so only whole-step times compare.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from collections import defaultdict

import torch

from sonic.bench.run import build_model, device_name, git_commit, pdl_setting
from sonic.engine.runner_graph import GraphRunner
from sonic.engine.sampling import SamplingParams

PROMPT, STEPS = 128, 50
TIMED = 256  # timed replays: the positions `sonic bench` decodes, so tile-boundary effects count as there


def step_time_ms(graph, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def profile(preset: str) -> dict:
    model, _ = build_model(preset, None, "cuda", torch.bfloat16)
    runner = GraphRunner(model)  # the cache length `sonic bench` gets, so attention runs the same splits
    runner.reserve(PROMPT + TIMED + 2 * STEPS + 64)
    prompt = torch.randint(0, model.config.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0))
    runner.prefill(prompt.tolist())
    runner.tokens[:1].fill_(int(prompt[-1]))
    runner.positions[:1].fill_(PROMPT)
    graph = runner._graph(SamplingParams())
    graph.replay()  # the first replay uploads the graph
    ms = step_time_ms(graph, TIMED)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            graph.replay()
        torch.cuda.synchronize()
    kernels = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name[:48]]
            k[0] += 1
            k[1] += ev.device_time
    print(f"\n{preset}: {ms * 1e3:.1f} us/step ({1e3 / ms:.0f} tok/s), PDL={pdl_setting()}, "
          f"ABLATE={os.environ.get('ABLATE', '')}")
    print(f"{'kernel':<50}{'calls':>7}{'us/step':>9}{'us/call':>9}")
    for name, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<50}{n / STEPS:>7.0f}{t / STEPS:>9.1f}{t / n:>9.2f}")
    return {"preset": preset, "us_per_step": ms * 1e3, "tok_s": 1e3 / ms,
            "kernels": {name: {"calls_per_step": n / STEPS, "us_per_step": t / STEPS}
                        for name, (n, t) in kernels.items()}}


def ablate(what: str):
    """Leave a part of the step out (the tokens are then wrong) to see what it costs on the critical path."""
    from sonic.kernels.triton import decode_attention as attn, matvec
    key = what.rstrip("0123456789")  # warps8 -> "warps", 8
    value = int(what[len(key):]) if key != what else None
    if value is None and what not in ("attn", "norm"):
        key = ""  # every other setting takes a number
    if what == "attn":
        attn.decode_attention = lambda *a, **k: None
    elif what == "norm":
        full = matvec.fused_matvec
        matvec.fused_matvec = lambda *a, norm_weight=None, **k: full(*a, **k)
    elif key == "bn":  # bn2: twice the rows per program at M = 1
        factor, rule = value, matvec.matvec_config

        def wider(M, N, K, **kw):
            cfg = rule(M, N, K, **kw)
            return matvec.MatvecConfig(cfg.block_n * factor, cfg.block_k, cfg.num_warps, cfg.num_stages) \
                if M == 1 else cfg
        matvec.matvec_config = wider
    elif key in ("warps", "stages"):  # at M = 1
        rule = matvec.matvec_config

        def other(M, N, K, **kw):
            cfg = rule(M, N, K, **kw)
            if M != 1:
                return cfg
            return matvec.MatvecConfig(cfg.block_n, cfg.block_k, value if key == "warps" else cfg.num_warps,
                                       value if key == "stages" else cfg.num_stages)
        matvec.matvec_config = other
    elif key == "splits":
        attn.default_num_splits = lambda *a: value
    elif key in ("bs", "astages"):  # wraps the rule, so that "bs256+astages1" sets both
        rule = attn.key_tiling
        attn.key_tiling = lambda d: (value, rule(d)[1]) if key == "bs" else (rule(d)[0], value)
    elif key == "tile":
        kb = value * 1024
        matvec._TILE_BYTES, matvec._SHORT_TILE_BYTES, matvec._LONG_TILE_BYTES = kb, 2 * kb, kb // 2
    elif key in ("head", "short", "long"):  # one class of matvec tile budgets, in KB
        attr = {"head": "_TILE_BYTES", "short": "_SHORT_TILE_BYTES", "long": "_LONG_TILE_BYTES"}[key]
        setattr(matvec, attr, value * 1024)
    else:
        raise SystemExit(f"unknown ABLATE={what}: use attn, norm, bn2, bn4, warpsN, stagesN, splitsN, bsN, astagesN, tileN, headN, shortN or longN")


if __name__ == "__main__":
    for part in filter(None, os.environ.get("ABLATE", "").split("+")):
        ablate(part)
    results = [profile(p) for p in sys.argv[1:] or ["llama-3.2-1b", "smollm2-135m"]]
    if os.environ.get("PROFILE_JSON"):
        from sonic.bench.bandwidth import measure_read_bandwidth
        report = {"benchmark": "profile_step", "device": device_name("cuda"), "date": datetime.date.today().isoformat(),
                  "commit": git_commit(), "bandwidth_GBps": measure_read_bandwidth("cuda") / 1e9,
                  "options": {"SONIC_PDL": pdl_setting(), "ABLATE": os.environ.get("ABLATE", ""),
                              "prompt_tokens": PROMPT, "timed_steps": TIMED, "profiled_steps": STEPS},
                  "results": results}
        with open(os.environ["PROFILE_JSON"], "w") as f:
            json.dump(report, f, indent=2)
