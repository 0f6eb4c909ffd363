"""Sharding as a transformation of the weights: which slice of every tensor a rank keeps.

Column-parallel: q/k/v (whole heads; with fewer KV heads than ranks each KV head is copied to the
ranks whose query heads read it) and gate/up. Row-parallel: o and down, whose partial outputs are
all-reduced. The LM head is vocab-parallel: each rank scores a slice of the vocabulary. Norms and the
embedding (one row read per token) are replicated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sonic.config import ModelConfig
from sonic.errors import SonicError


def tp_problem(config: ModelConfig, world: int) -> str | None:
    """Why the model cannot split over `world` ranks, or None when it can."""
    heads, kv, inter = config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    if heads % world:
        return f"the model's {heads} attention heads do not divide by {world}"
    if kv >= world and kv % world:
        return f"the model's {kv} key/value heads do not divide by {world}"
    if kv < world and world % kv:
        return f"{world} is not a multiple of the model's {kv} key/value heads (each would be copied unevenly)"
    if inter % world:
        return f"the model's intermediate size {inter} does not divide by {world}"
    if config.vocab_size < world:
        return f"the model's vocabulary of {config.vocab_size} tokens is smaller than {world}"
    return None


def check_tp(config: ModelConfig, world: int):
    """A user error unless `--tp world` can shard this model."""
    if world < 1:
        raise SonicError(f"invalid --tp {world}: use 1 (one device) or more")
    problem = tp_problem(config, world)
    if problem is not None:
        valid = [n for n in range(1, 65) if tp_problem(config, n) is None]
        raise SonicError(f"--tp {world}: {problem}; use one of --tp {', '.join(map(str, valid[:8]))}")


def vocab_bounds(vocab: int, world: int, rank: int) -> tuple[int, int]:
    """Rank's vocabulary slice [lo, hi): equal slices of ceil(vocab / world), the last one shorter."""
    size = -(-vocab // world)
    lo = min(rank * size, vocab)
    return lo, min(lo + size, vocab)


@dataclass(frozen=True)
class ShardPlan:
    config: ModelConfig   # the full model's
    rank: int
    world: int

    @property
    def q_heads(self) -> tuple[int, int]:
        n = self.config.num_attention_heads // self.world
        return self.rank * n, n

    @property
    def kv_heads(self) -> tuple[int, int]:
        """(first, count): the KV heads this rank's query heads read (GQA groups stay whole)."""
        first_q, _ = self.q_heads
        return first_q // self.config.gqa_group, max(1, self.config.num_key_value_heads // self.world)

    @property
    def intermediate(self) -> tuple[int, int]:
        n = self.config.intermediate_size // self.world
        return self.rank * n, n

    @property
    def vocab(self) -> tuple[int, int]:
        return vocab_bounds(self.config.vocab_size, self.world, self.rank)

    def local_config(self) -> ModelConfig:
        """The shapes one rank runs; the vocabulary stays whole (the embedding is replicated)."""
        return self.config.with_(num_attention_heads=self.q_heads[1], num_key_value_heads=self.kv_heads[1],
                                 intermediate_size=self.intermediate[1])


def _rows(t: torch.Tensor, first: int, count: int, unit: int = 1) -> torch.Tensor:
    return t[first * unit:(first + count) * unit]


def shard_tensor(plan: ShardPlan, name: str, t: torch.Tensor) -> torch.Tensor:
    """This rank's part of one reference-model tensor (a copy when sliced, so the full one can go)."""
    d = plan.config.head_dim
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return _rows(t, *plan.q_heads, d).clone()
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        return _rows(t, *plan.kv_heads, d).clone()
    if name.endswith("o_proj.weight"):
        return _rows(t.T, *plan.q_heads, d).T.contiguous()
    if name.endswith(("gate_proj.weight", "up_proj.weight")):
        return _rows(t, *plan.intermediate).clone()
    if name.endswith("down_proj.weight"):
        return _rows(t.T, *plan.intermediate).T.contiguous()
    if name == "lm_head.weight":
        lo, hi = plan.vocab
        return t[lo:hi].clone()
    return t


def shard_state_dict(plan: ShardPlan, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rank's state dict; `lm_head.weight` is its vocabulary slice (of the embedding when tied)."""
    out = {name: shard_tensor(plan, name, t) for name, t in state.items() if name != "lm_head.weight"}
    head = state.get("lm_head.weight") if not plan.config.tie_word_embeddings else None
    lo, hi = plan.vocab
    # A tied head is a view of the replicated embedding: no second copy.
    out["lm_head.weight"] = head[lo:hi].clone() if head is not None else out["model.embed_tokens.weight"][lo:hi]
    return out


def shard_fused_qkv(plan: ShardPlan, w_qkv: torch.Tensor) -> torch.Tensor:
    """The rank's rows of a fused [q; k; v] tensor (weights or bias), as the packed fast path lays it out."""
    c, d = plan.config, plan.config.head_dim
    q, k, v = w_qkv.split([c.q_size, c.kv_size, c.kv_size])
    return torch.cat([_rows(q, *plan.q_heads, d), _rows(k, *plan.kv_heads, d), _rows(v, *plan.kv_heads, d)])


def shard_gate_up(plan: ShardPlan, w_gate_up: torch.Tensor) -> torch.Tensor:
    """The rank's rows of a stacked [gate; up] tensor."""
    gate, up = w_gate_up.chunk(2)
    return torch.cat([_rows(gate, *plan.intermediate), _rows(up, *plan.intermediate)])


class RowParallelLinear(nn.Module):
    """A row-parallel projection: this rank's partial product, summed over ranks by the all-reduce."""

    def __init__(self, linear: nn.Linear, all_reduce):
        super().__init__()
        self.linear, self.all_reduce = linear, all_reduce

    @property
    def weight(self) -> torch.Tensor:  # what packing for the fast path reads
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(self.linear(x))


def build_shard(plan: ShardPlan, state: dict[str, torch.Tensor], all_reduce,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The reference model running this rank's shard: its logits are the rank's vocabulary slice."""
    from sonic.models.registry import build_model

    shard = shard_state_dict(plan, state)
    head = shard.pop("lm_head.weight")
    # Built as if tied, then the head is swapped for the vocabulary slice.
    model = build_model(plan.local_config().with_(tie_word_embeddings=True), shard, dtype, device)
    with torch.device("meta"):
        model.lm_head = nn.Linear(plan.config.hidden_size, head.shape[0], bias=False)
    if plan.config.tie_word_embeddings:  # a view of the embedding as built, not a second copy
        lo, hi = plan.vocab
        head = model.model.embed_tokens.weight[lo:hi]
    model.lm_head.weight = nn.Parameter(head.to(device=device, dtype=dtype), requires_grad=False)
    for layer in model.model.layers:
        layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, all_reduce)
        layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, all_reduce)
    return model
