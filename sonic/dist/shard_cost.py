"""What one rank reads per decode step, from its shard plan: weight and KV-cache bytes.

The weights are sliced exactly as `tp.shard_state_dict` slices them (run on meta tensors, so nothing is
allocated): each rank reads its slices of q/k/v/o, gate/up/down and the LM head, all of the replicated
norms, and one row of the replicated embedding. A model with fewer KV heads than ranks has each KV head
copied, and so read, on every rank that holds it. With one rank this is the single-device count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sonic.dist.tp import ShardPlan, shard_state_dict

EMBEDDING = "model.embed_tokens.weight"


@dataclass(frozen=True)
class RankCost:
    rank: int
    weight_bytes: int   # per decode step
    kv_bytes: int       # at the given context

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_bytes


def weight_elements_read(plan: ShardPlan) -> int:
    """Weight elements one decode step reads on this rank."""
    from sonic.weights.random import weight_shapes
    meta = {name: torch.empty(shape, device="meta") for name, shape in weight_shapes(plan.config).items()}
    shard = shard_state_dict(plan, meta)
    embedding = shard.pop(EMBEDDING)
    return sum(t.numel() for t in shard.values()) + embedding.shape[1]  # the lookup reads one row


def rank_cost(plan: ShardPlan, context: float, bytes_per_elem: int) -> RankCost:
    from sonic.estimate.cost import kv_bytes_per_token
    return RankCost(plan.rank, weight_elements_read(plan) * bytes_per_elem,
                    kv_bytes_per_token(plan.local_config(), context, bytes_per_elem))


def rank_costs(config, world: int, context: float, bytes_per_elem: int) -> list[RankCost]:
    return [rank_cost(ShardPlan(config, rank, world), context, bytes_per_elem) for rank in range(world)]
