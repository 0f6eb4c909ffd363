"""GGUF tensor data -> float32 torch tensors, in pure torch ops so it runs on CPU or GPU.

Each block decoder mirrors ggml's reference (and the `gguf` package's numpy port) operation by
operation, in float32, so results match those bit for bit.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from sonic.errors import SonicError

QK_K = 256
# Bound the temporaries of big tensors (a few float32 copies of one chunk live at once).
CHUNK_ELEMENTS = 1 << 22


def _shifts(values: Sequence[int], like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.uint8, device=like.device).reshape(shape)


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 field at byte `at` of each block, as an (n, 1) float32 column."""
    return blocks[:, at:at + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """Split each group of packed bytes into its low nibbles, then its high nibbles: (n, groups, 2 * width)."""
    qs = qs.reshape(qs.shape[0], groups, 1, -1) >> _shifts([0, 4], qs, (1, 1, 2, 1))
    return (qs & 0x0F).reshape(qs.shape[0], groups, -1)


def _bits(packed: torch.Tensor, count: int, width: int, bits: int) -> torch.Tensor:
    """Bit planes of `packed` (n, width bytes): plane i holds bits [i*bits, (i+1)*bits) -> (n, count, width)."""
    shifts = _shifts(range(0, count * bits, bits), packed, (1, count, 1))
    return (packed.reshape(packed.shape[0], 1, width) >> shifts) & ((1 << bits) - 1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].view(torch.int8).to(torch.float32) * _f16(b, 0)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 1).reshape(b.shape[0], 32).to(torch.float32) - 8
    return _f16(b, 0) * q


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 4:], 1).reshape(b.shape[0], 32).to(torch.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """32 five-bit values from 4 bytes of high bits (little-endian bit order) and 16 bytes of nibbles."""
    high = _bits(qh, 8, 4, 1).transpose(1, 2).reshape(qh.shape[0], 32)
    return _nibbles(qs, 1).reshape(qs.shape[0], 32) | (high << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _five_bit(b[:, 2:6], b[:, 6:]).to(torch.float32) - 16
    return _f16(b, 0) * q


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _five_bit(b[:, 4:8], b[:, 8:]).to(torch.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins packed into 12 bytes (Q4_K, Q5_K), as float32 (n, 8, 1)."""
    s = s.reshape(s.shape[0], 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32).unsqueeze(-1), mn.to(torch.float32).unsqueeze(-1)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    dl = (_f16(b, 80) * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = (qs.reshape(n, 2, 1, 32) >> _shifts([0, 2, 4, 6], b, (1, 1, 4, 1))) & 3
    return (dl * q.reshape(n, 16, 16).to(torch.float32) - ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
    low = _bits(scales[:, :8], 2, 8, 4).reshape(n, 16)
    high = _bits(scales[:, 8:], 4, 4, 2).reshape(n, 16)
    sc = ((low | (high << 4)).to(torch.float32) - 32)
    dl = (_f16(b, 108) * sc).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> _shifts([0, 2, 4, 6], b, (1, 1, 4, 1))) & 3
    # A set hmask bit means no offset; a clear one subtracts 4.
    qh = _bits(hmask, 8, 32, 1) ^ 1
    q = ql.reshape(n, 16, 16).to(torch.float32) - (qh.reshape(n, 16, 16) << 2).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d, dm = _f16(b, 0).unsqueeze(-1) * sc, _f16(b, 2).unsqueeze(-1) * mn
    q = _nibbles(b[:, 16:], 4).reshape(n, 8, 32).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d, dm = _f16(b, 0).unsqueeze(-1) * sc, _f16(b, 2).unsqueeze(-1) * mn
    high = _bits(b[:, 16:48], 8, 32, 1)
    q = (_nibbles(b[:, 48:], 4).reshape(n, 8, 32) | (high << 4)).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].view(torch.int8).to(torch.float32)
    d = (_f16(b, 208) * scales).reshape(n, 16, 1)
    low = _nibbles(ql, 2).reshape(n, 8, 32)
    high = (qh.reshape(n, 2, 1, 32) >> _shifts([0, 2, 4, 6], b, (1, 1, 4, 1))) & 3
    q = (low | (high.reshape(n, 8, 32) << 4)).to(torch.float32) - 32
    return (d * q.reshape(n, 16, 16)).reshape(n, QK_K)


BLOCK_DECODERS: dict[Q, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q5_0: _q5_0, Q.Q5_1: _q5_1,
    Q.Q2_K: _q2_k, Q.Q3_K: _q3_k, Q.Q4_K: _q4_k, Q.Q5_K: _q5_k, Q.Q6_K: _q6_k,
}
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
SUPPORTED_TYPES = (*FLOAT_TYPES, *BLOCK_DECODERS)


def _qtype(qtype: Q | int, name: str) -> Q:
    where = f" in {name}" if name else ""
    try:
        qtype = Q(qtype)
    except ValueError:
        raise SonicError(f"unknown GGUF tensor type {qtype}{where}") from None
    if qtype not in SUPPORTED_TYPES:
        raise SonicError(f"unsupported GGUF tensor type {qtype.name}{where}: Sonic reads "
                         f"{', '.join(t.name for t in SUPPORTED_TYPES)}")
    return qtype


def _raw_bytes(data: np.ndarray | torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 torch tensor on `device` (no copy when it can be avoided)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        with warnings.catch_warnings():  # memory-mapped files are read-only; nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(data)
    data = data.reshape(-1).view(torch.uint8)
    return data if device is None else data.to(device)


def dequantize(data: np.ndarray | torch.Tensor, qtype: Q | int, shape: Sequence[int], *,
               name: str = "", device: str | torch.device | None = None) -> torch.Tensor:
    """Decode one GGUF tensor to float32 on `device` (default: where `data` is).

    `data` holds the raw bytes (a `GGUFReader` tensor's `.data`, any dtype, or a torch tensor);
    `shape` is the GGUF shape, fastest dimension first, so the result has the reversed shape.
    """
    qtype = _qtype(qtype, name)
    torch_shape = tuple(int(d) for d in reversed(list(shape)))
    count = math.prod(torch_shape)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = _raw_bytes(data, device)
    if count % block_size or raw.numel() != count // block_size * type_size:
        raise SonicError(f"GGUF tensor {name or '?'} of type {qtype.name} and shape {list(shape)} "
                         f"has {raw.numel()} bytes, expected {count // block_size * type_size}")
    if qtype in FLOAT_TYPES:
        out = raw.view(FLOAT_TYPES[qtype]).to(torch.float32)
        if isinstance(data, np.ndarray) and out.device.type == "cpu" and qtype == Q.F32:
            out = out.clone()  # never hand out a view of the read-only, memory-mapped file
        return out.reshape(torch_shape)
    return _decode_blocks(BLOCK_DECODERS[qtype], raw.view(-1, type_size), block_size).reshape(torch_shape)


def _decode_blocks(decode: Callable[[torch.Tensor], torch.Tensor], blocks: torch.Tensor,
                   block_size: int) -> torch.Tensor:
    step = max(1, CHUNK_ELEMENTS // block_size)
    if blocks.shape[0] <= step:
        return decode(blocks)
    out = torch.empty(blocks.shape[0], block_size, dtype=torch.float32, device=blocks.device)
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = decode(blocks[start:start + step])
    return out
