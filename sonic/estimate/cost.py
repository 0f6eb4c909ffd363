"""Bytes one decode step must read from device memory: the floor every speed figure is compared to."""
from __future__ import annotations

from sonic.config import ModelConfig


def weight_bytes_per_token(config: ModelConfig, bytes_per_param: float) -> int:
    """Every matrix once, plus one embedding row (the LM head reads the table when it is tied)."""
    embed = config.vocab_size * config.hidden_size
    params = config.num_parameters() - embed + config.hidden_size
    if config.tie_word_embeddings:
        params += embed
    return int(params * bytes_per_param)


def kv_bytes_per_token(config: ModelConfig, context: float, bytes_per_elem: float) -> int:
    """K and V of every earlier position, every layer, read by attention at this context length."""
    return int(2 * config.num_hidden_layers * config.kv_size * context * bytes_per_elem)
