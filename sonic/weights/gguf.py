"""Read a GGUF model file: its config, and its weights as a state dict with Hugging Face names."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from sonic.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from sonic.errors import SonicError
from sonic.progress import progress
from sonic.weights.dequant import dequantize
from sonic.weights.gguf_meta import open_gguf_reader, read_metadata

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")
ROPE_FREQS = "rope_freqs.weight"
# llama.cpp's converter reorders Q/K rows of these architectures from rotate-half to interleaved pairs.
PERMUTED_ARCHITECTURES = ("llama", "mistral")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for one Sonic does not know."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    m = LAYER_TENSOR.fullmatch(gguf_name)
    if m and m[2] in LAYER_NAMES:
        return f"model.layers.{m[1]}.{LAYER_NAMES[m[2]]}"
    return None


def required_tensors(config: ModelConfig) -> list[str]:
    per_layer = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                 "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
    if config.attention_bias:
        per_layer += ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
    if config.qk_norm:
        per_layer += ["attn_q_norm.weight", "attn_k_norm.weight"]
    names = ["token_embd.weight", "output_norm.weight"] + ([] if config.tie_word_embeddings else ["output.weight"])
    return names + [f"blk.{i}.{n}" for i in range(config.num_hidden_layers) for n in per_layer]


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: per head, interleaved (x0, y0, x1, y1, ...) -> halves (x..., y...)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    config: ModelConfig
    reader: Any = field(repr=False)

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.reader.tensors]

    def state_dict(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                   ) -> dict[str, torch.Tensor]:
        """All weights, dequantised tensor by tensor on `device`, cast to `dtype`, with HF names."""
        device = torch.device(device)
        tensors = [t for t in self.reader.tensors if t.name != ROPE_FREQS]
        out = {}
        for t in progress(tensors, total=len(tensors), desc=f"loading {self.path.name}"):
            w = dequantize(t.data, t.tensor_type, t.shape, name=t.name, device=device)
            out[hf_name(t.name)] = self._fix_layout(t.name, w).to(dtype)
        return out

    def _fix_layout(self, gguf_name: str, w: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.architecture not in PERMUTED_ARCHITECTURES:
            return w
        if gguf_name.endswith((".attn_q.weight", ".attn_q.bias")):
            return unpermute_rope(w, cfg.num_attention_heads)
        if gguf_name.endswith((".attn_k.weight", ".attn_k.bias")):
            return unpermute_rope(w, cfg.num_key_value_heads)
        return w


def read_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file and read its config; weights are read later by `state_dict`."""
    path = Path(path)
    reader = open_gguf_reader(path)
    metadata = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    rope_freqs = None
    if ROPE_FREQS in tensors:
        t = tensors[ROPE_FREQS]
        rope_freqs = dequantize(t.data, t.tensor_type, t.shape, name=ROPE_FREQS).tolist()
    config = config_from_gguf(metadata, list(tensors), rope_freqs=rope_freqs, source=str(path))
    check_tensor_names(config, list(tensors), source=str(path))
    return GGUFFile(path=path, metadata=metadata, config=config, reader=reader)


def check_tensor_names(config: ModelConfig, names: Sequence[str], source: str) -> None:
    """Every weight the model needs is there, and nothing that Sonic would silently drop."""
    missing = [n for n in required_tensors(config) if n not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SonicError(f"{source} lacks tensor {missing[0]}{more}: the file is incomplete or not a "
                         f"{config.architecture} model")
    unknown = [n for n in names if n != ROPE_FREQS and hf_name(n) is None]
    if unknown:
        raise SonicError(f"{source} has tensor {unknown[0]}, which a {config.architecture} model "
                         f"in Sonic does not use")


def config_from_gguf(metadata: dict[str, Any], tensor_names: Sequence[str], *,
                     rope_freqs: Sequence[float] | None = None, source: str = "the GGUF file") -> ModelConfig:
    """A ModelConfig from GGUF metadata and the names of the tensors present."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SonicError(f"unsupported architecture '{arch}' in {source}: Sonic runs "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)} models")

    def get(key: str, default: Any = KeyError) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is KeyError:
            raise SonicError(f"{source} lacks metadata key {arch}.{key}")
        return value

    names = set(tensor_names)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = get("attention.key_length", None) or get("rope.dimension_count", None) or hidden // heads
    vocab = get("vocab_size", None) or len(metadata.get("tokenizer.ggml.tokens") or ())
    if not vocab:
        raise SonicError(f"{source} lacks metadata key {arch}.vocab_size and tokenizer.ggml.tokens")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", None) or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(get("rope.scaling.type", None), get("rope.scaling.factor", None), source),
        rope_freq_factors=tuple(float(f) for f in rope_freqs) if rope_freqs is not None else None,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        sliding_window=_int_or_none(get("attention.sliding_window", None)),
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=_eos_ids(metadata),
        name=metadata.get("general.name") or arch,
    )


def _rope_scaling(kind: str | None, factor: float | None, source: str) -> RopeScaling | None:
    if kind in (None, "", "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=float(factor))
    raise SonicError(f"unsupported rope scaling type '{kind}' in {source}: Sonic supports linear")


def _eos_ids(metadata: dict[str, Any]) -> tuple[int, ...]:
    ids = [metadata.get("tokenizer.ggml.eos_token_id"), metadata.get("tokenizer.ggml.eot_token_id")]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
