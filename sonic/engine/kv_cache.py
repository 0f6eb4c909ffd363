"""A static KV cache: one preallocated tensor per layer for K and V, written in place."""
from __future__ import annotations

import torch

from sonic.config import ModelConfig


class KVCache:
    """K and V of shape [layers, batch, kv_heads, max_len, head_dim]; positions [0, length) are valid."""

    def __init__(self, config: ModelConfig, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def write(self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k/v [batch, kv_heads, T, head_dim] at positions start..start+T, or, when `start` is a
        tensor [batch, T], row b's tokens at positions start[b] (sequences of different lengths)."""
        if isinstance(start, torch.Tensor):
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            self.k[layer][rows, :, start] = k.transpose(1, 2)
            self.v[layer][rows, :, start] = v.transpose(1, 2)
            return
        end = start + k.shape[-2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def rows(self, lo: int, hi: int) -> "KVCache":
        """A cache over batch rows lo..hi that shares this one's storage (writes land here)."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, lo:hi], self.v[:, lo:hi]
        view.max_len, view.length = self.max_len, self.length
        return view

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
