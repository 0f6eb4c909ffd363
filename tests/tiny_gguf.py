"""Tiny GGUF files written with the gguf package, for loader and CLI tests."""
from pathlib import Path

import gguf
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 64, 4, 2, 16, 96, 32


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K of llama models (rotate-half -> interleaved)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_weights(arch: str, layers: int = 1, tied: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF-named float32 tensors in HF row order (before any permutation)."""
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    if not tied:
        shapes["output.weight"] = (VOCAB, HIDDEN)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    layer = {"attn_norm.weight": (HIDDEN,), "attn_q.weight": (q, HIDDEN), "attn_k.weight": (kv, HIDDEN),
             "attn_v.weight": (kv, HIDDEN), "attn_output.weight": (HIDDEN, q), "ffn_norm.weight": (HIDDEN,),
             "ffn_gate.weight": (FFN, HIDDEN), "ffn_up.weight": (FFN, HIDDEN), "ffn_down.weight": (HIDDEN, FFN)}
    if arch == "qwen2":
        layer |= {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
    if arch == "qwen3":
        layer |= {"attn_q_norm.weight": (HEAD_DIM,), "attn_k_norm.weight": (HEAD_DIM,)}
    shapes |= {f"blk.{i}.{n}": s for i in range(layers) for n, s in layer.items()}
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def write_gguf(path: Path, arch: str, tensors: dict, meta: dict | None = None, layers: int = 1) -> Path:
    """A GGUF file with llama.cpp's metadata keys; tensors are arrays or (raw bytes, type) pairs."""
    w = gguf.GGUFWriter(path, arch)
    values = {f"{arch}.block_count": layers, f"{arch}.embedding_length": HIDDEN,
              f"{arch}.feed_forward_length": FFN, f"{arch}.attention.head_count": HEADS,
              f"{arch}.attention.head_count_kv": KV_HEADS, f"{arch}.context_length": 256,
              f"{arch}.rope.freq_base": 10000.0, f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
              "general.name": f"tiny {arch}", "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2} | (meta or {})
    for key, value in values.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=t[1])
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
