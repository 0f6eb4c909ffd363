"""Weights packed once at load into the layouts the fused kernels want (fused QKV, stacked gate/up).

The reference model's projections are re-pointed at views of the packed tensors, so both paths share
one copy of the weights and the reference stays usable for prefill and checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sonic.models.llama import LlamaModel


@dataclass
class PackedLayer:
    attn_norm: torch.Tensor          # [H]
    w_qkv: torch.Tensor              # [Nq + 2 Nkv, H]
    b_qkv: torch.Tensor | None       # [Nq + 2 Nkv] (Qwen2)
    q_norm: torch.Tensor | None      # [D] (Qwen3)
    k_norm: torch.Tensor | None
    w_o: torch.Tensor                # [H, Nq]
    mlp_norm: torch.Tensor           # [H]
    w_gate_up: torch.Tensor          # [2 I, H]: gate rows then up rows
    w_down: torch.Tensor             # [H, I]


@dataclass
class PackedModel:
    embed: torch.Tensor              # [V, H]
    layers: list[PackedLayer]
    final_norm: torch.Tensor         # [H]
    lm_head: torch.Tensor            # [V, H] (the embedding itself when tied)


def _fuse(parts: list[torch.nn.Linear | torch.Tensor], attr: str = "weight") -> torch.Tensor | None:
    tensors = [getattr(p, attr) for p in parts]
    if any(t is None for t in tensors):
        return None
    packed = torch.cat([t.detach() for t in tensors], dim=0).contiguous()
    # Re-point the modules at views of the packed tensor: one copy of the weights in memory.
    offset = 0
    for module, t in zip(parts, tensors):
        n = t.shape[0]
        setattr(module, attr, torch.nn.Parameter(packed[offset:offset + n], requires_grad=False))
        offset += n
    return packed


def pack_model(model: LlamaModel) -> PackedModel:
    layers = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        layers.append(PackedLayer(
            attn_norm=layer.input_layernorm.weight.detach(),
            w_qkv=_fuse(qkv),
            b_qkv=_fuse(qkv, "bias") if model.config.attention_bias else None,
            q_norm=attn.q_norm.weight.detach() if model.config.qk_norm else None,
            k_norm=attn.k_norm.weight.detach() if model.config.qk_norm else None,
            w_o=attn.o_proj.weight.detach(),
            mlp_norm=layer.post_attention_layernorm.weight.detach(),
            w_gate_up=_fuse([mlp.gate_proj, mlp.up_proj]),
            w_down=mlp.down_proj.weight.detach(),
        ))
    return PackedModel(embed=model.model.embed_tokens.weight.detach(), layers=layers,
                       final_norm=model.model.norm.weight.detach(), lm_head=model.lm_head.weight.detach())
