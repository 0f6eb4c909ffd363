"""Bytes per token on configs small enough to count by hand."""
import json
from pathlib import Path

import pytest

from sonic.config import ModelConfig
from sonic.estimate.catalog import load_shape
from sonic.estimate.cost import kv_bytes_per_token, kv_cache_bytes, token_cost, weight_bytes_per_token
from sonic.estimate.params import active_params, parts, total_params
from sonic.estimate.precision import precision_for
from sonic.estimate.shape import Attention, ModelShape, MoE
from sonic.presets import PRESETS

RESULTS = Path(__file__).parents[2] / "bench" / "results"

# vocab 100, hidden 8, 2 layers, 2 heads of 4 (1 KV head), MLP 16, untied:
# per layer q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, MLP 3*8*16 = 384, two norms 16 -> 592;
# 2 layers 1184, embedding 800, LM head 800, final norm 8 -> 2792 parameters.
TINY = ModelShape("tiny", "llama", 100, 8, 2, Attention(2, 1, 4), 16)


def test_dense_count_by_hand():
    assert total_params(TINY) == 2792
    # one step reads everything but the 99 embedding rows it does not look up
    assert token_cost(TINY, precision_for(TINY, "bf16")).weights == 2 * (2792 - 99 * 8)
    assert token_cost(TINY, precision_for(TINY, "fp8")).read["dense_mlp"] == pytest.approx(768 * (1 + 4 / 128**2))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dense_reads_parameters_minus_unread_embedding_rows(name):
    config = PRESETS[name]
    embed_rows_unread = 0 if config.tie_word_embeddings else (config.vocab_size - 1) * config.hidden_size
    tied_row = config.hidden_size if config.tie_word_embeddings else 0  # the row, then the table as LM head
    expected = config.num_parameters() - embed_rows_unread + tied_row
    shape = ModelShape.from_config(config)
    assert total_params(shape) == config.num_parameters()
    assert token_cost(shape, precision_for(shape, "bf16")).weights == 2 * expected
    assert ModelShape.from_hf(config.to_hf(), name=config.name) == shape


def test_bench_results_count_the_same_bytes():
    checked = 0
    for path in RESULTS.glob("*.json"):
        report = json.loads(path.read_text())
        if report.get("benchmark", "decode") == "decode" and report["model"] in PRESETS and report["dtype"] == "bfloat16":
            config = PRESETS[report["model"]]
            for r in report["results"]:
                assert weight_bytes_per_token(config, 2) == r["weight_bytes_per_token"]
                context = r["prompt_tokens"] + r["output_tokens"] / 2
                assert kv_bytes_per_token(config, context, 2) == r["kv_bytes_per_token"]
                checked += 1
    assert checked > 0


def moe_shape(experts: int, top_k: int, shared: int = 0) -> ModelShape:
    return ModelShape("moe", "deepseek_v3", 100, 8, 3, Attention(2, 2, 4), 32,
                      moe=MoE(experts, top_k, 16, shared_size=shared), dense_layers=1)


def test_moe_reads_top_k_and_shared_experts_only():
    shape = moe_shape(experts=8, top_k=2, shared=16)
    by_name = {p.name: p for p in parts(shape)}
    expert = 3 * 8 * 16
    assert by_name["routed_experts"].stored == 2 * 8 * expert   # 2 MoE layers hold all 8 experts
    assert by_name["routed_experts"].read == 2 * 2 * expert     # and read the top 2
    assert by_name["shared_experts"].read == 2 * expert
    assert by_name["dense_mlp"].read == 3 * 8 * 32              # the one dense layer
    assert by_name["router"].read == 2 * 8 * 8
    more_experts = moe_shape(experts=64, top_k=2, shared=16)
    read = token_cost(shape).read
    assert token_cost(more_experts).read["routed_experts"] == read["routed_experts"]
    assert total_params(more_experts) - total_params(shape) == 2 * 56 * expert + 2 * 56 * 8


def test_mla_kv_cache_is_the_latent_and_is_replicated():
    shape = load_shape("deepseek-v3")
    per_position = 61 * (512 + 64) * 2  # one compressed vector and one RoPE key per layer, bf16
    assert kv_cache_bytes(shape, 1000) == 1000 * per_position
    assert kv_cache_bytes(shape, 1000, gpus=8) == 1000 * per_position


def test_gqa_kv_heads_split_then_replicate():
    shape = ModelShape("g", "llama", 100, 64, 4, Attention(8, 2, 16), 32)
    one = 4 * 2 * 2 * 16 * 2  # layers x (K, V) x heads x head_dim x bf16
    assert kv_cache_bytes(shape, 10) == 10 * one
    assert kv_cache_bytes(shape, 10, gpus=2) == 10 * one / 2
    assert kv_cache_bytes(shape, 10, gpus=8) == 10 * one / 2  # one KV head per GPU, copied


def test_sliding_window_layers_read_only_the_window():
    shape = load_shape("gpt-oss-120b")  # 18 sliding layers of window 128, 18 full layers
    per_position_layer = 2 * 8 * 64 * 2
    assert kv_cache_bytes(shape, 4096) == (18 * 128 + 18 * 4096) * per_position_layer
    assert kv_cache_bytes(shape, 100) == 36 * 100 * per_position_layer


def test_tensor_parallel_splits_matrices_and_keeps_norms():
    shape = load_shape("llama-3.1-70b")
    one, eight = token_cost(shape, gpus=1), token_cost(shape, gpus=8)
    assert eight.read["dense_mlp"] == one.read["dense_mlp"] / 8
    assert eight.read["lm_head"] == one.read["lm_head"] / 8
    assert eight.read["norms"] == one.read["norms"]
    assert eight.held < one.held / 7.9


def test_active_parameters_count_what_a_token_reads():
    shape = moe_shape(experts=8, top_k=2)
    read = sum(p.read for p in parts(shape))
    assert active_params(shape) == read
    assert active_params(shape, with_embedding=True) == read + 99 * 8
    config = ModelConfig("llama", 100, 8, 16, 2, 2, 1, 4, tie_word_embeddings=True)
    assert active_params(ModelShape.from_config(config), with_embedding=True) == config.num_parameters() + 8
