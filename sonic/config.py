"""Model and engine configuration: frozen dataclasses, every derived field computed in one place."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sonic.errors import SonicError

# HF `model_type` / GGUF `general.architecture` -> our architecture family.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
HF_CLASS_NAMES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 style frequency scaling (`rope_type: llama3`); `linear` divides positions by `factor`."""
    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # Per-frequency divisors stored by some GGUF files (`rope_freqs.weight`), used instead of rope_scaling.
    rope_freq_factors: tuple[float, ...] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False      # Qwen2: bias on q/k/v projections
    qk_norm: bool = False             # Qwen3: RMSNorm over each head of q and k before RoPE
    sliding_window: int | None = None  # Mistral v0.1
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise SonicError(f"unsupported architecture '{self.architecture}': Sonic runs "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)} models")
        if self.num_attention_heads % self.num_key_value_heads:
            raise SonicError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")

    # Derived fields: the only place shapes are computed from the raw ones.
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def num_parameters(self) -> int:
        per_layer = (self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
                     + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size)
        if self.attention_bias:
            per_layer += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embed = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * per_layer + embed * (1 if self.tie_word_embeddings else 2) + self.hidden_size

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any] | str | Path) -> "ModelConfig":
        """From a Hugging Face `config.json` (a dict, the file, or its folder)."""
        if not isinstance(cfg, dict):
            cfg = read_hf_config(cfg)
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise SonicError(f"unsupported architecture '{model_type or cfg.get('architectures')}': "
                             f"Sonic runs {', '.join(SUPPORTED_ARCHITECTURES)} models")
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        # transformers >= 5 folds rope_theta and rope_scaling into `rope_parameters`.
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or rope
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        eos = cfg.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            architecture=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope_scaling_from_hf(scaling),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3",
            sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos,
            name=cfg.get("_name_or_path", "") or model_type,
        )

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that both `from_hf` and transformers read back to this config."""
        cfg: dict[str, Any] = {
            "model_type": self.architecture,
            "architectures": [HF_CLASS_NAMES[self.architecture]],
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        }
        if self.architecture in ("llama", "mistral"):
            cfg["attention_bias"] = self.attention_bias
        if self.sliding_window is not None:
            cfg["sliding_window"] = self.sliding_window
            cfg["use_sliding_window"] = True
        elif self.architecture != "llama":
            cfg["sliding_window"] = None
            cfg["use_sliding_window"] = False
        if self.rope_scaling is not None:
            cfg["rope_scaling"] = {k: v for k, v in asdict(self.rope_scaling).items()
                                   if self.rope_scaling.rope_type == "llama3" or k in ("rope_type", "factor")}
        return cfg

    @classmethod
    def from_gguf(cls, path: str | Path) -> "ModelConfig":
        from sonic.weights.gguf import read_gguf  # lazy: needs the gguf package
        return read_gguf(path).config


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The dict of a `config.json`, given the file or its folder."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SonicError(f"cannot read model config {path}: {e}") from None


def rope_scaling_from_hf(scaling: dict[str, Any] | None) -> RopeScaling | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind == "llama3":
        return RopeScaling(
            rope_type="llama3",
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
        )
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=float(scaling["factor"]))
    raise SonicError(f"unsupported rope scaling type '{kind}': Sonic supports llama3 and linear")


@dataclass(frozen=True)
class EngineConfig:
    """How to run a model: device, working dtype, runner and cache size."""
    device: str = "cpu"
    dtype: str = "float32"
    runner: str = "ref"
    max_seq_len: int | None = None   # KV cache length; None = the model's context length
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, self.dtype)
