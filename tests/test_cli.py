"""The command line: streaming output, the stats line, and one clear line (exit 2) for bad input."""
import json
import subprocess
import sys

import pytest
import torch

from sonic.cli import main


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *words):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


def test_generate_streams_text_and_stats(capsys, tiny_model_dir):
    code, out, err = run(capsys, "generate", "Hello there", "--model", str(tiny_model_dir), "--max-tokens", "8")
    assert code == 0 and out.strip()
    assert "prompt" in err and "output" in err and "TTFT" in err and "tok/s" in err


def test_same_seed_same_text(capsys, tiny_model_dir):
    args = ["generate", "Once", "--model", str(tiny_model_dir), "--max-tokens", "12", "--temperature", "1.0",
            "--top-k", "50", "--top-p", "0.9"]
    outs = [run(capsys, *args, "--seed", s)[1] for s in ("3", "3", "4")]
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_stop_string_cuts_output(capsys, tiny_model_dir):
    base = ["generate", "Hello there", "--model", str(tiny_model_dir), "--max-tokens", "20", "--raw"]
    full = run(capsys, *base)[1].rstrip("\n")
    assert len(full) > 6
    stop = full[3:6]
    cut = run(capsys, *base, "--stop", stop)[1].rstrip("\n")
    assert cut == full[:full.index(stop)]


def test_prompt_from_stdin(capsys, tiny_model_dir, monkeypatch):
    code, out, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--max-tokens", "4",
                       stdin="Hello from stdin", monkeypatch=monkeypatch)
    assert code == 0 and out.strip()


def test_chat_multi_turn(capsys, tiny_model_dir, monkeypatch):
    code, out, err = run(capsys, "chat", "--model", str(tiny_model_dir), "--max-tokens", "4",
                         stdin="hi\n/reset\nhello again\n", monkeypatch=monkeypatch)
    assert code == 0
    assert err.count("tok/s") == 2 and "conversation cleared" in err


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "-1"], ["temperature"]),
    (["--top-p", "1.5"], ["top-p"]),
    (["--top-k", "-3"], ["top-k"]),
    (["--max-tokens", "abc"], ["--max-tokens", "invalid int"]),
    (["--dtype", "int3"], ["--dtype"]),
])
def test_invalid_flags(capsys, flags, words):
    code, _, err = run(capsys, "generate", "hi", *flags)
    assert_user_error(code, err, *words)


def test_missing_model_path(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--model", str(tmp_path / "nope"))
    assert_user_error(code, err, "model path not found", "nope")


def test_folder_that_is_not_a_model(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--model", str(tmp_path))
    assert_user_error(code, err, "is not a model folder", "config.json")


def test_file_that_is_not_a_model(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    code, _, err = run(capsys, "generate", "hi", "--model", str(path))
    assert_user_error(code, err, "is not a model")


def test_corrupt_gguf(capsys, tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf at all")
    code, _, err = run(capsys, "generate", "hi", "--model", str(path))
    assert_user_error(code, err, "broken.gguf")


def test_unsupported_architecture(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    code, _, err = run(capsys, "generate", "hi", "--model", str(tmp_path))
    assert_user_error(code, err, "unsupported architecture 'gpt2'")


def test_prompt_plus_max_tokens_beyond_context(capsys, tiny_model_dir):
    code, _, err = run(capsys, "generate", "Hello there", "--model", str(tiny_model_dir), "--max-tokens", "100")
    assert_user_error(code, err, "max tokens (100)", "context length of 64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu(capsys):
    code, _, err = run(capsys, "generate", "hi", "--device", "cuda")
    assert_user_error(code, err, "no CUDA GPU", "--device cpu")


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sonic", "generate", "hi", "--model", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model path not found" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_on_cpu_writes_json(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, table, _ = run(capsys, "bench", "--preset", "smollm2-135m", "--device", "cpu", "--prompt-tokens", "4",
                         "--output-tokens", "3", "--repeats", "1", "--json", str(out))
    assert code == 0 and "% ceil" in table
    report = json.loads(out.read_text())
    result = report["results"][0]
    assert report["bandwidth_GBps"] > 0 and result["runner"] == "ref"
    assert result["decode_tok_s"] > 0 and 0 < result["pct_of_ceiling"]
    # tied embeddings: the LM head reads the whole table, and the lookup one more row
    assert result["weight_bytes_per_token"] == 4 * (134_515_008 + 576)


def test_bench_sampled_decode(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, table, _ = run(capsys, "bench", "--preset", "smollm2-135m", "--device", "cpu", "--prompt-tokens", "4",
                         "--output-tokens", "3", "--repeats", "1", "--temperature", "0.8", "--top-k", "20",
                         "--json", str(out))
    assert code == 0 and "sampled (temperature 0.8, top-k 20, top-p 1)" in table
    assert json.loads(out.read_text())["results"][0]["sampling"] == {"temperature": 0.8, "top_k": 20, "top_p": 1.0}


def test_bench_rejects_a_bad_temperature(capsys):
    code, _, err = run(capsys, "bench", "--preset", "smollm2-135m", "--device", "cpu", "--temperature", "-1")
    assert_user_error(code, err, "temperature -1")


def test_bench_needs_a_model(capsys):
    code, _, err = run(capsys, "bench", "--device", "cpu")
    assert_user_error(code, err, "--preset", "--model")


def test_bench_verify_cost_out_of_range(capsys):
    code, _, err = run(capsys, "bench", "--preset", "smollm2-135m", "--device", "cpu", "--verify-cost", "17")
    assert_user_error(code, err, "--verify-cost 17", "1 to 16")


def test_bench_profile_needs_the_mono_runner(capsys):
    code, _, err = run(capsys, "bench", "--preset", "smollm2-135m", "--device", "cpu", "--profile")
    assert_user_error(code, err, "--profile", "--runner mono")


def test_unsupported_quantisation_type(capsys, tmp_path):
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
    from tiny_gguf import HIDDEN, KV_HEADS, HEAD_DIM, tiny_weights, write_gguf

    rows = KV_HEADS * HEAD_DIM
    raw = np.zeros((rows, GGML_QUANT_SIZES[Q.IQ4_NL][1] * HIDDEN // 32), np.uint8)
    path = write_gguf(tmp_path / "iq.gguf", "llama", tiny_weights("llama") | {"blk.0.attn_v.weight": (raw, Q.IQ4_NL)})
    code, _, err = run(capsys, "generate", "hi", "--model", str(path))
    assert_user_error(code, err, "unsupported GGUF tensor type IQ4_NL")


def test_model_folder_without_tokenizer(capsys, tmp_path):
    from conftest import TINY_CONFIGS
    from sonic.weights.random import random_state_dict
    from sonic.weights.safetensors import save_hf_folder
    config = TINY_CONFIGS["llama2"]
    save_hf_folder(config, random_state_dict(config), tmp_path)
    code, _, err = run(capsys, "generate", "hi", "--model", str(tmp_path))
    assert_user_error(code, err, "no tokenizer.json")
