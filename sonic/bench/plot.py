"""A bar chart of decode tok/s per runner against the bandwidth ceiling."""
from __future__ import annotations

from pathlib import Path

from sonic.errors import SonicError


def pyplot():
    """matplotlib.pyplot without a display, imported only when a plot is asked for."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SonicError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_report(report: dict, path: str | Path) -> Path:
    plt = pyplot()
    results = report["results"]
    names = [r["runner"] for r in results]
    speeds = [r["decode_tok_s"] for r in results]
    ceiling = results[0]["ceiling_tok_s"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, speeds, color="#3b7dd8")
    for bar, r in zip(bars, results):
        ax.annotate(f"{r['decode_tok_s']:.0f} tok/s\n{r['pct_of_ceiling']:.0f}%", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.axhline(ceiling, color="#d83b3b", linestyle="--", label=f"bandwidth ceiling {ceiling:.0f} tok/s")
    ax.set_ylabel("decode tok/s (batch 1)")
    ax.set_ylim(0, ceiling * 1.15)
    ax.set_title(f"{report['model']} on {report['device']}, {report['dtype']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return save(fig, path)
