"""Sweep the M = 1 matvec block sizes on the weight shapes of some presets, on a GPU.

Each candidate runs as a CUDA graph of LAYERS calls over distinct weights (far more bytes than L2
holds), so the figure is what a decode step sees: µs per call and GB/s of weight read.
Usage: python scripts/tune_matvec.py [preset ...]; prints the best configs per shape, current one marked.
TUNE_JSON=path also writes every timing (µs and GB/s per config per shape) there.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

import torch
import triton

from sonic.kernels.triton.matvec import MatvecConfig, fused_matvec, matvec_config
from sonic.presets import get_preset

LAYERS = 16
COMPILE_ONLY = os.environ.get("TUNE_COMPILE_ONLY") == "1"  # fill the kernel cache (run in parallel)


def shapes(preset: str):
    c = get_preset(preset)
    h, i = c.hidden_size, c.intermediate_size
    return {f"{preset} qkv": (c.q_size + 2 * c.kv_size, h, False, True),
            f"{preset} o": (h, c.q_size, False, False),
            f"{preset} gate_up": (i, h, True, True),
            f"{preset} down": (h, i, False, False),
            f"{preset} lm_head": (c.vocab_size, h, False, True)}


def weights(n, k, silu):
    rows = 2 * n if silu else n
    layers = max(2, min(LAYERS, (1 << 30) // (rows * k * 2)))
    return [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]


def time_config(ws, n, k, silu, norm, cfg: MatvecConfig | None) -> float:
    layers = len(ws)
    x = torch.randn(1, k, device="cuda")
    nw = torch.randn(k, device="cuda", dtype=torch.bfloat16) if norm else None
    out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)

    def run():
        for w in ws:
            fused_matvec(x, w, out, norm_weight=nw, silu_mul=silu, config=cfg)
    run()
    torch.cuda.synchronize()
    if COMPILE_ONLY:
        return 0.0
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(4):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (4 * layers))
    return sorted(times)[len(times) // 2]


def candidates(n, k, silu):
    tiles = 2 if silu else 1
    for bn, bk, warps, stages in itertools.product((1, 2, 4, 8, 16, 32), (128, 256, 512, 1024, 2048),
                                                   (4, 8), (1, 3)):
        tile_bytes = bn * bk * 2 * tiles
        if bk > triton.next_power_of_2(k) or not 4096 <= tile_bytes <= 65536:
            continue
        if bn * bk // (warps * 32) < 8 or triton.cdiv(n, bn) < 132:
            continue
        yield MatvecConfig(bn, bk, warps, stages)


def main(presets, only: str | None = None):
    table = {}
    for name, (n, k, silu, norm) in {s: v for p in presets for s, v in shapes(p).items()}.items():
        if only and only != name:
            continue
        rows = 2 * n if silu else n
        mb = rows * k * 2 / 1e6
        base = matvec_config(1, n, k, silu_mul=silu)
        ws = weights(n, k, silu)
        results = [(time_config(ws, n, k, silu, norm, None), base)]
        for cfg in candidates(n, k, silu):
            if cfg != base:
                try:
                    results.append((time_config(ws, n, k, silu, norm, cfg), cfg))
                except Exception as e:  # out of resources: skip
                    print(f"  skip {cfg}: {type(e).__name__}")
        if COMPILE_ONLY:
            continue
        results.sort(key=lambda r: r[0])
        table[name] = {"N": n, "K": k, "silu_mul": silu, "MB": round(mb, 2),
                       "current": [base.block_n, base.block_k, base.num_warps, base.num_stages],
                       "us": [[cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, round(us, 3)]
                              for us, cfg in results]}
        print(f"\n{name}: N={n} K={k} {mb:.1f} MB; current {results.index(next(r for r in results if r[1] == base))}"
              f" of {len(results)}")
        for us, cfg in results[:6] + [r for r in results if r[1] == base]:
            mark = " <- current" if cfg == base else ""
            print(f"  {us:8.2f} us {mb * 1e3 / us:7.0f} GB/s  bn={cfg.block_n:<3} bk={cfg.block_k:<5}"
                  f" warps={cfg.num_warps} stages={cfg.num_stages}{mark}")
    if os.environ.get("TUNE_JSON") and not COMPILE_ONLY:
        with open(os.environ["TUNE_JSON"], "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "layers_per_graph": LAYERS, "shapes": table}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:] or ["llama-3.2-1b", "smollm2-135m"], os.environ.get("TUNE_SHAPE"))
