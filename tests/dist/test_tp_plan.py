"""Shard plans without processes: which heads each rank keeps, packed layouts, and clear refusals."""
import pytest
import torch
from conftest import TINY_CONFIGS

from sonic.dist.tp import ShardPlan, build_shard, check_tp, shard_fused_qkv, shard_gate_up, shard_state_dict
from sonic.engine.packed import pack_model
from sonic.errors import SonicError
from sonic.weights.random import random_state_dict


@pytest.mark.parametrize("name, world", [("llama3", 2), ("llama3", 4), ("mistral", 4), ("qwen2", 2),
                                         ("qwen3-untied-gqa4", 4)])
def test_query_heads_read_their_own_kv_heads(name, world):
    config = TINY_CONFIGS[name]
    for rank in range(world):
        plan = ShardPlan(config, rank, world)
        (q0, nq), (k0, nk) = plan.q_heads, plan.kv_heads
        local = plan.local_config()
        assert local.num_attention_heads * world == config.num_attention_heads
        # Query head h reads KV head h // group on one device; here its rank's local KV head.
        for h in range(q0, q0 + nq):
            assert k0 <= h // config.gqa_group < k0 + nk
            assert (h - q0) // local.gqa_group == h // config.gqa_group - k0


@pytest.mark.parametrize("name", ["qwen2", "qwen3-untied-gqa4"])
def test_packed_weights_shard_like_the_model(name):
    """Sharding the fused QKV and gate/up tensors gives what packing the sharded model gives."""
    config = TINY_CONFIGS[name]
    state = random_state_dict(config, seed=0)
    full = pack_model(build_shard(ShardPlan(config, 0, 1), state, lambda x: x))
    for rank in range(2):
        plan = ShardPlan(config, rank, 2)
        packed = pack_model(build_shard(plan, state, lambda x: x))
        for got, whole in zip(packed.layers, full.layers):
            assert torch.equal(got.w_qkv, shard_fused_qkv(plan, whole.w_qkv))
            assert torch.equal(got.w_gate_up, shard_gate_up(plan, whole.w_gate_up))
            if config.attention_bias:
                assert torch.equal(got.b_qkv, shard_fused_qkv(plan, whole.b_qkv))
        lo, hi = plan.vocab
        assert torch.equal(packed.lm_head, full.lm_head[lo:hi])


def test_row_parallel_shards_sum_to_the_whole():
    config = TINY_CONFIGS["llama2"]
    state = random_state_dict(config, seed=0)
    x = torch.randn(3, config.q_size)
    name = "model.layers.0.self_attn.o_proj.weight"
    parts = [shard_state_dict(ShardPlan(config, r, 4), state)[name] for r in range(4)]
    chunks = x.chunk(4, dim=-1)
    torch.testing.assert_close(sum(c @ p.T for c, p in zip(chunks, parts)), x @ state[name].T)


def test_tied_head_is_a_view_of_the_embedding():
    config = TINY_CONFIGS["qwen2"]
    model = build_shard(ShardPlan(config, 1, 2), random_state_dict(config, seed=0), lambda x: x)
    embed = model.model.embed_tokens.weight
    assert model.lm_head.weight.untyped_storage().data_ptr() == embed.untyped_storage().data_ptr()
    assert torch.equal(model.lm_head.weight, embed[128:])


@pytest.mark.parametrize("name, world, words", [
    ("smollm2", 2, ["--tp 2", "9 attention heads", "use one of --tp 1, 3"]),
    ("llama2", 3, ["--tp 3", "4 attention heads", "--tp 1, 2, 4"]),
    ("qwen3-untied-gqa4", 3, ["8 attention heads"]),
    ("llama3", 0, ["invalid --tp 0"]),
    ("llama3", -2, ["invalid --tp -2"]),
])
def test_indivisible_configs_are_refused(name, world, words):
    with pytest.raises(SonicError) as e:
        check_tp(TINY_CONFIGS[name], world)
    for word in words:
        assert word in str(e.value), str(e.value)


def test_kv_heads_and_intermediate_must_divide():
    base = TINY_CONFIGS["llama2"]
    with pytest.raises(SonicError, match="6 key/value heads do not divide by 4"):
        check_tp(base.with_(num_attention_heads=12, num_key_value_heads=6, head_dim=16), 4)
    with pytest.raises(SonicError, match="3 key/value heads do not divide by 2"):
        check_tp(base.with_(num_attention_heads=6, num_key_value_heads=3, intermediate_size=128), 2)
    with pytest.raises(SonicError, match="4 is not a multiple of the model's 3 key/value heads"):
        check_tp(base.with_(num_attention_heads=12, num_key_value_heads=3), 4)
    with pytest.raises(SonicError, match="intermediate size 150 does not divide by 4"):
        check_tp(base.with_(intermediate_size=150), 4)
