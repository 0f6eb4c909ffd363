"""`sonic bench --tp N`: one request's decode over N ranks, what each rank reads, and the all-reduce
timed on the same ranks.

The engine is the one `sonic generate --tp` runs (this process is rank 0), timed as the single-device
bench times a runner. Bytes per token are counted per rank from the shard plan (dist/shard_cost.py);
`bytes_per_token` stays the whole model's, as one device would read it. After the decode runs, every
rank times the engine's own communicator on one hidden-size vector (what each of a layer's two
all-reduces sums at batch 1) with bench_allreduce's timing: eager calls on CPU, replays of one CUDA
graph of calls on GPUs, so there it leaves out the launch cost a decode step pays.

The ceiling: on GPUs every rank reads its own memory at the bandwidth measured on GPU 0, so the
busiest rank sets it; on a CPU the ranks share one memory system, so it is all ranks' bytes at the
measured bandwidth. A rank's `pct_of_ceiling` is its bytes against that bandwidth.
"""
from __future__ import annotations

import torch

from sonic.errors import SonicError

# (back-to-back calls per timing, timings per median): inside CUDA graphs they cost little; eager gloo
# calls on shared CPU cores take up to milliseconds each, and there the figure only checks the plumbing.
ALLREDUCE_TIMING = {"cuda": (100, 20), "cpu": (20, 5)}
ALLREDUCES_PER_LAYER = 2  # after attention and after the MLP


def check_tp_bench(args):
    """Flags that do not apply to one tensor-parallel request: one line naming the fix, before any work."""
    if args.tasks:
        raise SonicError("--tasks compares speculative decoding, which does not run with --tp yet: drop --tp")
    if args.compare:
        raise SonicError("--compare with --tp: a tensor-parallel run times one per-rank runner; "
                         "run sonic bench --tp once per --runner")
    if args.profile:
        raise SonicError("--profile times the monokernel, which does not run with --tp: drop --profile or --tp")
    if args.verify_cost:
        raise SonicError("--verify-cost times speculative verification, which does not run with --tp yet: "
                         "drop --verify-cost or --tp")


def run_tp_bench(args) -> dict:
    from sonic.bench.bandwidth import measure_read_bandwidth
    from sonic.bench.run import bench_prompt, decode_result, mean_context, report_header, report_options
    from sonic.dist.launch import tp_options
    from sonic.engine.generate import Engine, resolve_dtype

    device, runner = tp_options(args.model, args.tp, args.device, args.runner, args.tp_allreduce,
                                preset=args.preset)
    dtype = resolve_dtype(args.dtype, device)
    bandwidth = measure_read_bandwidth(device)  # before the workers start: nothing else reads memory
    engine = Engine.load_tp(args.model, device, dtype, runner, None, args.tp, None, args.tp_allreduce,
                            preset=args.preset)
    try:
        prompt = bench_prompt(engine.config.vocab_size, args)
        result = decode_result(engine.runner, runner, prompt, args)
        allreduce = time_allreduce(engine.runner, engine.config, args.tp_allreduce,
                                   "float32" if runner == "graph" else dtype, device)
    finally:
        engine.close()
    elem = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    result.update(tp_bytes(engine.config, args.tp, mean_context(prompt, args), elem, result["ms_per_token"],
                           bandwidth, shared=not device.startswith("cuda")))
    return {**report_header(report_name(args), device, getattr(torch, dtype)),
            "bandwidth_GBps": bandwidth / 1e9, "context": len(prompt) + args.output_tokens,
            "tp": args.tp, "communicator": args.tp_allreduce, "ceiling": ceiling_basis(device),
            "allreduce": allreduce, "options": report_options(), "results": [result]}


def report_name(args) -> str:
    if args.preset is not None:
        return args.preset
    from sonic.bench.run import source_name
    from sonic.weights.loader import resolve_model_path
    return source_name(resolve_model_path(args.model))


def ceiling_basis(device: str) -> str:
    if device.startswith("cuda"):
        return "each rank reads its bytes from its own GPU at the bandwidth measured on GPU 0; the busiest rank sets it"
    return "the ranks share one memory system: all ranks' bytes at the measured bandwidth"


def tp_bytes(config, world: int, context: float, elem: int, ms_per_token: float, bandwidth: float,
             shared: bool) -> dict:
    """The whole model's bytes per token, every rank's, and the ceiling they set."""
    from sonic.bench.run import pct_of_bandwidth, token_bytes
    from sonic.dist.shard_cost import rank_costs
    costs = rank_costs(config, world, context, elem)
    limit = sum(c.total for c in costs) if shared else max(c.total for c in costs)
    ranks = [{"rank": c.rank, "weight_bytes_per_token": c.weight_bytes, "kv_bytes_per_token": c.kv_bytes,
              "bytes_per_token": c.total, "pct_of_ceiling": pct_of_bandwidth(c.total, ms_per_token, bandwidth)}
             for c in costs]
    return {**token_bytes(config, context, elem), "ceiling_tok_s": bandwidth / limit,
            "pct_of_ceiling": pct_of_bandwidth(limit, ms_per_token, bandwidth), "ranks": ranks}


def time_allreduce(runner, config, communicator: str, dtype: str, device: str) -> dict:
    gpu = device.startswith("cuda")
    calls, repeats = ALLREDUCE_TIMING["cuda" if gpu else "cpu"]
    us = runner.time_allreduce(config.hidden_size, dtype, calls, repeats)
    how = "replays of one CUDA graph of the calls" if gpu else "eager calls"
    return {"communicator": communicator, "elements": config.hidden_size, "dtype": dtype,
            "us_per_call": us, "calls_per_layer": ALLREDUCES_PER_LAYER, "us_per_layer": ALLREDUCES_PER_LAYER * us,
            "calls": calls, "repeats": repeats,
            "method": f"rank 0's median over {repeats} timings of {calls} back-to-back all-reduces of one "
                      f"hidden-size vector ({how}), on the engine's own ranks and communicator, after the "
                      "decode runs"}


def format_tp_table(report: dict) -> str:
    from sonic.bench.run import format_table
    a, (result,) = report["allreduce"], report["results"]
    lines = [format_table(report),
             f"tensor parallel over {report['tp']} ranks, {report['communicator']} all-reduce; ceiling: "
             f"{report['ceiling']}",
             f"{'rank':<8}{'MB/tok':>9}{'% ceil':>8}"]
    lines += [f"{r['rank']:<8}{r['bytes_per_token'] / 1e6:>9.1f}{r['pct_of_ceiling']:>7.1f}%" for r in result["ranks"]]
    lines.append(f"all-reduce of {a['elements']} {a['dtype']} values: {a['us_per_call']:.1f} us per call, "
                 f"{a['us_per_layer']:.1f} us per layer ({a['calls_per_layer']} calls)")
    return "\n".join(lines)
