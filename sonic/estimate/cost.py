"""Bytes one decode step must read from device memory: the floor every speed figure is compared to."""
from __future__ import annotations

from dataclasses import dataclass

from sonic.config import ModelConfig
from sonic.estimate.params import parts, split
from sonic.estimate.precision import Precision, precision_for
from sonic.estimate.shape import ModelShape

KV_BYTES = 2  # bf16 K and V


@dataclass(frozen=True)
class TokenCost:
    """What one decode step costs the busiest of `gpus` GPUs, in bytes."""
    read: dict[str, float]      # weight bytes read, by part name (params.LABELS)
    kv: float                   # KV cache bytes at this context: all of them are held and read
    held: float                 # weight bytes the GPU holds

    @property
    def weights(self) -> float:
        return sum(self.read.values())

    @property
    def total(self) -> float:
        return self.weights + self.kv

    @property
    def memory(self) -> float:
        """Bytes the GPU must hold: its weights and its KV cache."""
        return self.held + self.kv


def token_cost(shape: ModelShape, precision: Precision | None = None, gpus: int = 1, context: float = 0,
               kv_bytes: float = KV_BYTES) -> TokenCost:
    precision = precision or precision_for(shape)
    read: dict[str, float] = {}
    held = 0.0
    for part in parts(shape, gpus):
        size = precision.bytes_per_param(part)
        read[part.name] = read.get(part.name, 0.0) + part.read * size
        held += part.stored * size
    return TokenCost(read, kv_cache_bytes(shape, context, gpus, kv_bytes), held)


def kv_bytes_per_position(shape: ModelShape, gpus: int = 1, kv_bytes: float = KV_BYTES) -> float:
    """Cache bytes of one position in one layer on one GPU.

    Latent attention caches one compressed vector (plus its RoPE key) that every head reads, so each
    GPU keeps all of it; grouped-query attention caches K and V of the GPU's KV heads.
    """
    a = shape.attention
    if a.mla:
        return (a.kv_lora_rank + a.qk_rope_head_dim) * kv_bytes
    return 2 * split(a.kv_heads, gpus) * a.head_dim * kv_bytes


def kv_cache_bytes(shape: ModelShape, context: float, gpus: int = 1, kv_bytes: float = KV_BYTES) -> float:
    """K and V of every earlier position, every layer, read by attention at this context length."""
    window = min(context, shape.sliding_window or context)
    positions = shape.sliding_layers * window + (shape.num_layers - shape.sliding_layers) * context
    return positions * kv_bytes_per_position(shape, gpus, kv_bytes)


def weight_bytes_per_token(config: ModelConfig, bytes_per_param: float) -> int:
    """Every matrix once, plus one embedding row (the LM head reads the table when it is tied)."""
    return int(sum(p.read for p in parts(ModelShape.from_config(config))) * bytes_per_param)


def kv_bytes_per_token(config: ModelConfig, context: float, bytes_per_elem: float) -> int:
    return int(kv_cache_bytes(ModelShape.from_config(config), context, 1, bytes_per_elem))
