"""Shared fixtures: tiny random models of every supported family, and the default model's path."""
from __future__ import annotations

import pytest
import torch

from sonic.config import ModelConfig, RopeScaling

# One tiny config per family, each exercising that family's quirk.
TINY_CONFIGS = {
    "llama3": ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16, rope_theta=500000.0,
                          rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 32),
                          max_position_embeddings=512, bos_token_id=1, eos_token_ids=(2,)),
    "llama2": ModelConfig("llama", 256, 64, 160, 2, 4, 4, 16, max_position_embeddings=512),
    "llama-linear-rope": ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16,
                                     rope_scaling=RopeScaling("linear", 2.0), max_position_embeddings=512),
    "smollm2": ModelConfig("llama", 256, 72, 96, 3, 9, 3, 8, rope_theta=100000.0,
                           tie_word_embeddings=True, max_position_embeddings=512),
    "mistral": ModelConfig("mistral", 256, 64, 128, 2, 4, 1, 16, rope_theta=1e6, sliding_window=8,
                           max_position_embeddings=512),
    "qwen2": ModelConfig("qwen2", 256, 64, 128, 2, 4, 2, 16, attention_bias=True,
                         tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                         max_position_embeddings=512),
    "qwen3": ModelConfig("qwen3", 256, 64, 128, 2, 4, 2, 32, qk_norm=True, tie_word_embeddings=True,
                         rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512),
    "qwen3-untied-gqa4": ModelConfig("qwen3", 256, 96, 128, 2, 8, 2, 24, qk_norm=True,
                                     rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512),
}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_family(request):
    return request.param, TINY_CONFIGS[request.param]


@pytest.fixture(scope="session")
def default_model_path():
    from sonic.weights.loader import default_model_path
    return default_model_path()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
