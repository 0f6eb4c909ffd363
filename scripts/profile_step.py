"""Where one decode step of the graph runner spends its time: per-kernel GPU time from the profiler.

Usage (on a GPU machine): python scripts/profile_step.py [preset ...]
Prints, per preset, the step time of graph replays and a table of kernels (calls and µs per step).
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

import torch

from sonic.bench.run import build_model
from sonic.engine.runner_graph import GraphRunner
from sonic.engine.sampling import SamplingParams

PROMPT, STEPS = 128, 50


def step_time_ms(graph, runner, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def profile(preset: str):
    model, _ = build_model(preset, None, "cuda", torch.bfloat16)
    runner = GraphRunner(model, max_len=1024)
    runner.reserve(PROMPT + 4 * STEPS + 64)
    prompt = torch.randint(0, model.config.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0))
    runner.prefill(prompt.tolist())
    runner.tokens[:1].fill_(int(prompt[-1]))
    runner.positions[:1].fill_(PROMPT)
    graph = runner._graph(SamplingParams())
    step_time_ms(graph, runner, 10)
    ms = step_time_ms(graph, runner, STEPS)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            graph.replay()
        torch.cuda.synchronize()
    kernels = defaultdict(lambda: [0, 0.0])
    gpu = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    per_step = len(gpu) // STEPS
    seq = sorted(gpu, key=lambda ev: ev.time_range.start)[per_step * (STEPS // 2):per_step * (STEPS // 2 + 1)]
    print("one step, in order (us): " + " ".join(f"{ev.name[1:5]}:{ev.device_time:.1f}" for ev in seq[:16])
          + " ... " + " ".join(f"{ev.name[1:5]}:{ev.device_time:.1f}" for ev in seq[-4:]))
    for ev in gpu:
        if True:
            k = kernels[ev.name[:48]]
            k[0] += 1
            k[1] += ev.device_time
    total = sum(v[1] for v in kernels.values()) / STEPS
    print(f"\n{preset}: {ms * 1e3:.1f} us/step ({1e3 / ms:.0f} tok/s), kernels sum {total:.1f} us/step, "
          f"PDL={os.environ.get('SONIC_PDL', 'default')}")
    print(f"{'kernel':<50}{'calls':>7}{'us/step':>9}{'us/call':>9}")
    for name, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<50}{n / STEPS:>7.0f}{t / STEPS:>9.1f}{t / n:>9.2f}")


def old_matvec_rule():
    """The M = 1 block rule before tuning (many programs, 16 KB tiles), for comparison."""
    import triton
    from sonic.kernels.triton import matvec
    new = matvec.matvec_config

    def rule(M, N, K, *, silu_mul=False, norm=False, elem_bytes=2, argmax=False):
        if M > 1 or argmax:
            return new(M, N, K, silu_mul=silu_mul, norm=norm, elem_bytes=elem_bytes, argmax=argmax)
        tiles = 2 if silu_mul else 1
        block_n = next((b for b in (16, 8, 4) if triton.cdiv(N, b) >= 8 * 132), 2)
        block_k = max(64, min(16384 // (elem_bytes * block_n * tiles), 2048, triton.next_power_of_2(K)))
        return matvec.MatvecConfig(1, block_n, block_k, 4, 3)
    matvec.matvec_config = rule


def ablate(what: str):
    """Leave a part of the step out (the tokens are then wrong) to see what it costs on the critical path."""
    import triton.language as tl
    from sonic.kernels.triton import decode_attention as attn, matvec
    if what == "attn":
        attn.decode_attention = lambda *a, **k: None
    elif what == "norm":
        full = matvec.fused_matvec
        matvec.fused_matvec = lambda *a, norm_weight=None, **k: full(*a, **k)
    elif what == "split1":
        attn.MIN_SPLIT_TILES = tl.constexpr(1)
    elif what.startswith("bn"):  # bn2: twice the rows per program at M = 1
        factor, rule = int(what[2:]), matvec.matvec_config

        def wider(M, N, K, **kw):
            cfg = rule(M, N, K, **kw)
            return matvec.MatvecConfig(1, cfg.block_n * factor, cfg.block_k, cfg.num_warps, cfg.num_stages) \
                if M == 1 else cfg
        matvec.matvec_config = wider


if __name__ == "__main__":
    if os.environ.get("OLD_MATVEC_RULE") == "1":
        old_matvec_rule()
    if os.environ.get("ABLATE"):
        ablate(os.environ["ABLATE"])
    for preset in sys.argv[1:] or ["llama-3.2-1b", "smollm2-135m"]:
        profile(preset)
