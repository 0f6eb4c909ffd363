"""Presets of large public models against their published parameter counts, and how --model is resolved."""
import json

import pytest

from sonic.errors import SonicError
from sonic.estimate.catalog import MODELS, load_shape
from sonic.estimate.params import active_params, total_params
from sonic.estimate.shape import ModelShape


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_counts_match_published(name):
    _, total, active, with_embedding, _ = MODELS[name]
    shape = load_shape(name)
    assert total_params(shape) == pytest.approx(total, rel=0.02)
    assert active_params(shape, with_embedding) == pytest.approx(active, rel=0.05)


def test_layer_kinds_follow_the_config():
    deepseek, kimi, qwen = load_shape("deepseek-v3"), load_shape("kimi-k2"), load_shape("qwen3-235b-a22b")
    assert (deepseek.num_dense_layers, deepseek.num_moe_layers) == (3, 58)
    assert (kimi.num_dense_layers, kimi.num_moe_layers) == (1, 60)
    assert (qwen.num_dense_layers, qwen.num_moe_layers) == (0, 94)
    sparse_every_other = ModelShape.from_hf({**MODELS["qwen3-235b-a22b"][0], "decoder_sparse_step": 2,
                                              "mlp_only_layers": [1]})
    assert sparse_every_other.num_moe_layers == 46  # odd layers, less layer 1
    every_other = ModelShape.from_hf({**MODELS["deepseek-v3"][0], "moe_layer_freq": 2})
    assert every_other.num_moe_layers == 29  # even layers from layer 4 on


def test_model_from_folder_file_and_text_config(tmp_path):
    cfg = MODELS["qwen3-30b-a3b"][0]
    (tmp_path / "Qwen3-30B-A3B").mkdir()
    (tmp_path / "Qwen3-30B-A3B" / "config.json").write_text(json.dumps(cfg))
    from_folder = load_shape(str(tmp_path / "Qwen3-30B-A3B"))
    from_file = load_shape(str(tmp_path / "Qwen3-30B-A3B" / "config.json"))
    assert from_folder.name == from_file.name == "Qwen3-30B-A3B"
    assert total_params(from_folder) == total_params(load_shape("qwen3-30b-a3b"))
    wrapped = ModelShape.from_hf({"model_type": "kimi_k25", "text_config": MODELS["kimi-k2"][0]})
    assert total_params(wrapped) == total_params(load_shape("kimi-k2"))


@pytest.mark.parametrize("cfg, words", [
    ({"model_type": "bert"}, ["bert", "sonic estimate reads"]),
    ({**MODELS["deepseek-v3"][0], "kv_lora_rank": None}, ["kv_lora_rank", "deepseek-v3"]),
])
def test_bad_configs_are_one_clear_error(cfg, words):
    with pytest.raises(SonicError) as e:
        ModelShape.from_hf(cfg, name="deepseek-v3")
    assert all(word in str(e.value) for word in words)


def test_unknown_model_lists_presets():
    with pytest.raises(SonicError, match="deepseek-v3"):
        load_shape("no-such-model")
