"""`python -m sonic.mono`: build, schedule and validate a model's instruction list; write its header.

    python -m sonic.mono --model llama-3.2-1b --sms 132 --header mono_model.h
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from sonic.config import ModelConfig
from sonic.errors import SonicError
from sonic.mono.instructions import Tiling

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sonic.mono", description="Build, schedule and validate a "
                                "model's monokernel instruction list; write its C++ header.")
    p.add_argument("--model", required=True, help="a preset name, a Hugging Face folder, config.json or .gguf")
    p.add_argument("--rows", type=int, default=1, help="query rows: 1 (decode) or 2..8 (verification)")
    p.add_argument("--sms", type=int, default=132, help="SMs to schedule on (132 on an H100 or H200)")
    for name, value in Tiling().__dict__.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=value, help=f"tiling (default {value})")
    p.add_argument("--header", type=Path, help="write the generated C++ header here")
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="also run N randomised event simulations of 2 epochs (of a 2-layer copy)")
    return p


def load_config(model: str) -> ModelConfig:
    from sonic.presets import PRESETS, get_preset
    if model in PRESETS:
        return get_preset(model)
    path = Path(model)
    if not path.exists():
        raise SonicError(f"no preset or file named '{model}': pass a preset ({', '.join(PRESETS)}) "
                         "or the path of a model folder, config.json or .gguf file")
    return ModelConfig.from_gguf(path) if path.suffix == ".gguf" else ModelConfig.from_hf(path)


def run(args) -> int:
    from sonic.mono.builder import build_program
    from sonic.mono.codegen import generate_header, header_hash
    from sonic.mono.kernel import ring_pages
    from sonic.mono.schedule import list_schedule
    from sonic.mono.simulate import simulate
    from sonic.mono.validate import check_hazards, validate

    tiling = Tiling(**{name: getattr(args, name) for name in Tiling().__dict__})
    program = build_program(load_config(args.model), tiling, rows=args.rows)
    schedule = list_schedule(program, args.sms)
    config = program.config
    if config.num_hidden_layers > 2:
        # Layers repeat: a 2-layer copy has every hazard pattern (layer to layer, to the LM head,
        # epoch to epoch) at a fraction of the cost, so it stands in for the hazard check.
        validate(program, schedule, hazards=False)
        small = build_program(config.with_(num_hidden_layers=2), tiling, rows=args.rows)
        check_hazards(small)
        small_schedule = list_schedule(small, args.sms)
    else:
        validate(program, schedule)
        small, small_schedule = program, schedule
    for seed in range(args.simulate):
        simulate(small, small_schedule, epochs=2, seed=seed)
    ops = Counter(ins.op.name for ins in program.instructions)
    print(f"{program.config.name}: {len(program.instructions)} instructions, {len(program.counters)} counters, "
          f"{program.weight_bytes / 2**20:.1f} MiB of weight tiles")
    print("  " + ", ".join(f"{name} {n}" for name, n in ops.items()))
    print(f"  {args.sms} SMs: {schedule.makespan_us:.1f} us per token by the cost model "
          f"({1e6 / schedule.makespan_us:.0f} tok/s)")
    pages = ring_pages(program)
    fits = "" if pages >= 2 else " (the kernel needs 2: use fewer --rows)"
    print(f"  shared memory: {max(pages, 0)} weight pages of 16 KiB beside the activations of {args.rows} "
          f"row{'s' if args.rows > 1 else ''}{fits}")
    if args.header:
        args.header.write_text(generate_header(program))
        print(f"  header {args.header} ({header_hash(program)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return run(args)
    except SonicError as e:
        sys.stderr.write(f"sonic: error: {e}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
