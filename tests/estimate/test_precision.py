"""Bytes per parameter from --weights and from a checkpoint's quantization_config."""
import pytest

from sonic.errors import SonicError
from sonic.estimate.catalog import MODELS, load_shape
from sonic.estimate.cost import token_cost
from sonic.estimate.params import parts
from sonic.estimate.precision import precision_for
from sonic.estimate.shape import ModelShape


def bytes_per_part(shape, weights):
    precision = precision_for(shape, weights)
    return {p.name: precision.bytes_per_param(p) for p in parts(shape) if not p.vector}


def test_deepseek_native_is_fp8_with_block_scales():
    sizes = bytes_per_part(load_shape("deepseek-v3"), "native")
    fp8 = 1 + 4 / (128 * 128)
    assert sizes["attention"] == sizes["routed_experts"] == sizes["shared_experts"] == sizes["dense_mlp"] == fp8
    assert sizes["lm_head"] == sizes["embedding"] == sizes["router"] == 2


def test_gpt_oss_native_quantises_experts_only():
    sizes = bytes_per_part(load_shape("gpt-oss-120b"), "native")
    assert sizes["routed_experts"] == 0.5 + 1 / 32  # mxfp4: 32 values share one scale byte
    assert sizes["attention"] == sizes["lm_head"] == 2


def test_compressed_tensors_int4_follows_its_ignore_list():
    cfg = {**MODELS["kimi-k2"][0], "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}}},
        "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", r"re:.*mlp\.(gate|up|gate_up|down)_proj.*"]}}
    sizes = bytes_per_part(ModelShape.from_hf(cfg), "native")
    assert sizes["routed_experts"] == 0.5 + 2 / 32  # a bf16 scale per 32 weights
    assert sizes["attention"] == sizes["shared_experts"] == sizes["dense_mlp"] == 2


def test_chosen_precision_overrides_native():
    shape = load_shape("deepseek-v3")
    bf16, fp8, int4 = (token_cost(shape, precision_for(shape, w)).weights for w in ("bf16", "fp8", "int4"))
    assert bf16 / fp8 == pytest.approx(2, rel=0.03)  # the LM head, router and norms stay bf16
    assert fp8 / int4 == pytest.approx(2, rel=0.1)
    assert token_cost(shape, precision_for(shape, "native")).weights == pytest.approx(fp8)


def test_unquantised_checkpoint_uses_its_dtype():
    shape = ModelShape.from_hf({**MODELS["llama-3.1-70b"][0], "torch_dtype": "float32"})
    assert set(bytes_per_part(shape, "native").values()) == {4}


@pytest.mark.parametrize("cfg, words", [
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, ["bitsandbytes", "--weights"]),
    ({"torch_dtype": "int3"}, ["int3", "torch_dtype"]),
])
def test_unknown_formats_are_one_clear_error(cfg, words):
    with pytest.raises(SonicError) as e:
        precision_for(ModelShape.from_hf({**MODELS["mixtral-8x22b"][0], **cfg}), "native")
    assert all(word in str(e.value) for word in words)
