"""Which weights each instruction streams, and the tile-packed blob that makes each tile contiguous.

The blob holds every matrix tile in instruction order, so an SM streams one instruction's weights as
one contiguous range (`weight_offset`, `weight_bytes`) and the next instruction's range follows it.
Inside a tile the layout is [K / 8][rows][8]: 16-byte vectors of 8 consecutive k of one row, the
rows of one k chunk side by side. A kernel thread that takes every (threads)-th vector then always
meets the same row (when rows divide the threads), so it keeps one running sum per row. Norm weights, biases and the embedding rows are small and are read
from the packed model directly.
"""
from __future__ import annotations

import torch

from sonic.config import ModelConfig
from sonic.engine.packed import PackedModel
from sonic.mono.instructions import Instruction, Op, Program

MATRIX_OPS = (Op.QKV_ROPE, Op.O_PROJ, Op.GATE_UP, Op.DOWN_PROJ, Op.LM_HEAD)


def qkv_slot_rows(config: ModelConfig, group: int, slot: int) -> tuple[int, int]:
    """Rows of the fused QKV matrix ([q heads | k heads | v heads]) for one head slot of a group."""
    c, d = config, config.head_dim
    if slot < c.gqa_group:
        head = group * c.gqa_group + slot
        return head * d, (head + 1) * d
    base = c.q_size + (0 if slot == c.gqa_group else c.kv_size)
    return base + group * d, base + (group + 1) * d


def head_parts(ins: Instruction) -> int:
    """Parts each head slot of a QKV tile is cut into (k_end; 0 in lists built before parts)."""
    return max(ins.k_end, 1)


def qkv_part_dims(head_dim: int, part: int, parts: int) -> list[int]:
    """Dims of one part of a head: w = head_dim / 2 / parts of the first half and the same of the
    second, so each RoPE pair (d, d + head_dim / 2) lies in one part."""
    w, half = head_dim // 2 // parts, head_dim // 2
    return list(range(part * w, (part + 1) * w)) + list(range(half + part * w, half + (part + 1) * w))


def tile_shape(config: ModelConfig, ins: Instruction) -> tuple[int, int] | None:
    """(rows, K) of the instruction's weight tile, or None for ops that stream no matrix."""
    c = config
    if ins.op == Op.QKV_ROPE:
        return (ins.tile_end - ins.tile_begin) * c.head_dim // head_parts(ins), c.hidden_size
    if ins.op == Op.GATE_UP:
        return 2 * (ins.tile_end - ins.tile_begin), c.hidden_size
    if ins.op in (Op.O_PROJ, Op.DOWN_PROJ):
        return ins.tile_end - ins.tile_begin, ins.k_end - ins.k_begin
    if ins.op == Op.LM_HEAD:
        return ins.tile_end - ins.tile_begin, c.hidden_size
    return None


def widest_tile(program) -> int:
    """Rows of the program's widest weight tile (1 when it streams none)."""
    shapes = (tile_shape(program.config, ins) for ins in program.instructions)
    return max([shape[0] for shape in shapes if shape is not None], default=1)


def tile_matrix(packed: PackedModel, config: ModelConfig, ins: Instruction) -> torch.Tensor:
    """The instruction's weight tile [rows, K], gathered from the packed model's matrices."""
    rows = slice(ins.tile_begin, ins.tile_end)
    if ins.op == Op.QKV_ROPE:
        w = packed.layers[ins.layer].w_qkv
        dims = torch.tensor(qkv_part_dims(config.head_dim, ins.split, head_parts(ins)))
        slots = [w[qkv_slot_rows(config, ins.group, s)[0] + dims] for s in range(ins.tile_begin, ins.tile_end)]
        return torch.cat(slots)
    if ins.op == Op.GATE_UP:
        w, inter = packed.layers[ins.layer].w_gate_up, config.intermediate_size
        return torch.cat([w[rows], w[ins.tile_begin + inter:ins.tile_end + inter]])
    if ins.op == Op.O_PROJ:
        return packed.layers[ins.layer].w_o[rows, ins.k_begin:ins.k_end]
    if ins.op == Op.DOWN_PROJ:
        return packed.layers[ins.layer].w_down[rows, ins.k_begin:ins.k_end]
    if ins.op == Op.LM_HEAD:
        return packed.lm_head[rows]
    raise ValueError(f"{ins.op.name} streams no weight matrix")


VECTOR = 8  # elements per 16-byte vector of a tile


def interleave(tile: torch.Tensor) -> torch.Tensor:
    """[rows, K] -> the blob's [K / 8][rows][8] order, flattened."""
    rows, k = tile.shape
    return tile.reshape(rows, k // VECTOR, VECTOR).transpose(0, 1).reshape(-1)


def deinterleave(flat: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The inverse of `interleave`: a tile [rows, K] (a copy)."""
    return flat.view(k // VECTOR, rows, VECTOR).transpose(0, 1).reshape(rows, k)


def pack_tiles(packed: PackedModel, program: Program) -> torch.Tensor:
    """The blob as a flat tensor of the weight dtype; tile i starts at weight_offset / element size."""
    c = program.config
    dtype = packed.embed.dtype
    tiles = [ins for ins in program.instructions if ins.op in MATRIX_OPS]
    total = sum(ins.weight_bytes for ins in tiles) // program.tiling.weight_bytes
    blob = torch.empty(total, dtype=dtype, device=packed.embed.device)
    for ins in tiles:
        start = ins.weight_offset // program.tiling.weight_bytes
        tile = tile_matrix(packed, c, ins)
        blob[start:start + tile.numel()] = interleave(tile)
    return blob


def blob_tile(blob: torch.Tensor, program: Program, ins: Instruction) -> torch.Tensor:
    """The tile [rows, K] that one instruction's weight stream holds."""
    rows, k = tile_shape(program.config, ins)
    start = ins.weight_offset // program.tiling.weight_bytes
    return deinterleave(blob[start:start + rows * k], rows, k)
