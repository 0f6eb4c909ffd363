"""The projection formula, the GPU table, and the `sonic estimate` command line."""
from pathlib import Path

import pytest

from sonic.cli import main
from sonic.estimate.catalog import load_shape
from sonic.estimate.cost import token_cost
from sonic.estimate.hardware import GPUS, find_gpu
from sonic.estimate.precision import precision_for
from sonic.estimate.project import Calibration, link_us, project

CAL = Calibration(mbu=0.8, overhead_us=10.0, allreduce_us=4.0)
RESULTS = Path(__file__).parents[2] / "bench" / "results"


def test_projection_adds_reading_fixed_and_allreduce_time():
    shape = load_shape("llama-3.1-70b")
    precision = precision_for(shape, "bf16")
    one = project(shape, precision, GPUS["h100"], 1, 1024, CAL)
    total = token_cost(shape, precision, 1, 1024).total
    assert one.ceiling_tok_s == pytest.approx(3350e9 / total)
    assert one.ms_per_token == pytest.approx(total / (0.8 * 3350e9) * 1e3 + 80 * 10.0 / 1e3)
    eight = project(shape, precision, GPUS["h100"], 8, 1024, CAL)
    link = 2 * 7 / 8 * 8192 * 2 / 450e9 * 1e6  # ring share of the bf16 hidden state over one NVLink direction
    assert link_us(8192, 8, GPUS["h100"]) == pytest.approx(link)
    assert eight.allreduce_ms == pytest.approx(80 * 2 * (4.0 + link) / 1e3)
    assert not one.fits and eight.fits  # 141 GB of bf16 weights
    assert eight.tok_s > 4 * one.tok_s


@pytest.mark.parametrize("device, key", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA GB200", "gb200"), ("NVIDIA B200", "b200"), ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"), ("AMD Instinct MI300X", "mi300x"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
])
def test_find_gpu_by_driver_name(device, key):
    assert find_gpu(device).key == key


def test_find_gpu_unknown():
    assert find_gpu("x86_64") is None and find_gpu("NVIDIA L40") is None


def run(capsys, *argv):
    code = main(["estimate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_single_projection(capsys):
    code, out, _ = run(capsys, "--model", "deepseek-v3", "--gpu", "h200", "--gpus", "8", "--mbu", "0.8")
    assert code == 0
    for words in ("routed experts (8 of 256)", "shared experts", "KV cache (4096 positions)", "LM head",
                  "fp8 (128x128 blocks", "bandwidth ceiling", "at 80.0% of 4800 GB/s", "all-reduce"):
        assert words in out


def test_cli_table_marks_what_does_not_fit(capsys):
    code, out, _ = run(capsys, "--model", "llama-3.1-405b", "--weights", "fp8", "--table", "--gpu", "h100,b200")
    lines = out.splitlines()
    assert code == 0 and "8 GPUs" in lines[2]
    assert lines[3].split()[:4] == ["h100", "-", "-", "-"]  # 405 GB of fp8 needs 8 H100s
    assert lines[4].split()[1:3] == ["-", "-"] and lines[4].split()[3] != "-"


def test_cli_calibrate_committed_results(capsys):
    code, out, _ = run(capsys, "--calibrate", *map(str, RESULTS.glob("*.json")))
    assert code == 0 and "llama-3.1-8b" in out and "mbu" in out


def test_cli_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "--model", "qwen3-235b-a22b", "--plot", str(tmp_path / "q.png"))
    assert code == 0 and (tmp_path / "q.png").stat().st_size > 0 and "wrote" in err


@pytest.mark.parametrize("argv, words", [
    ([], ["--model"]),
    (["--model", "llama-3.2-1b", "--gpu", "h900"], ["h900", "h100"]),
    (["--model", "llama-3.2-1b", "--gpus", "0"], ["--gpus"]),
    (["--model", "llama-3.2-1b", "--gpus", "1,2"], ["--table"]),
    (["--model", "llama-3.2-1b", "--mbu", "1.5"], ["--mbu"]),
    (["--model", "llama-3.2-1b", "--context", "-1"], ["--context"]),
    (["--model", "nope"], ["nope", "preset"]),
])
def test_cli_bad_input_is_one_line(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert all(word in lines[0] for word in words)
