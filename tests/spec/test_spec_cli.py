"""Speculation from the command line: same greedy text, stats in the summary, one-line errors, bench --tasks."""
import json

import pytest

from sonic.config import ModelConfig
from test_cli import assert_user_error, run
from spec_helpers import single_thread  # noqa: F401

PROMPT = "Repeat after me: one two three, one two three, one two three."


def generate(capsys, model_dir, *flags):
    code, out, err = run(capsys, "generate", PROMPT, "--model", str(model_dir), "--max-tokens", "24", "--raw",
                         *flags)
    assert code == 0, err
    return out, err


@pytest.mark.parametrize("flags", [["--speculative", "ngram", "--spec-max-tokens", "3"],
                                   ["--speculative", "auto"],
                                   ["--speculative", "draft", "--spec-max-tokens", "5", "--draft-model", "SELF"]])
def test_speculative_text_is_plain_text(capsys, tiny_model_dir, flags):
    flags = [str(tiny_model_dir) if f == "SELF" else f for f in flags]
    plain, plain_err = generate(capsys, tiny_model_dir)
    out, err = generate(capsys, tiny_model_dir, *flags)
    assert out == plain
    assert "speculative:" in err and "accepted" in err and "speculative" not in plain_err


def test_stop_string_with_speculation(capsys, tiny_model_dir):
    full, _ = generate(capsys, tiny_model_dir)
    stop = full.strip()[4:7]
    plain, plain_err = generate(capsys, tiny_model_dir, "--stop", stop)
    out, err = generate(capsys, tiny_model_dir, "--stop", stop, "--speculative", "draft", "--draft-model",
                        str(tiny_model_dir))
    assert out == plain and stop not in out
    count = lambda e: e.split("output ")[1].split(" tokens")[0]  # noqa: E731
    assert count(err) == count(plain_err)  # no token past the stop string counted either


def test_chat_with_speculation(capsys, tiny_model_dir, monkeypatch):
    code, _, err = run(capsys, "chat", "--model", str(tiny_model_dir), "--max-tokens", "6", "--speculative",
                       "ngram", stdin="hi\nhello again\n", monkeypatch=monkeypatch)
    assert code == 0 and err.count("speculative:") == 2


@pytest.mark.parametrize("flags, words", [
    (["--speculative", "draft"], ["--speculative draft needs --draft-model"]),
    (["--spec-max-tokens", "16", "--speculative", "ngram"], ["--spec-max-tokens 16", "1 to 15"]),
    (["--spec-max-tokens", "0", "--speculative", "auto"], ["--spec-max-tokens 0"]),
    (["--draft-model", "x"], ["--draft-model", "draft or auto"]),
    (["--speculative", "fast"], ["--speculative", "invalid choice"]),
])
def test_invalid_spec_flags(capsys, flags, words):
    code, _, err = run(capsys, "generate", "hi", *flags)
    assert_user_error(code, err, *words)


def test_draft_with_another_vocabulary(capsys, tiny_model_dir, tmp_path):
    from sonic.weights.random import random_state_dict
    from sonic.weights.safetensors import save_hf_folder
    config = ModelConfig("llama", 256, 32, 64, 1, 2, 1, 16, max_position_embeddings=64)
    save_hf_folder(config, random_state_dict(config), tmp_path)
    code, _, err = run(capsys, "generate", "hi", "--model", str(tiny_model_dir), "--speculative", "draft",
                       "--draft-model", str(tmp_path))
    assert_user_error(code, err, "vocabulary of 256 tokens", "model has 49152")


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory, tiny_model_dir):
    """The tiny model's files with a context long enough for the task prompts."""
    import shutil
    folder = tmp_path_factory.mktemp("long")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, folder / f.name)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": 1024}))
    return folder


def test_bench_tasks_reports_every_setting(capsys, tmp_path, long_context_model):
    out = tmp_path / "tasks.json"
    code, table, err = run(capsys, "bench", "--tasks", "--model", str(long_context_model), "--device", "cpu",
                           "--task", "code-editing", "--task", "creative", "--prompts", "1",
                           "--output-tokens", "12", "--repeats", "1", "--fixed-k", "2", "4", "--json", str(out),
                           "--draft-model", str(long_context_model))  # the model drafts for itself
    assert code == 0, err
    report = json.loads(out.read_text())
    rows = {(r["category"], r["setting"]): r for r in report["results"]}
    assert set(rows) == {(c, s) for c in ("code-editing", "creative", "mean") for s in ("off", "k=2", "k=4", "auto")}
    assert all(r["identical"] for r in report["results"])
    assert rows[("code-editing", "k=4")]["drafted"] > 0 and rows[("code-editing", "k=4")]["acceptance_rate"] == 1
    assert rows[("creative", "off")]["speedup"] == 1.0 and rows[("creative", "off")]["drafted"] == 0
    assert len(report["verify_cost"]) == 16 and report["proposer"] == "draft" and report["draft_cost"] > 0
    assert "code-editing" in table and "auto" in table


@pytest.mark.parametrize("flags, words", [
    (["--task", "poetry"], ["unknown task 'poetry'", "code-editing"]),
    (["--fixed-k", "20"], ["--fixed-k 20"]),
    (["--preset", "smollm2-135m"], ["--tasks needs a model with a tokenizer"]),
])
def test_bench_tasks_errors(capsys, flags, words):
    code, _, err = run(capsys, "bench", "--tasks", "--device", "cpu", *flags)
    assert_user_error(code, err, *words)
