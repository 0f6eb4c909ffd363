"""Bytes per parameter: a chosen precision (`--weights bf16|fp8|int4`) or the checkpoint's own (`native`).

Quantised checkpoints store the matrices of attention and MLPs in low precision plus one scale per
block or group of weights; embeddings, LM head, routers, norms and biases stay in the checkpoint's dtype
(true of DeepSeek's fp8, GPT-OSS's mxfp4 and compressed-tensors int4 checkpoints alike).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from sonic.errors import SonicError
from sonic.estimate.params import LABELS, QUANTISABLE, Part, parts
from sonic.estimate.shape import DTYPE_NAMES, ModelShape

WEIGHT_CHOICES = ("native", "bf16", "fp8", "int4")


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: float
    group: int = 1              # weights sharing one scale
    scale_bytes: float = 0.0    # bytes of that scale (and zero point, if any)

    @property
    def bytes_per_param(self) -> float:
        return self.bits / 8 + self.scale_bytes / self.group


BF16 = WeightFormat("bf16", 16)
FP8_BLOCK = WeightFormat("fp8 (128x128 blocks, fp32 scales)", 8, 128 * 128, 4)
INT4_G128 = WeightFormat("int4 (groups of 128, bf16 scales)", 4, 128, 2)


@dataclass(frozen=True)
class Precision:
    base: WeightFormat                      # everything not listed in `matrices`
    matrices: dict[str, WeightFormat] = field(default_factory=dict)  # part name -> format

    def bytes_per_param(self, part: Part) -> float:
        fmt = self.base if part.vector else self.matrices.get(part.name, self.base)
        return fmt.bytes_per_param

    def describe(self) -> str:
        low: dict[str, list[str]] = {}
        for name in QUANTISABLE:
            fmt = self.matrices.get(name, self.base)
            if fmt != self.base:
                low.setdefault(fmt.name, []).append(LABELS[name])
        if not low:
            return self.base.name
        used = "; ".join(f"{fmt} for {', '.join(names)}" for fmt, names in low.items())
        return f"{used}; {self.base.name} for the rest"


def precision_for(shape: ModelShape, weights: str = "native") -> Precision:
    base = WeightFormat(DTYPE_NAMES[shape.dtype], 8 * shape.dtype_bytes)
    names = {p.name for p in parts(shape)}
    present = [name for name in QUANTISABLE if name in names]
    if weights == "bf16":
        return Precision(BF16)
    if weights in ("fp8", "int4"):
        fmt = FP8_BLOCK if weights == "fp8" else INT4_G128
        return Precision(BF16, {name: fmt for name in present})
    if weights != "native":
        raise SonicError(f"unknown --weights '{weights}': choose one of {', '.join(WEIGHT_CHOICES)}")
    q = shape.quantization
    if not q:
        return Precision(base)
    fmt = quantised_format(q)
    skip = list(q.get("modules_to_not_convert") or q.get("ignore") or q.get("ignored_layers") or [])
    return Precision(base, {name: fmt for name in present if not _ignored(MODULE_NAMES[name], skip)})


def quantised_format(q: dict) -> WeightFormat:
    """The low-precision format a `quantization_config` gives the matrices it converts."""
    method = q.get("quant_method", "")
    if method == "fp8":
        block = q.get("weight_block_size")
        if block:  # one fp32 scale per block (DeepSeek's weight_scale_inv)
            return WeightFormat(f"fp8 ({block[0]}x{block[1]} blocks, fp32 scales)", 8, block[0] * block[1], 4)
        return WeightFormat("fp8 (per-tensor scales)", 8)
    if method == "mxfp4":  # OCP microscaling: 32 fp4 values share one e8m0 scale byte
        return WeightFormat("mxfp4 (groups of 32, e8m0 scales)", 4, 32, 1)
    if method in ("gptq", "awq"):  # an fp16 scale and a packed zero point per group
        bits, group = q.get("bits", 4), q.get("group_size", 128)
        return _grouped(f"int{bits}", bits, group, 2 + bits / 8)
    if method == "compressed-tensors":
        groups = [g.get("weights") or {} for g in (q.get("config_groups") or {}).values()]
        if groups:
            w = groups[0]
            bits, kind = w.get("num_bits", 8), w.get("type", "int")
            zero = 0 if w.get("symmetric", True) else bits / 8
            group = w.get("group_size") if w.get("strategy", "group") == "group" else None
            return _grouped(f"{kind}{bits}", bits, group, 2 + zero)  # scales in bf16
    raise SonicError(f"unsupported quant_method '{method}' in quantization_config: "
                     f"pass --weights bf16, fp8 or int4 to estimate a chosen precision")


def _grouped(kind: str, bits: int, group: int | None, scale_bytes: float) -> WeightFormat:
    if not group or group < 0:  # per channel: one scale per row, negligible
        return WeightFormat(f"{kind} (per-channel scales)", bits)
    return WeightFormat(f"{kind} (groups of {group})", bits, group, scale_bytes)


# One representative module path per part, in the Hugging Face naming that exclusion lists match.
MODULE_NAMES = {
    "attention": "model.layers.0.self_attn.o_proj",
    "dense_mlp": "model.layers.0.mlp.down_proj",
    "routed_experts": "model.layers.0.mlp.experts.0.down_proj",
    "shared_experts": "model.layers.0.mlp.shared_experts.down_proj",
}


def _ignored(module: str, patterns: list[str]) -> bool:
    """Exclusion rules as quantisers apply them: `re:` regexes, globs over a prefix, else substrings."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module):
                return True
        elif "*" in pattern:
            if fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(module, pattern + ".*"):
                return True
        elif pattern in module:
            return True
    return False
