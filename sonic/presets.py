"""Named model shapes (the published configs) for random-weight benchmarks and tests."""
from __future__ import annotations

from sonic.config import ModelConfig, RopeScaling
from sonic.errors import SonicError

_LLAMA3_VOCAB, _QWEN_VOCAB = 128256, 151936

PRESETS: dict[str, ModelConfig] = {
    "smollm2-135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_ids=(2,), name="smollm2-135m"),
    "llama-3.2-1b": ModelConfig(
        architecture="llama", vocab_size=_LLAMA3_VOCAB, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192),
        max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009), name="llama-3.2-1b"),
    "llama-3.1-8b": ModelConfig(
        architecture="llama", vocab_size=_LLAMA3_VOCAB, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
        max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009), name="llama-3.1-8b"),
    "qwen2.5-0.5b": ModelConfig(
        architecture="qwen2", vocab_size=_QWEN_VOCAB, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=True, attention_bias=True, bos_token_id=151643, eos_token_ids=(151645,),
        name="qwen2.5-0.5b"),
    "qwen3-0.6b": ModelConfig(
        architecture="qwen3", vocab_size=_QWEN_VOCAB, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=True, qk_norm=True, bos_token_id=151643, eos_token_ids=(151645,),
        name="qwen3-0.6b"),
    "qwen3-1.7b": ModelConfig(
        architecture="qwen3", vocab_size=_QWEN_VOCAB, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=True, qk_norm=True, bos_token_id=151643, eos_token_ids=(151645,),
        name="qwen3-1.7b"),
    "qwen3-8b": ModelConfig(
        architecture="qwen3", vocab_size=_QWEN_VOCAB, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=False, qk_norm=True, bos_token_id=151643, eos_token_ids=(151645,),
        name="qwen3-8b"),
    "mistral-7b": ModelConfig(
        architecture="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=False, bos_token_id=1, eos_token_ids=(2,), name="mistral-7b"),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise SonicError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}") from None
