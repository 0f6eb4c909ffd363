"""Parameters per part of a model: how many one GPU holds, and how many one decode step reads.

Tensor parallelism over `gpus` GPUs, as a batch-1 decoder would lay it out:
- attention is split by heads; when there are fewer KV heads than GPUs each GPU keeps a copy of one.
  Multi-head latent attention keeps its small down-projections (q_a, kv_a) on every GPU and splits
  the per-head up-projections and the output projection;
- every MLP (dense, shared expert, and each routed expert) is split along its intermediate size, so each
  GPU reads exactly 1/N of every activated expert. Expert parallelism (whole experts per GPU) reads
  the same bytes on average but sends the busiest GPU more at batch 1; we model the even split;
- the embedding table and LM head are split by vocabulary; a token reads one embedding row;
- norms and routers are replicated.
A count that does not divide evenly is rounded up: the busiest GPU sets the pace.
"""
from __future__ import annotations

from dataclasses import dataclass

from sonic.estimate.shape import Attention, ModelShape

# Parts whose matrices a quantised checkpoint stores in low precision (see precision.py).
QUANTISABLE = ("attention", "dense_mlp", "routed_experts", "shared_experts")
LABELS = {"attention": "attention", "dense_mlp": "dense MLP", "routed_experts": "routed experts",
          "shared_experts": "shared experts", "router": "router", "norms": "norms",
          "embedding": "embedding row", "lm_head": "LM head"}


@dataclass(frozen=True)
class Part:
    name: str       # attention | dense_mlp | routed_experts | shared_experts | router | norms | embedding | lm_head
    stored: int     # parameters one GPU holds
    read: int       # parameters one decode step reads on that GPU
    vector: bool = False  # biases, norms, sinks: kept in the checkpoint's dtype when matrices are quantised


def split(n: int, gpus: int) -> int:
    return -(-n // gpus)


def attention_params(a: Attention, hidden: int, gpus: int) -> tuple[int, int]:
    """(matrix, vector) parameters of one layer's attention on one GPU."""
    heads = split(a.heads, gpus)
    if a.mla:
        qk_dim = a.qk_nope_head_dim + a.qk_rope_head_dim
        q = (hidden * a.q_lora_rank + a.q_lora_rank * heads * qk_dim) if a.q_lora_rank else hidden * heads * qk_dim
        kv = (hidden * (a.kv_lora_rank + a.qk_rope_head_dim)
              + a.kv_lora_rank * heads * (a.qk_nope_head_dim + a.v_head_dim))
        return q + kv + heads * a.v_head_dim * hidden, a.q_lora_rank + a.kv_lora_rank
    qkv = (heads + 2 * split(a.kv_heads, gpus)) * a.head_dim
    vector = (qkv if a.qkv_bias else 0) + (hidden if a.o_bias else 0)
    vector += (2 * a.head_dim if a.qk_norm else 0) + (heads if a.sinks else 0)
    return hidden * qkv + heads * a.head_dim * hidden, vector


def mlp_params(hidden: int, size: int, gpus: int, bias: bool = False) -> tuple[int, int]:
    """(matrix, vector) parameters of one gated MLP (gate, up, down) on one GPU."""
    local = split(size, gpus)
    return 3 * hidden * local, (2 * local + hidden if bias else 0)


def parts(shape: ModelShape, gpus: int = 1) -> list[Part]:
    h, layers = shape.hidden_size, shape.num_layers
    out: list[Part] = []

    def add(name: str, stored: int, read: int | None = None, vector: bool = False):
        if stored or read:
            out.append(Part(name, stored, stored if read is None else read, vector))

    matrix, vector = attention_params(shape.attention, h, gpus)
    add("attention", layers * matrix)
    add("attention", layers * vector, vector=True)
    matrix, vector = mlp_params(h, shape.intermediate_size, gpus)
    add("dense_mlp", shape.num_dense_layers * matrix)
    moe = shape.moe
    if moe:
        n = shape.num_moe_layers
        matrix, vector = mlp_params(h, moe.expert_size, gpus, moe.expert_bias)
        add("routed_experts", n * moe.experts * matrix, n * moe.top_k * matrix)
        add("routed_experts", n * moe.experts * vector, n * moe.top_k * vector, vector=True)
        matrix, _ = mlp_params(h, moe.shared_size, gpus)
        add("shared_experts", n * matrix)
        add("router", n * h * moe.experts)
        add("router", n * moe.experts if moe.router_bias else 0, vector=True)
    add("norms", 2 * h * layers + h, vector=True)
    table = split(shape.vocab_size, gpus) * h
    add("embedding", table, h)
    add("lm_head", 0 if shape.tie_word_embeddings else table, table)  # tied: it reads the embedding table
    return out


def total_params(shape: ModelShape) -> int:
    return sum(p.stored for p in parts(shape))


def active_params(shape: ModelShape, with_embedding: bool = False) -> int:
    """Parameters one token uses: one embedding row, unless the whole table is counted as vendors do."""
    count = sum(p.read for p in parts(shape))
    if with_embedding and not shape.tie_word_embeddings:  # a tied table is already counted as the LM head
        count += (shape.vocab_size - 1) * shape.hidden_size
    return count
