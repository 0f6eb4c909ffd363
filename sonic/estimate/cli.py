"""`sonic estimate`: its flags, and the command that prints, tabulates, plots or calibrates projections."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from sonic.errors import SonicError
from sonic.estimate.hardware import GPUS, get_gpu
from sonic.estimate.precision import WEIGHT_CHOICES
from sonic.estimate.project import CALIBRATED, Calibration

TABLE_GPUS = "h100,h200,b200,mi300x"
TABLE_COUNTS = "1,2,4,8"


def add_estimate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("estimate", help="bytes per token, bandwidth ceiling and projected decode speed on N GPUs")
    p.add_argument("--model", help="a preset (see --list), a Hugging Face model folder or a config.json")
    p.add_argument("--gpu", metavar="GPU[,GPU...]",
                   help=f"GPU type (default h100; with --table or --plot: {TABLE_GPUS}); see --list")
    p.add_argument("--gpus", metavar="N[,N...]",
                   help=f"GPU count, tensor parallel (default 1; with --table or --plot: {TABLE_COUNTS})")
    p.add_argument("--weights", default="native", choices=WEIGHT_CHOICES,
                   help="native (the checkpoint's quantization_config, default) or a precision to assume")
    p.add_argument("--context", type=int, default=4096, help="positions in the KV cache (default 4096)")
    p.add_argument("--mbu", type=float, help=f"share of the bandwidth reached (default {CALIBRATED.mbu:.2f}, "
                                             "calibrated on our benchmarks)")
    p.add_argument("--overhead-us", type=float,
                   help=f"fixed time per layer in microseconds (default {CALIBRATED.overhead_us:.1f}, calibrated)")
    p.add_argument("--allreduce-us", type=float,
                   help=f"latency of one all-reduce in microseconds (default {CALIBRATED.allreduce_us:.1f})")
    p.add_argument("--allreduce-from", metavar="JSON",
                   help="take the all-reduce latency that `sonic bench --tp N --json` measured, from its report")
    p.add_argument("--table", action="store_true", help="tok/s for each GPU type and count")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="draw tok/s against GPU count (default file: MODEL-estimate.png)")
    p.add_argument("--calibrate", nargs="+", metavar="JSON",
                   help="fit --mbu and --overhead-us to `sonic bench --json` results, e.g. bench/results/*.json")
    p.add_argument("--list", action="store_true", help="list the presets and GPUs")
    return p


def calibration_from(args) -> Calibration:
    changes = {"mbu": args.mbu, "overhead_us": args.overhead_us, "allreduce_us": args.allreduce_us}
    if getattr(args, "allreduce_from", None):
        if args.allreduce_us is not None:
            raise SonicError("give --allreduce-us or --allreduce-from, not both")
        from sonic.estimate.measured import measured_allreduce
        changes["allreduce_us"], where = measured_allreduce(args.allreduce_from)
        sys.stderr.write(f"all-reduce {changes['allreduce_us']:.1f} us, as measured in {args.allreduce_from} "
                         f"({where})\n")
    if args.mbu is not None and not 0 < args.mbu <= 1:
        raise SonicError(f"--mbu {args.mbu} must be a share of the bandwidth, above 0 and at most 1")
    for flag in ("overhead_us", "allreduce_us"):
        if changes[flag] is not None and changes[flag] < 0:
            raise SonicError(f"--{flag.replace('_', '-')} {changes[flag]} must not be negative")
    return replace(CALIBRATED, **{k: v for k, v in changes.items() if v is not None})


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SonicError(f"--gpus '{text}' must be whole numbers of GPUs, at least 1, separated by commas")
    return counts


def format_list() -> str:
    from sonic.estimate.catalog import preset_names
    lines = [f"presets: {', '.join(preset_names())}", "GPUs:"]
    for g in GPUS.values():
        lines.append(f"  {g.key:<14}{g.name:<32}{g.bandwidth_GBps:>6.0f} GB/s{g.memory_GB:>6.0f} GB   "
                     f"{g.interconnect} {g.link_GBps:.0f} GB/s")
    return "\n".join(lines)


def cmd_estimate(args) -> int:
    if args.list:
        print(format_list())
        return 0
    calibration = calibration_from(args)
    if args.calibrate:
        from sonic.estimate.calibrate import fit, format_calibration, load_runs
        runs, skipped = load_runs(args.calibrate)
        print(format_calibration(runs, fit(runs, calibration.allreduce_us), skipped))
        return 0
    if not args.model:
        raise SonicError("sonic estimate needs --model PRESET|FOLDER|config.json (or --calibrate JSON..., --list)")
    if args.context < 0:
        raise SonicError(f"--context {args.context} must not be negative")
    from sonic.estimate.catalog import load_shape
    from sonic.estimate.precision import precision_for
    from sonic.estimate.project import project
    shape = load_shape(args.model)
    precision = precision_for(shape, args.weights)
    grid_wanted = args.table or args.plot is not None
    gpus = [get_gpu(key) for key in (args.gpu or (TABLE_GPUS if grid_wanted else "h100")).split(",")]
    counts = parse_counts(args.gpus or (TABLE_COUNTS if grid_wanted else "1"))
    if not grid_wanted:
        if len(gpus) > 1 or len(counts) > 1:
            raise SonicError("--gpu and --gpus take one value each unless --table or --plot is given")
        from sonic.estimate.report import format_projection
        print(format_projection(project(shape, precision, gpus[0], counts[0], args.context, calibration),
                                precision.describe()))
        return 0
    grid = {gpu: [project(shape, precision, gpu, n, args.context, calibration) for n in counts] for gpu in gpus}
    if args.plot is not None:
        from sonic.estimate.plot import plot_projections
        png = plot_projections(grid, f"{args.weights} weights", args.plot or f"{shape.name}-estimate.png")
        sys.stderr.write(f"wrote {png}\n")
    from sonic.estimate.report import format_table
    print(format_table(grid, precision.describe()))
    return 0
