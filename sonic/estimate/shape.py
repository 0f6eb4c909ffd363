"""The shape of a model as the byte count sees it, read from a Hugging Face `config.json`.

`ModelConfig` describes only what Sonic can run (dense Llama/Mistral/Qwen); estimates also cover mixture
of experts (Mixtral, Qwen3-MoE, GPT-OSS) and multi-head latent attention (DeepSeek-V2/V3, Kimi-K2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonic.config import ModelConfig, read_hf_config
from sonic.errors import SonicError

DENSE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
MOE_FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3", "kimi_k2", "gpt_oss")
FAMILIES = DENSE_FAMILIES + MOE_FAMILIES
MLA_FAMILIES = ("deepseek_v2", "deepseek_v3", "kimi_k2")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Attention:
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False       # Qwen3: RMSNorm over each q and k head
    sinks: bool = False         # GPT-OSS: one learned logit per head
    # Multi-head latent attention; kv_lora_rank == 0 means grouped-query attention.
    q_lora_rank: int = 0        # 0: q is projected directly from the hidden state
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0


@dataclass(frozen=True)
class MoE:
    experts: int
    top_k: int
    expert_size: int            # intermediate size of one routed expert
    shared_size: int = 0        # intermediate size of the always-on shared expert(s)
    expert_bias: bool = False   # GPT-OSS: biases on every expert projection
    router_bias: bool = False


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    attention: Attention
    intermediate_size: int              # the dense MLP, in the layers that have one
    moe: MoE | None = None
    dense_layers: int | None = None     # layers with a dense MLP; None: all of them (no MoE)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    sliding_layers: int = 0             # layers that attend only to the last `sliding_window` positions
    dtype: str = "bfloat16"             # the checkpoint's unquantised dtype
    quantization: dict | None = None    # `quantization_config`, read by precision.py

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers if self.dense_layers is None else self.dense_layers

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.moe else 0

    @classmethod
    def from_config(cls, c: ModelConfig) -> "ModelShape":
        """The shape of a model Sonic runs (same parameters as `ModelConfig.num_parameters`)."""
        attn = Attention(c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                         qkv_bias=c.attention_bias, qk_norm=c.qk_norm)
        return cls(c.name, c.architecture, c.vocab_size, c.hidden_size, c.num_hidden_layers, attn,
                   c.intermediate_size, tie_word_embeddings=c.tie_word_embeddings,
                   sliding_window=c.sliding_window,
                   sliding_layers=c.num_hidden_layers if c.sliding_window else 0)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], name: str = "") -> "ModelShape":
        """From a `config.json` dict; multimodal configs are read through their `text_config`."""
        if "text_config" in cfg and "hidden_size" not in cfg:
            cfg = {"quantization_config": cfg.get("quantization_config"), "torch_dtype": cfg.get("torch_dtype"),
                   **cfg["text_config"]}
        family = cfg.get("model_type", "")
        if family not in FAMILIES:
            raise SonicError(f"unsupported architecture '{family or cfg.get('architectures')}' in config.json: "
                             f"sonic estimate reads {', '.join(FAMILIES)}")
        get = _getter(cfg, name or family)
        layers = get("num_hidden_layers")
        window, sliding = _sliding(cfg, layers)
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").removeprefix("torch.")
        if dtype not in DTYPE_BYTES:
            raise SonicError(f"unknown torch_dtype '{dtype}' in config.json: expected one of {', '.join(DTYPE_BYTES)}")
        return cls(
            name=name or cfg.get("_name_or_path", "") or family, family=family,
            vocab_size=get("vocab_size"), hidden_size=get("hidden_size"), num_layers=layers,
            attention=_attention(cfg, family, get), intermediate_size=get("intermediate_size"),
            moe=_moe(cfg, family, get), dense_layers=_dense_layers(cfg, family, layers),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=window, sliding_layers=sliding, dtype=dtype,
            quantization=cfg.get("quantization_config") or None)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelShape":
        """From a model folder or its `config.json`."""
        path = Path(path)
        return cls.from_hf(read_hf_config(path), name=path.name if path.is_dir() else path.parent.name)


def _getter(cfg: dict, name: str):
    def get(key: str, *fallbacks: str):
        for k in (key, *fallbacks):
            if cfg.get(k) is not None:
                return cfg[k]
        raise SonicError(f"config.json of {name} lacks '{key}': a {cfg.get('model_type')} config needs it")
    return get


def _attention(cfg: dict, family: str, get) -> Attention:
    heads = get("num_attention_heads")
    if family in MLA_FAMILIES:
        return Attention(heads, heads, 0, q_lora_rank=cfg.get("q_lora_rank") or 0,
                         kv_lora_rank=get("kv_lora_rank"), qk_nope_head_dim=get("qk_nope_head_dim"),
                         qk_rope_head_dim=get("qk_rope_head_dim"), v_head_dim=get("v_head_dim"))
    bias = bool(cfg.get("attention_bias", family == "qwen2"))
    return Attention(heads, cfg.get("num_key_value_heads") or heads,
                     cfg.get("head_dim") or get("hidden_size") // heads,
                     qkv_bias=bias, o_bias=bias and family != "qwen2",  # Qwen2 biases q, k, v only
                     qk_norm=family in ("qwen3", "qwen3_moe"), sinks=family == "gpt_oss")


def _moe(cfg: dict, family: str, get) -> MoE | None:
    if family in DENSE_FAMILIES:
        return None
    top_k = get("num_experts_per_tok", "experts_per_token")
    if family in MLA_FAMILIES:
        size = get("moe_intermediate_size")
        return MoE(get("n_routed_experts"), top_k, size, shared_size=size * (cfg.get("n_shared_experts") or 0),
                   router_bias=cfg.get("topk_method") == "noaux_tc")  # e_score_correction_bias
    if family == "qwen3_moe":
        return MoE(get("num_experts"), top_k, get("moe_intermediate_size"))
    gpt_oss = family == "gpt_oss"
    return MoE(get("num_local_experts", "num_experts"), top_k, get("intermediate_size"),
               expert_bias=gpt_oss, router_bias=gpt_oss)


def _dense_layers(cfg: dict, family: str, layers: int) -> int | None:
    """How many layers keep a dense MLP in a mixture-of-experts model."""
    if family in DENSE_FAMILIES:
        return None
    if family in MLA_FAMILIES:
        first, every = cfg.get("first_k_dense_replace", 0), cfg.get("moe_layer_freq", 1)
        return sum(1 for i in range(layers) if i < first or i % every)
    if family == "qwen3_moe":
        only, step = set(cfg.get("mlp_only_layers") or []), cfg.get("decoder_sparse_step", 1)
        return sum(1 for i in range(layers) if i in only or (i + 1) % step)
    return 0


def _sliding(cfg: dict, layers: int) -> tuple[int | None, int]:
    window = cfg.get("sliding_window")
    if not window or not cfg.get("use_sliding_window", True):
        return None, 0
    types = cfg.get("layer_types")
    if types:
        return window, sum(1 for t in types[:layers] if t == "sliding_attention")
    return window, layers
