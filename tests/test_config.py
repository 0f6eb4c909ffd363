import pytest

from sonic.config import ModelConfig
from sonic.errors import SonicError
from sonic.presets import PRESETS, get_preset
from sonic.weights.random import random_state_dict, weight_shapes


def test_presets_parameter_counts_match_published_sizes():
    # Published sizes, to the nearest few percent (the names round them).
    expected = {"smollm2-135m": 134.5e6, "llama-3.2-1b": 1.236e9, "llama-3.1-8b": 8.03e9,
                "qwen3-0.6b": 0.596e9, "qwen3-1.7b": 1.72e9, "qwen3-8b": 8.19e9}
    for name, params in expected.items():
        assert abs(get_preset(name).num_parameters() / params - 1) < 0.02, name


def test_weight_shapes_count_equals_num_parameters():
    for config in PRESETS.values():
        total = sum(int(__import__("math").prod(s)) for s in weight_shapes(config).values())
        assert total == config.num_parameters(), config.name


def test_hf_round_trip_every_preset():
    for config in PRESETS.values():
        assert ModelConfig.from_hf(config.to_hf()).with_(name="") == config.with_(name="")


def test_transformers_v5_rope_parameters_are_read():
    cfg = get_preset("llama-3.2-1b").to_hf()
    scaling = cfg.pop("rope_scaling")
    cfg["rope_parameters"] = {**scaling, "rope_theta": cfg.pop("rope_theta")}
    assert ModelConfig.from_hf(cfg).with_(name="") == get_preset("llama-3.2-1b").with_(name="")


def test_random_weights_are_seeded():
    config = get_preset("smollm2-135m").with_(num_hidden_layers=1, vocab_size=64)
    a, b, c = (random_state_dict(config, seed=s) for s in (1, 1, 2))
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["model.layers.0.mlp.up_proj.weight"] == c["model.layers.0.mlp.up_proj.weight"]).all()


@pytest.mark.parametrize("change, words", [
    ({"model_type": "gpt2"}, "unsupported architecture 'gpt2'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling type 'yarn'"),
    ({"num_key_value_heads": 3}, "multiple of"),
])
def test_bad_configs_are_user_errors(change, words):
    cfg = {**get_preset("llama-3.2-1b").to_hf(), **change}
    with pytest.raises(SonicError, match=words):
        ModelConfig.from_hf(cfg)


def test_unknown_preset():
    with pytest.raises(SonicError, match="unknown preset 'nope'"):
        get_preset("nope")
