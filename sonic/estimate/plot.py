"""A chart of projected tok/s against GPU count, one line per GPU type, ceilings dashed."""
from __future__ import annotations

from pathlib import Path

from sonic.bench.plot import pyplot, save
from sonic.estimate.hardware import GPU
from sonic.estimate.project import Projection


def plot_projections(grid: dict[GPU, list[Projection]], weights: str, path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for gpu, row in grid.items():
        fit = [p for p in row if p.fits]  # configurations that do not fit in memory are left out
        if not fit:
            continue
        counts = [p.gpus for p in fit]
        line, = ax.plot(counts, [p.tok_s for p in fit], marker="o", label=gpu.key)
        ax.plot(counts, [p.ceiling_tok_s for p in fit], linestyle="--", color=line.get_color(), alpha=0.5)
    first = next(iter(grid.values()))
    ax.set_xscale("log", base=2)
    ax.set_xticks([p.gpus for p in first], [str(p.gpus) for p in first])
    ax.set_xlabel("GPUs (tensor parallel)")
    ax.set_ylabel("decode tok/s, one request")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{first[0].shape.name}, {weights}, context {first[0].context} "
                 "(dashed: bandwidth ceiling)", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)
