"""Fit the projection's utilisation and fixed costs to what `sonic bench` measured.

Each run gives one equation, linear in the unknowns 1/mbu, overhead_us and (when some runs used several
GPUs) allreduce_us; least squares on the relative error weighs small and large models alike.
A result's `bytes_per_token` is per GPU; its GPU count is `gpus` (1 when absent). A tensor-parallel
report (`sonic bench --tp N`) gives its count as `tp` and each rank's bytes under `ranks`: the busiest
rank's are the GPU's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sonic.errors import SonicError
from sonic.estimate.catalog import load_shape
from sonic.estimate.hardware import GPU, find_gpu
from sonic.estimate.project import ALLREDUCE_US, Calibration, link_us, step_ms

RUNNER = "graph"  # the fast path; the eager reference runner is not what estimates describe


@dataclass(frozen=True)
class Run:
    label: str
    gpu: GPU
    gpus: int
    layers: int
    hidden: int
    bytes_per_token: float
    ms_per_token: float

    def predicted_ms(self, calibration: Calibration) -> float:
        link = link_us(self.hidden, self.gpus, self.gpu)
        return sum(step_ms(self.bytes_per_token, self.gpu.bandwidth, self.layers, self.gpus, calibration, link))


def load_runs(paths: list[str]) -> tuple[list[Run], list[str]]:
    """The graph-runner runs in these benchmark JSONs, and one line per result left out and why."""
    runs, skipped = [], []
    for path in map(Path, paths):
        try:
            report = json.loads(path.read_text())
            if report.get("benchmark", "decode") != "decode":  # per-task or profile reports: no decode runs
                skipped.append(f"{path.name}: a '{report['benchmark']}' report, not a decode benchmark")
                continue
            device, model, results = report["device"], report["model"], report["results"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise SonicError(f"cannot read benchmark result {path}: {e!r}; pass `sonic bench --json` files") from None
        gpu = find_gpu(device)
        if gpu is None:
            skipped.append(f"{path.name}: device '{device}' is not in the GPU table")
            continue
        try:
            shape = load_shape(model)
        except SonicError:
            skipped.append(f"{path.name}: model '{model}' is not a preset, so its layers are unknown")
            continue
        for r in results:
            if r.get("runner") != RUNNER:
                skipped.append(f"{path.name}: runner '{r.get('runner')}' (only {RUNNER} runs are fitted)")
                continue
            per_gpu = max(rank["bytes_per_token"] for rank in r["ranks"]) if r.get("ranks") else r["bytes_per_token"]
            runs.append(Run(path.stem, gpu, int(report.get("tp", report.get("gpus", 1))), shape.num_layers,
                            shape.hidden_size, per_gpu, r["ms_per_token"]))
    return runs, skipped


def fit(runs: list[Run], allreduce_us: float = ALLREDUCE_US) -> Calibration:
    """Least-squares mbu and overhead (and all-reduce latency, given multi-GPU runs) from measured runs."""
    import numpy as np

    multi = any(r.gpus > 1 for r in runs)
    unknowns = 3 if multi else 2
    need = (f"calibration needs runs of at least {unknowns} models with different bytes per layer"
            + (" and GPU counts" if multi else ""))
    if len(runs) < unknowns:
        raise SonicError(f"{need}; got {len(runs)} usable runs")
    rows, targets = [], []
    for r in runs:
        row = [r.bytes_per_token / r.gpu.bandwidth * 1e3, r.layers / 1e3]
        if multi:
            row.append(2 * r.layers / 1e3 if r.gpus > 1 else 0.0)
        target = r.ms_per_token - (2 * r.layers * link_us(r.hidden, r.gpus, r.gpu) / 1e3 if r.gpus > 1 else 0.0)
        rows.append([x / r.ms_per_token for x in row])
        targets.append(target / r.ms_per_token)
    solution, _, rank, _ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    if rank < unknowns:
        raise SonicError(f"{need}; these {len(runs)} runs cannot tell the parameters apart")
    if solution[0] <= 0:
        raise SonicError("the runs do not fit time = bytes / bandwidth + layers x overhead "
                         "(the fitted bandwidth is not positive): check the benchmark results")
    return Calibration(mbu=1 / solution[0], overhead_us=solution[1],
                       allreduce_us=solution[2] if multi else allreduce_us)


def format_calibration(runs: list[Run], calibration: Calibration, skipped: list[str]) -> str:
    multi = any(r.gpus > 1 for r in runs)
    width = max([len(r.label) for r in runs] + [3]) + 2
    lines = [f"fitted to {len(runs)} {RUNNER}-runner runs: mbu {calibration.mbu:.3f} of published bandwidth, "
             f"{calibration.overhead_us:.1f} us per layer, all-reduce {calibration.allreduce_us:.1f} us"
             + ("" if multi else " (not fitted: no multi-GPU runs)"),
             f"{'run':<{width}}{'GPU':>7}{'layers':>7}{'MB/tok':>9}{'measured':>10}{'predicted':>10}{'error':>8}"]
    for r in runs:
        measured, predicted = 1e3 / r.ms_per_token, 1e3 / r.predicted_ms(calibration)
        gpu = r.gpu.key if r.gpus == 1 else f"{r.gpus}x{r.gpu.key}"
        lines.append(f"{r.label:<{width}}{gpu:>7}{r.layers:>7}{r.bytes_per_token / 1e6:>9.0f}"
                     f"{measured:>10.1f}{predicted:>10.1f}{100 * (predicted / measured - 1):>+7.1f}%")
    lines += [f"skipped {line}" for line in skipped]
    lines.append("measured and predicted in tok/s; the defaults are CALIBRATED in sonic/estimate/project.py")
    return "\n".join(lines)
