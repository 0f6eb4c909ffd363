"""Seeded random weights for any config: the same seed gives the same tensors on the same device."""
from __future__ import annotations

import torch

from sonic.config import ModelConfig
from sonic.progress import progress


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint in Hugging Face naming, with its shape."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (c.hidden_size,),
            p + "self_attn.q_proj.weight": (c.q_size, c.hidden_size),
            p + "self_attn.k_proj.weight": (c.kv_size, c.hidden_size),
            p + "self_attn.v_proj.weight": (c.kv_size, c.hidden_size),
            p + "self_attn.o_proj.weight": (c.hidden_size, c.q_size),
            p + "post_attention_layernorm.weight": (c.hidden_size,),
            p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
        })
        if c.attention_bias:
            for name, size in (("q", c.q_size), ("k", c.kv_size), ("v", c.kv_size)):
                shapes[p + f"self_attn.{name}_proj.bias"] = (size,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
    shapes["model.norm.weight"] = (c.hidden_size,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return shapes


def random_state_dict(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Weights scaled like a trained model's (unit-variance activations), so logits are not degenerate."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    shapes = weight_shapes(config)
    for name, shape in progress(shapes.items(), total=len(shapes), desc="random weights"):
        t = torch.empty(shape, dtype=dtype, device=device)
        if name.endswith("norm.weight"):
            t.normal_(1.0, 0.1, generator=gen)   # near one, but not exactly, so the norm weight matters
        elif name.endswith("bias"):
            t.normal_(0.0, 0.1, generator=gen)
        elif name == "model.embed_tokens.weight":
            t.normal_(0.0, 1.0, generator=gen)
        else:
            t.normal_(0.0, shape[1] ** -0.5, generator=gen)
        out[name] = t
    return out
