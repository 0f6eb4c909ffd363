"""Large public models for `sonic estimate --model NAME`: the fields of their published `config.json`.

Each entry also records the parameter counts its authors published, which the tests check our counts
against. Vendors differ on whether "active" parameters include the input embedding table.
"""
from __future__ import annotations

from pathlib import Path

from sonic.errors import SonicError
from sonic.estimate.shape import ModelShape

_FP8_BLOCKS = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "num_key_value_heads": 8, "tie_word_embeddings": False}
_QWEN3_MOE = {"model_type": "qwen3_moe", "vocab_size": 151936, "head_dim": 128, "num_experts": 128,
              "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
              "use_sliding_window": False, "tie_word_embeddings": False}
_DEEPSEEK_MLA = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                 "v_head_dim": 128, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
                 "num_hidden_layers": 61, "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_layer_freq": 1,
                 "topk_method": "noaux_tc", "tie_word_embeddings": False, "quantization_config": _FP8_BLOCKS}
_GPT_OSS = {"model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_experts_per_tok": 4,
            "attention_bias": True, "sliding_window": 128, "tie_word_embeddings": False,
            "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}


def _gpt_oss(layers: int, experts: int) -> dict:
    return {**_GPT_OSS, "num_hidden_layers": layers, "num_local_experts": experts,
            "layer_types": ["sliding_attention", "full_attention"] * (layers // 2)}


# name -> (config.json fields, published total, published active, active counts the embedding table, source)
MODELS: dict[str, tuple[dict, float, float, bool, str]] = {
    # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    "llama-3.1-70b": ({**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                       "num_attention_heads": 64}, 70e9, 70e9, True,
                      "https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/MODEL_CARD.md"),
    # https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json
    "llama-3.1-405b": ({**_LLAMA3, "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
                        "num_attention_heads": 128}, 405e9, 405e9, True,
                       "https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/MODEL_CARD.md"),
    # https://huggingface.co/mistralai/Mixtral-8x22B-Instruct-v0.1/blob/main/config.json
    "mixtral-8x22b": ({"model_type": "mixtral", "vocab_size": 32768, "hidden_size": 6144, "intermediate_size": 16384,
                       "num_hidden_layers": 56, "num_attention_heads": 48, "num_key_value_heads": 8,
                       "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None,
                       "tie_word_embeddings": False}, 141e9, 39e9, False, "https://mistral.ai/news/mixtral-8x22b"),
    # https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json
    "qwen3-30b-a3b": ({**_QWEN3_MOE, "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                       "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4},
                      30.5e9, 3.3e9, True, "https://huggingface.co/Qwen/Qwen3-30B-A3B"),
    # https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json
    "qwen3-235b-a22b": ({**_QWEN3_MOE, "hidden_size": 4096, "intermediate_size": 12288,
                         "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
                         "num_key_value_heads": 4}, 235e9, 22e9, True, "https://huggingface.co/Qwen/Qwen3-235B-A22B"),
    # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (the multi-token prediction
    # layer, num_nextn_predict_layers, is not read by plain decoding and not counted in the 671B)
    "deepseek-v3": ({**_DEEPSEEK_MLA, "model_type": "deepseek_v3", "vocab_size": 129280, "num_attention_heads": 128,
                     "num_key_value_heads": 128, "n_routed_experts": 256, "first_k_dense_replace": 3},
                    671e9, 36.6e9, False, "https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/README_WEIGHTS.md"),
    # https://huggingface.co/moonshotai/Kimi-K2-Instruct/blob/main/config.json
    "kimi-k2": ({**_DEEPSEEK_MLA, "model_type": "kimi_k2", "vocab_size": 163840, "num_attention_heads": 64,
                 "num_key_value_heads": 64, "n_routed_experts": 384, "first_k_dense_replace": 1},
                1.04e12, 32.6e9, True, "https://arxiv.org/abs/2507.20534"),
    # https://huggingface.co/openai/gpt-oss-120b/blob/main/config.json
    "gpt-oss-120b": (_gpt_oss(36, 128), 116.83e9, 5.13e9, False, "https://arxiv.org/abs/2508.10925"),
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json
    "gpt-oss-20b": (_gpt_oss(24, 32), 20.91e9, 3.61e9, False, "https://arxiv.org/abs/2508.10925"),
}


def preset_names() -> list[str]:
    from sonic.presets import PRESETS
    return list(PRESETS) + list(MODELS)


def load_shape(model: str) -> ModelShape:
    """A preset name (ours or one of MODELS), a Hugging Face model folder, or a `config.json` file."""
    if model in MODELS:
        return ModelShape.from_hf(MODELS[model][0], name=model)
    from sonic.presets import PRESETS
    if model in PRESETS:
        return ModelShape.from_config(PRESETS[model])
    if Path(model).is_file() or (Path(model) / "config.json").is_file():
        return ModelShape.from_file(model)
    raise SonicError(f"--model '{model}' is neither a preset nor a folder with config.json nor a config.json "
                     f"file: pass one of those (presets: {', '.join(preset_names())})")
