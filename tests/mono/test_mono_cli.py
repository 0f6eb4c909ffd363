"""`python -m sonic.mono`: summary, header and validation for a preset or a config; errors in one line."""
import json

from mono_helpers import tiny

from sonic.mono.__main__ import main
from sonic.mono.builder import build_program
from sonic.mono.codegen import generate_header
from sonic.mono.instructions import Tiling


def test_a_config_file_is_built_validated_simulated_and_written(tmp_path, capsys):
    config = tiny("qwen3")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    header = tmp_path / "mono_model.h"
    assert main(["--model", str(tmp_path), "--sms", "6", "--kv-splits", "2", "--rows", "2",
                 "--simulate", "2", "--header", str(header)]) == 0
    out = capsys.readouterr().out
    program = build_program(config.with_(name="qwen3"), Tiling(kv_splits=2), rows=2)
    assert f"{len(program.instructions)} instructions" in out and "6 SMs:" in out
    assert header.read_text() == generate_header(program)


def test_a_preset_with_many_layers_is_validated(capsys):
    assert main(["--model", "smollm2-135m"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m: 6326 instructions" in out and "13 weight pages of 16 KiB beside the activations of 1 row\n" in out
    assert main(["--model", "llama-3.1-8b", "--rows", "8"]) == 0
    assert "0 weight pages of 16 KiB beside the activations of 8 rows (the kernel needs 2" in capsys.readouterr().out


def test_bad_input_is_one_line(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sonic: error: no preset or file named") and err.count("\n") == 1
    assert main(["--model", "smollm2-135m", "--rows", "9"]) == 2
    assert "invalid monokernel batch of 9 rows" in capsys.readouterr().err
