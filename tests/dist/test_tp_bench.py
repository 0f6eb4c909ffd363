"""`sonic bench --tp 2` on CPU: the report's per-rank bytes add up against one device's, the all-reduce
is timed on the same ranks, and `sonic estimate --allreduce-from` takes that figure."""
import json

import pytest
import torch

from conftest import TINY_CONFIGS
from sonic.bench.run import result_path
from sonic.cli import main
from sonic.config import ModelConfig
from sonic.dist.shard_cost import rank_costs
from sonic.dist.tp import tp_problem
from sonic.estimate.cost import kv_bytes_per_token, weight_bytes_per_token
from sonic.presets import PRESETS
from test_tp_engine import assert_user_error

CONTEXT, ELEM = 300, 2


def replicated_elements(config: ModelConfig) -> int:
    """What every rank reads whole: the norms (qk-norms too) and one embedding row."""
    norms = (2 * config.num_hidden_layers + 1) * config.hidden_size
    if config.qk_norm:
        norms += 2 * config.head_dim * config.num_hidden_layers
    return norms + config.hidden_size


def kv_copies(config: ModelConfig, world: int) -> float:
    """How many ranks hold each KV head (more than one when there are fewer KV heads than ranks)."""
    return max(world, config.num_key_value_heads) / config.num_key_value_heads


@pytest.mark.parametrize("config", [*TINY_CONFIGS.values(), *PRESETS.values()], ids=[*TINY_CONFIGS, *PRESETS])
def test_rank_bytes_add_up_to_one_devices(config):
    (one,) = rank_costs(config, 1, CONTEXT, ELEM)
    assert one.weight_bytes == weight_bytes_per_token(config, ELEM)
    assert one.kv_bytes == kv_bytes_per_token(config, CONTEXT, ELEM)
    for world in (2, 3, 4, 8, 16):
        if tp_problem(config, world):
            continue
        ranks = rank_costs(config, world, CONTEXT, ELEM)
        copied_kv_weights = (kv_copies(config, world) - 1) * 2 * config.kv_size * config.hidden_size
        if config.attention_bias:
            copied_kv_weights += (kv_copies(config, world) - 1) * 2 * config.kv_size
        extra = (world - 1) * replicated_elements(config) + config.num_hidden_layers * copied_kv_weights
        assert sum(r.weight_bytes for r in ranks) == one.weight_bytes + extra * ELEM, world
        assert sum(r.kv_bytes for r in ranks) == pytest.approx(one.kv_bytes * kv_copies(config, world), abs=world)
        assert max(r.total for r in ranks) < one.total


def test_bench_tp2_reports_every_rank_and_the_allreduce(tiny_chat_model_dir, tmp_path, capsys):
    out = tmp_path / "tp2.json"
    assert main(["bench", "--model", str(tiny_chat_model_dir), "--tp", "2", "--device", "cpu", "--prompt-tokens",
                 "16", "--output-tokens", "8", "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "% ceil" in table and "tensor parallel over 2 ranks" in table and "us per layer" in table
    report = json.loads(out.read_text())
    config = ModelConfig.from_hf(tiny_chat_model_dir)
    assert report["tp"] == 2 and report["communicator"] == "ordered" and report["model"] == tiny_chat_model_dir.name
    assert result_path(report).name.endswith("-tp2.json")  # beside, not over, the one-device result
    a = report["allreduce"]
    assert a["us_per_call"] > 0 and a["us_per_layer"] == 2 * a["us_per_call"]
    assert a["elements"] == config.hidden_size and a["communicator"] == "ordered" and "eager" in a["method"]
    (result,) = report["results"]
    assert result["runner"] == "ref" and result["output_tokens"] == 8 and result["decode_tok_s"] > 0
    assert result["itl_p99_ms"] >= result["itl_p50_ms"] > 0 and result["ttft_ms"] > 0
    # The whole model's bytes, as one device reads them; each rank's from its shard.
    assert result["weight_bytes_per_token"] == weight_bytes_per_token(config, 4)
    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sum(r["weight_bytes_per_token"] for r in ranks) == \
        result["weight_bytes_per_token"] + 4 * replicated_elements(config)
    assert sum(r["kv_bytes_per_token"] for r in ranks) == result["kv_bytes_per_token"]  # 2 KV heads, 1 per rank
    # On a CPU the ranks share the memory: the ceiling reads every rank's bytes at the one bandwidth.
    bandwidth = report["bandwidth_GBps"] * 1e9
    assert result["ceiling_tok_s"] == pytest.approx(bandwidth / sum(r["bytes_per_token"] for r in ranks))
    assert sum(r["pct_of_ceiling"] for r in ranks) == pytest.approx(result["pct_of_ceiling"])

    assert main(["estimate", "--model", "llama-3.1-8b", "--gpus", "2", "--allreduce-from", str(out)]) == 0
    projected, note = capsys.readouterr()
    assert f"{a['us_per_call']:.1f} us latency" in projected
    assert str(out) in note and "ordered all-reduce" in note and "over 2 ranks" in note


@pytest.mark.parametrize("flags, words", [
    (["--compare", "ref"], ["--compare with --tp", "once per --runner"]),
    (["--profile"], ["--profile", "drop --profile or --tp"]),
    (["--verify-cost", "4"], ["--verify-cost", "drop --verify-cost or --tp"]),
    (["--tasks"], ["--tasks", "drop --tp"]),
    (["--runner", "mono"], ["--runner mono is not supported with --tp"]),
    (["--tp-allreduce", "one-shot"], ["--tp-allreduce one-shot runs on GPUs"]),
])
def test_bench_tp_refuses_what_does_not_apply(tiny_chat_model_dir, capsys, flags, words):
    assert_user_error(capsys, ["bench", "--model", str(tiny_chat_model_dir), "--device", "cpu", "--tp", "2", *flags],
                      *words)


def test_bench_tp_preset_that_does_not_split(capsys):
    assert_user_error(capsys, ["bench", "--preset", "smollm2-135m", "--device", "cpu", "--tp", "2"],
                      "9 attention heads do not divide by 2", "use one of --tp 1, 3")


def test_workers_draw_a_presets_weights_as_the_single_device_bench_does():
    from sonic.bench.run import build_model
    from sonic.dist.worker import WorkerOptions, load_state
    loaded = load_state(WorkerOptions(None, 3, 0, "cpu", "float32", 1.0, preset="smollm2-135m"), 2, False)
    model, name = build_model("smollm2-135m", None, "cpu", torch.float32)
    assert loaded.config == PRESETS["smollm2-135m"] and loaded.tokenizer is None and name == "smollm2-135m"
    for key in ("model.embed_tokens.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(loaded.state_dict[key], model.state_dict()[key]), key
