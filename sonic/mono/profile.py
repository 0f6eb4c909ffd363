"""Where the monokernel's time goes: per-instruction timestamps of a profiling build, summed up.

A profiling kernel (`MonoKernel(..., profile=True)`) records, for every instruction of the launch's
last epoch: when its wait began, when its inputs were ready, when its matvec inputs were staged,
when its matvec was done, when it finished, when the producer issued its last weight page, how
long the matvec waited for pages, when thread 0 ended the op, and how long the producer waited for
a free page (the consumers behind: "full"), for its copies in flight ("land": HBM behind) and for a
release ("pause") while it issued the instruction's pages. The time after the matvec splits into
the epilogue (to the op's end) and the release (the barrier of every consumer thread and the
signal). Attention has no matvec: its "stage" is its q's round trip and its "matvec" the pass over
its keys. `summarize` turns that into what `sonic bench --profile` reports.
"""
from __future__ import annotations

import statistics

import torch

from sonic.mono.instructions import Op, Program

LAYER_END_OPS = (Op.DOWN_PROJ, Op.RESIDUAL)


def summarize(program: Program, stamps: torch.Tensor) -> dict:
    """{"epoch_us", "layer_us": {median, min, max}, "ops": {name: {count, wait_us, busy_us, stage_us,
    matvec_us, epilogue_us, release_us, page_wait_us, ring_full_us, landing_us, paused_us, weight_kib}},
    "phases"} from stamps [instructions, 11] in ns (8 columns: no producer waits)."""
    st = stamps.double()
    start, ready, staged, done_mv, end = st[:, 0], st[:, 1], st[:, 2], st[:, 3], st[:, 4]
    page_wait, op_done = st[:, 6], st[:, 7]
    zero = torch.zeros_like(start)
    ring_full, landing = (st[:, 8], st[:, 9]) if st.shape[1] > 9 else (zero, zero)
    paused = st[:, 10] if st.shape[1] > 10 else zero
    ops = {}
    for op in Op:
        idx = [i for i, ins in enumerate(program.instructions) if ins.op == op]
        if not idx:
            continue
        i = torch.tensor(idx)
        mean = lambda x: round(float(x[i].mean()) / 1e3, 3)  # noqa: E731
        ops[op.name] = {"count": len(idx), "wait_us": mean(ready - start), "busy_us": mean(end - ready),
                        "stage_us": mean(staged - ready), "matvec_us": mean(done_mv - staged),
                        "epilogue_us": mean(op_done - done_mv), "release_us": mean(end - op_done),
                        "page_wait_us": mean(page_wait), "ring_full_us": mean(ring_full),
                        "landing_us": mean(landing), "paused_us": mean(paused),
                        "weight_kib": round(sum(program.instructions[j].weight_bytes for j in idx) / len(idx) / 1024, 1)}
    layers = program.config.num_hidden_layers
    ends = [max(float(end[j]) for j, ins in enumerate(program.instructions)
                if ins.layer == layer and ins.op in LAYER_END_OPS) for layer in range(layers)]
    steps = [(b - a) / 1e3 for a, b in zip(ends, ends[1:])] or [0.0]
    return {"epoch_us": round(float(end.max() - start.min()) / 1e3, 1),
            "layer_us": {"median": round(statistics.median(steps), 1), "min": round(min(steps), 1),
                         "max": round(max(steps), 1)},
            "ops": ops, "phases": phases(program, ready, end, ends)}


def phases(program: Program, ready: torch.Tensor, end: torch.Tensor, ends: list[float]) -> dict:
    """{op: {"first_ready_us", "last_end_us"}} of a layer's instruction types, medians over the layers
    after the first, from the end of the layer before: the chain of waits that paces a layer."""
    by_op: dict[str, dict[int, list[int]]] = {}
    for i, ins in enumerate(program.instructions):
        if 0 < ins.layer < len(ends) and ins.op not in (Op.LM_HEAD, Op.SAMPLE, Op.EMBED):
            by_op.setdefault(ins.op.name, {}).setdefault(ins.layer, []).append(i)
    out = {}
    for name, layers in by_op.items():
        first = [float(ready[idx].min()) - ends[layer - 1] for layer, idx in layers.items()]
        last = [float(end[idx].max()) - ends[layer - 1] for layer, idx in layers.items()]
        out[name] = {"first_ready_us": round(statistics.median(first) / 1e3, 2),
                     "last_end_us": round(statistics.median(last) / 1e3, 2)}
    return out


def format_profile(runner: str, summary: dict) -> str:
    layer = summary["layer_us"]
    lines = [f"{runner}: one token in {summary['epoch_us']:.1f} us inside the kernel; a layer every "
             f"{layer['median']:.1f} us (min {layer['min']:.1f}, max {layer['max']:.1f})",
             f"  {'instruction':<13}{'count':>7}{'KiB':>7}{'wait':>8}{'busy':>8}{'stage':>8}{'matvec':>8}"
             f"{'epilog':>8}{'release':>8}{'pages':>8}{'full':>7}{'land':>7}{'pause':>7}   (us, mean per instruction)"]
    for name, o in summary["ops"].items():
        lines.append(f"  {name:<13}{o['count']:>7}{o['weight_kib']:>7.0f}{o['wait_us']:>8.2f}{o['busy_us']:>8.2f}"
                     f"{o['stage_us']:>8.2f}{o['matvec_us']:>8.2f}{o['epilogue_us']:>8.2f}{o['release_us']:>8.2f}"
                     f"{o['page_wait_us']:>8.2f}{o.get('ring_full_us', 0):>7.2f}{o.get('landing_us', 0):>7.2f}"
                     f"{o.get('paused_us', 0):>7.2f}")
    if summary.get("phases"):
        lines.append("  a layer's chain, us after the layer before ended (median over layers): "
                     + ", ".join(f"{name} {ph['first_ready_us']:.1f}-{ph['last_end_us']:.1f}"
                                 for name, ph in summary["phases"].items()))
    return "\n".join(lines)
