"""`sonic estimate --allreduce-from`: the latency a `sonic bench --tp --json` report measured, or one clear line."""
import json

import pytest

from sonic.cli import main
from sonic.estimate.calibrate import load_runs

REPORT = {"model": "llama-3.1-8b", "device": "NVIDIA H200", "tp": 2, "communicator": "one-shot",
          "allreduce": {"communicator": "one-shot", "elements": 4096, "us_per_call": 6.5, "us_per_layer": 13.0},
          "results": [{"runner": "graph", "bytes_per_token": 16e9, "ms_per_token": 5.0,
                       "ranks": [{"rank": 0, "bytes_per_token": 8.1e9}, {"rank": 1, "bytes_per_token": 8.2e9}]}]}


def write(path, report) -> str:
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return str(path)


def test_the_measured_latency_replaces_the_default(tmp_path, capsys):
    path = write(tmp_path / "tp.json", REPORT)
    assert main(["estimate", "--model", "llama-3.1-8b", "--gpu", "h200", "--gpus", "2", "--allreduce-from", path]) == 0
    out, err = capsys.readouterr()
    assert "64 x (6.5 us latency" in out, out
    assert "one-shot all-reduce of 4096 values over 2 ranks on NVIDIA H200" in err


@pytest.mark.parametrize("content, words", [
    ({"model": "x", "results": []}, ["holds no all-reduce figure", "sonic bench --tp N --json"]),
    ({"allreduce": {"us_per_call": "fast"}}, ["holds no all-reduce figure"]),
    ([1, 2], ["holds no all-reduce figure"]),
    ("not json", ["is not a JSON report"]),
    (None, ["cannot read --allreduce-from", "No such file"]),
])
def test_files_without_a_figure_are_one_line(tmp_path, capsys, content, words):
    path = str(tmp_path / "missing.json") if content is None else write(tmp_path / "r.json", content)
    assert main(["estimate", "--model", "llama-3.1-8b", "--gpus", "2", "--allreduce-from", path]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sonic: error:"), lines
    assert all(w in lines[0] for w in words), lines[0]


def test_both_flags_are_one_line(tmp_path, capsys):
    path = write(tmp_path / "tp.json", REPORT)
    assert main(["estimate", "--model", "llama-3.1-8b", "--allreduce-us", "3", "--allreduce-from", path]) == 2
    assert "give --allreduce-us or --allreduce-from, not both" in capsys.readouterr().err


def test_calibration_reads_a_tensor_parallel_report_per_gpu(tmp_path):
    (run,), skipped = load_runs([write(tmp_path / "tp.json", REPORT)])
    assert not skipped and run.gpus == 2 and run.bytes_per_token == 8.2e9  # the busiest rank's
