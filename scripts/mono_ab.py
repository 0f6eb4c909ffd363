"""A/B of monokernel settings on one preset: decode speed, the profile, and the raw timestamps.

Usage: python scripts/mono_ab.py PRESET VARIANT [VARIANT ...]
A VARIANT is "base" or "key=value,key=value" of Tiling fields (o_rows_per_tile=32) and kernel macros
(MONO_IN_FLIGHT=6). --prebuild compiles the variants' kernels into the kernel cache (no GPU needed:
run it with SONIC_CACHE_DIR=.cuda_cache and carry that folder). On the GPU each variant decodes
256 tokens after a 128-token prompt (median of 3), then a profiling build of it runs once; a table
prints last and OUT/mono-ab-PRESET.pt keeps every variant's stamps, SM of each instruction and
summary (device, date, commit and read bandwidth in OUT/mono-ab-PRESET.json).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

import torch

from sonic.mono.instructions import Tiling

PROMPT, OUTPUT, REPEATS = 128, 256, 3


def parse_variant(spec: str, base: Tiling) -> tuple[Tiling, dict[str, int]]:
    if spec == "base":
        return base, {}
    fields, defines = {}, {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key.startswith("MONO_"):
            defines[key] = int(value)
        elif key in Tiling.__dataclass_fields__:
            fields[key] = value == "1" if key == "combine_in_o" else int(value)
        else:
            raise SystemExit(f"unknown setting {key!r} in {spec!r}: use a Tiling field or a MONO_* macro")
    return dataclasses.replace(base, **fields), defines


def prebuild(preset: str, specs: list[str]) -> None:
    from sonic.mono.builder import build_program
    from sonic.mono.kernel import compile_program
    from sonic.mono.runner import default_tiling
    from sonic.presets import get_preset
    config = get_preset(preset)
    for spec in specs:
        tiling, defines = parse_variant(spec, default_tiling(config))
        program = build_program(config, tiling, rows=1)
        compile_program(program)  # MonoRunner builds the tiling's default kernel first
        if defines:
            compile_program(program, defines)
        print(f"built {preset} {spec}", flush=True)


def run(preset: str, specs: list[str]) -> None:
    from sonic.bench.bandwidth import measure_read_bandwidth
    from sonic.bench.run import build_model, device_name, git_commit, time_decode
    from sonic.engine.sampling import SamplingParams
    from sonic.mono.launcher import MonoKernel
    from sonic.mono.profile import format_profile, summarize
    from sonic.mono.runner import MonoRunner, default_tiling

    out = Path(os.environ.get("OUT", "/tmp/sonic-out"))
    out.mkdir(parents=True, exist_ok=True)
    model, _ = build_model(preset, None, "cuda", torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (PROMPT,), generator=gen).tolist()
    bandwidth = measure_read_bandwidth()
    header = {"benchmark": "mono-ab", "model": preset, "dtype": "bfloat16", "device": device_name("cuda"),
              "date": datetime.date.today().isoformat(), "commit": git_commit(), "read_bandwidth_gbs": bandwidth / 1e9}
    saved, rows = {}, []
    for spec in specs:
        tiling, defines = parse_variant(spec, default_tiling(model.config))
        runner = MonoRunner(model, tiling=tiling)
        k = runner.kernel
        if defines:
            runner.kernel = MonoKernel(k.program, k.schedule, runner.packed, runner.cache, runner.cos, runner.sin,
                                       defines=defines, blob=k.buffers["blob"])
        timed = time_decode(runner, prompt, OUTPUT, REPEATS)
        runner.kernel = MonoKernel(k.program, k.schedule, runner.packed, runner.cache, runner.cos, runner.sin,
                                   profile=True, defines=defines, blob=k.buffers["blob"])
        tokens = list(runner.generate(prompt, OUTPUT, SamplingParams()))
        stamps = runner.kernel.profile_stamps()
        summary = summarize(k.program, stamps)
        print(f"\n{preset} {spec}: {timed['decode_tok_s']:.1f} tok/s")
        print(format_profile(spec, summary), flush=True)
        sm_of = k.schedule.sm_of()
        saved[spec] = {"stamps": stamps, "sm": torch.tensor([sm_of[i] for i in range(len(k.program.instructions))]),
                       "op": torch.tensor([int(i.op) for i in k.program.instructions]),
                       "layer": torch.tensor([i.layer for i in k.program.instructions]),
                       "bytes": torch.tensor([i.weight_bytes for i in k.program.instructions]),
                       "tokens": tokens, "summary": summary, "timed": timed}
        rows.append((spec, timed["decode_tok_s"], timed["ms_per_token"], summary["epoch_us"],
                     summary["layer_us"]["median"]))
        del runner
        torch.cuda.empty_cache()
        # Written after every variant: a run cut short keeps what it measured.
        report = {**header, "variants": {s: {"timed": v["timed"], "profile": v["summary"]} for s, v in saved.items()}}
        (out / f"mono-ab-{preset}.json").write_text(json.dumps(report, indent=1))
    torch.save(saved, out / f"mono-ab-{preset}.pt")
    base_tokens = saved[specs[0]]["tokens"]
    print(f"\n{preset} ({bandwidth / 1e9:.0f} GB/s read)")
    print(f"{'variant':<44}{'tok/s':>9}{'ms/tok':>9}{'epoch us':>10}{'layer us':>10}  tokens as the first")
    for spec, tok_s, ms, epoch, layer in rows:
        same = saved[spec]["tokens"] == base_tokens
        print(f"{spec:<44}{tok_s:>9.1f}{ms:>9.3f}{epoch:>10.1f}{layer:>10.1f}  {'yes' if same else 'NO'}")


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--prebuild"]
    if len(args) < 2:
        raise SystemExit(__doc__)
    if "--prebuild" in sys.argv:
        prebuild(args[0], args[1:])
    else:
        run(args[0], args[1:])


if __name__ == "__main__":
    main()
