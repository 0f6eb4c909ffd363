"""Text for `sonic estimate`: one projection in detail, or a table over GPU types and counts."""
from __future__ import annotations

from sonic.estimate.hardware import GPU
from sonic.estimate.params import LABELS
from sonic.estimate.project import Projection, link_us


def _gpus(gpus: int, gpu: GPU) -> str:
    return f"{gpus} x {gpu.name}" if gpus > 1 else gpu.name


def format_projection(p: Projection, weights: str) -> str:
    shape, gpu, cost, cal = p.shape, p.gpu, p.cost, p.calibration
    lines = [f"{shape.name} on {_gpus(p.gpus, gpu)} ({gpu.bandwidth_GBps:.0f} GB/s, {gpu.memory_GB:.0f} GB"
             + (f", {gpu.interconnect} {gpu.link_GBps:.0f} GB/s" if p.gpus > 1 else "") + f"), context {p.context}",
             f"weights: {weights}", "",
             f"{'bytes read per token' + (' per GPU' if p.gpus > 1 else ''):<34}{'MB':>12}"]
    for name, size in cost.read.items():
        label = LABELS[name]
        if name == "routed_experts":
            label += f" ({shape.moe.top_k} of {shape.moe.experts})"
        lines.append(f"  {label:<32}{size / 1e6:>12.1f}")
    lines += [f"  {f'KV cache ({p.context} positions)':<32}{cost.kv / 1e6:>12.1f}",
              f"  {'total':<32}{cost.total / 1e6:>12.1f}", ""]
    fits = "" if p.fits else "  DOES NOT FIT: use more GPUs or a smaller --weights precision"
    lines.append(f"memory per GPU      {cost.held / 1e9:.1f} GB weights + {cost.kv / 1e9:.2f} GB KV cache "
                 f"of {gpu.memory_GB:.0f} GB{fits}")
    lines.append(f"bandwidth ceiling   {p.ceiling_tok_s:,.0f} tok/s ({cost.total / 1e6:,.0f} MB at "
                 f"{gpu.bandwidth_GBps:.0f} GB/s)")
    lines += [f"projected           {p.tok_s:,.0f} tok/s = {p.ms_per_token:.3f} ms/token:",
              f"  reading           {p.read_ms:.3f} ms at {100 * cal.mbu:.1f}% of {gpu.bandwidth_GBps:.0f} GB/s",
              f"  fixed             {p.fixed_ms:.3f} ms = {shape.num_layers} layers x {cal.overhead_us:.1f} us"]
    if p.gpus > 1:
        link = link_us(shape.hidden_size, p.gpus, gpu)
        lines.append(f"  all-reduce        {p.allreduce_ms:.3f} ms = {2 * shape.num_layers} x "
                     f"({cal.allreduce_us:.1f} us latency + {link:.2f} us over {gpu.interconnect})")
    return "\n".join(lines)


def format_table(grid: dict[GPU, list[Projection]], weights: str) -> str:
    """Projected tok/s, one row per GPU type and one column per GPU count; '-' where it does not fit."""
    first = next(iter(grid.values()))
    counts = [p.gpus for p in first]
    cal = first[0].calibration
    lines = [f"{first[0].shape.name}, context {first[0].context}: projected tok/s (mbu {cal.mbu:.2f}, "
             f"{cal.overhead_us:.1f} us per layer, all-reduce {cal.allreduce_us:.1f} us); '-' = does not fit",
             f"weights: {weights}",
             f"{'GPU':<14}" + "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>10}" for n in counts)]
    for gpu, row in grid.items():
        lines.append(f"{gpu.key:<14}" + "".join(f"{p.tok_s:>10,.0f}" if p.fits else f"{'-':>10}" for p in row))
    return "\n".join(lines)
