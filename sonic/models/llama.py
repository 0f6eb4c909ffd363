"""The reference model: one plain PyTorch decoder for Llama 2/3, Mistral, Qwen2/2.5, Qwen3 and SmolLM.

This is the truth every fast path is tested against, and it is itself tested against `transformers`.
Parameter names follow Hugging Face checkpoints so state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonic.config import ModelConfig
from sonic.engine.kv_cache import KVCache
from sonic.models.rope import apply_rope, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the working dtype, then scale in the working dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config, self.layer = config, layer
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, config.q_size, bias=bias)
        self.k_proj = nn.Linear(hidden, config.kv_size, bias=bias)
        self.v_proj = nn.Linear(hidden, config.kv_size, bias=bias)
        self.o_proj = nn.Linear(config.q_size, hidden, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x, start: int, cos, sin, cache: KVCache, mask) -> torch.Tensor:
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [b, heads, t, head_dim]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(self.layer, start, k, v)
        keys, values = cache.view(self.layer, mask.shape[-1])  # the mask spans every visible key
        # enable_gqa shares each KV head across its query group without copying the cache.
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=c.gqa_group > 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, c.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, start, cos, sin, cache, mask):
        x = x + self.self_attn(self.input_layernorm(x), start, cos, sin, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaModel(nn.Module):
    """`forward(ids [batch, T], start, cache)` runs positions start..start+T and returns float32 logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope(self, end: int, device, dtype):
        if self._rope is None or self._rope[0].shape[0] < end or self._rope[0].device != device:
            # Tables grow in powers of two so long generations rebuild them only a few times.
            size = max(1 << (end - 1).bit_length(), 256)
            self._rope = rope_tables(self.config, size, device)
        cos, sin = self._rope
        return cos.to(dtype), sin.to(dtype)

    def attention_mask(self, start: int, t: int, device) -> torch.Tensor:
        """Bool [t, start+t]: True where a query may see a key (causal, and inside the sliding window)."""
        return self.row_attention_mask(torch.arange(start, start + t, device=device)[None], start + t)[0, 0]

    def row_attention_mask(self, positions: torch.Tensor, end: int) -> torch.Tensor:
        """Bool [batch, 1, T, end] for query positions [batch, T], each row over its own keys 0..end."""
        k_pos = torch.arange(end, device=positions.device)
        q_pos = positions[:, None, :, None]
        mask = k_pos <= q_pos
        window = self.config.sliding_window
        if window is not None:
            mask &= k_pos > q_pos - window
        return mask

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, start: int, cache: KVCache, last_only: bool = False) -> torch.Tensor:
        t = ids.shape[1]
        if start + t > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions, asked for {start + t}")
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(start + t, ids.device, x.dtype)
        cos, sin = cos[start:start + t], sin[start:start + t]
        mask = self.attention_mask(start, t, ids.device)
        logits = self._layers(x, start, cos, sin, cache, mask, last_only)
        cache.length = start + t
        return logits

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, starts: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Like `forward`, but row b runs positions starts[b]..starts[b]+T against its own cache row:
        sequences of different lengths decoding in one batch. Logits [batch, T, V] (float32)."""
        t = ids.shape[1]
        positions = starts.view(-1, 1) + torch.arange(t, device=ids.device)
        end = int(positions.max()) + 1
        if end > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions, asked for {end}")
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(end, ids.device, x.dtype)
        cos, sin = cos[positions][:, None], sin[positions][:, None]  # [batch, 1, T, head_dim]: per row
        return self._layers(x, positions, cos, sin, cache, self.row_attention_mask(positions, end))

    def _layers(self, x, start, cos, sin, cache, mask, last_only: bool = False) -> torch.Tensor:
        for layer in self.model.layers:
            x = layer(x, start, cos, sin, cache, mask)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x)).float()
