"""`python -m sonic.mono.prebuild`: the builds MonoRunner will load, compiled once each; errors in one line."""
from sonic.kernels.cuda import build
from sonic.mono import kernel, prebuild
from sonic.mono.builder import build_program
from sonic.mono.runner import default_tiling, verify_rows
from sonic.presets import get_preset


def test_the_decode_and_every_verification_build_are_compiled(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(build, "nvcc_path", lambda: "/usr/bin/nvcc")
    monkeypatch.setattr(kernel, "compile_program", lambda program, defines=None: built.append(program) or b"")
    assert prebuild.main(["llama-3.2-1b", "smollm2-135m", "--jobs", "2"]) == 0
    config = get_preset("llama-3.2-1b")
    decode = build_program(config, default_tiling(config, 132))
    widest = verify_rows(decode)
    assert widest >= 2
    mine = sorted(p.rows for p in built if p.config.name == "llama-3.2-1b")
    assert mine == list(range(1, widest + 1))
    assert any(p == decode for p in built)  # exactly the program the runner builds
    assert len(built) == len(mine) + widest  # smollm2-135m has as many builds
    assert f"building {len(built)} monokernels" in capsys.readouterr().out

    built.clear()
    assert prebuild.main(["smollm2-135m", "--no-verify"]) == 0
    assert [p.rows for p in built] == [1]


def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(build, "nvcc_path", lambda: "/usr/bin/nvcc")
    assert prebuild.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sonic: error: no preset or file named") and err.count("\n") == 1
    monkeypatch.setattr(build, "nvcc_path", lambda: None)
    assert prebuild.main(["smollm2-135m"]) == 2
    assert "nvcc was not found" in capsys.readouterr().err
