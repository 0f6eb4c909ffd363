"""Calibration recovers the parameters that made synthetic results, and reads `sonic bench --json` files."""
import json

import pytest

from sonic.errors import SonicError
from sonic.estimate.calibrate import Run, fit, format_calibration, load_runs
from sonic.estimate.catalog import load_shape
from sonic.estimate.cost import token_cost
from sonic.estimate.hardware import GPUS
from sonic.estimate.project import Calibration

TRUE = Calibration(mbu=0.83, overhead_us=11.5, allreduce_us=5.2)
MODELS = ("smollm2-135m", "llama-3.2-1b", "qwen3-8b", "llama-3.1-70b")


def synthetic_run(model: str, gpu: str, gpus: int, calibration: Calibration = TRUE) -> Run:
    shape = load_shape(model)
    bytes_per_token = token_cost(shape, gpus=gpus, context=384).total
    run = Run(model, GPUS[gpu], gpus, shape.num_layers, shape.hidden_size, bytes_per_token, 0.0)
    return Run(model, GPUS[gpu], gpus, shape.num_layers, shape.hidden_size, bytes_per_token,
               run.predicted_ms(calibration))


def test_fit_recovers_utilisation_and_overhead():
    runs = [synthetic_run(m, gpu, 1) for m in MODELS for gpu in ("h100", "mi300x")]
    got = fit(runs, allreduce_us=1.0)
    assert got.mbu == pytest.approx(TRUE.mbu, rel=1e-9)
    assert got.overhead_us == pytest.approx(TRUE.overhead_us, rel=1e-9)
    assert got.allreduce_us == 1.0  # single-GPU runs say nothing about it


def test_fit_recovers_allreduce_from_multi_gpu_runs():
    runs = [synthetic_run(m, "h200", n) for m in MODELS for n in (1, 2, 8)]
    got = fit(runs)
    assert (got.mbu, got.overhead_us, got.allreduce_us) == pytest.approx(
        (TRUE.mbu, TRUE.overhead_us, TRUE.allreduce_us), rel=1e-9)


def test_fit_needs_runs_that_tell_parameters_apart():
    with pytest.raises(SonicError, match="at least 2 models"):
        fit([synthetic_run("llama-3.2-1b", "h100", 1)])
    with pytest.raises(SonicError, match="cannot tell"):
        fit([synthetic_run("llama-3.2-1b", "h100", 1)] * 3)


def bench_json(path, model, device, runs, gpus=None):
    report = {"model": model, "device": device, "results": [
        {"runner": runner, "bytes_per_token": b, "ms_per_token": ms} for runner, b, ms in runs]}
    if gpus:
        report["gpus"] = gpus
    path.write_text(json.dumps(report))
    return str(path)


def test_load_runs_reads_graph_runs_of_known_gpus_and_presets(tmp_path):
    paths = []
    for model in MODELS:
        r = synthetic_run(model, "h100", 1)
        paths.append(bench_json(tmp_path / f"{model}.json", model, "NVIDIA H100 80GB HBM3",
                                [("graph", r.bytes_per_token, r.ms_per_token), ("ref", r.bytes_per_token, 99.0)]))
    paths.append(bench_json(tmp_path / "cpu.json", "llama-3.2-1b", "x86_64", [("ref", 1e9, 30.0)]))
    paths.append(bench_json(tmp_path / "own.json", "my-model", "NVIDIA H200", [("graph", 1e9, 1.0)]))
    runs, skipped = load_runs(paths)
    assert [r.label for r in runs] == list(MODELS) and {r.gpu.key for r in runs} == {"h100"}
    assert len(skipped) == len(MODELS) + 2
    got = fit(runs)
    assert (got.mbu, got.overhead_us) == pytest.approx((TRUE.mbu, TRUE.overhead_us), rel=1e-9)
    text = format_calibration(runs, got, skipped)
    assert "llama-3.1-70b" in text and "+0.0%" in text and "x86_64" in text and "my-model" in text


def test_load_runs_rejects_files_that_are_not_results(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SonicError, match="bad.json"):
        load_runs([str(tmp_path / "bad.json")])
