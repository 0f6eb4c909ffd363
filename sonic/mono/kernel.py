"""The CUDA monokernel from Python: its source (the generated header + csrc), what it supports, the
parameter block it is launched with, and the cubin (nvcc at first use, cached by source hash)."""
from __future__ import annotations

import ctypes
from pathlib import Path

from sonic.mono.codegen import generate_header
from sonic.mono.instructions import Op, Program
from sonic.mono.tiles import head_parts, widest_tile

CSRC = Path(__file__).resolve().parent / "csrc"
# One source, in this order.
SOURCES = ("ptx.cuh", "common.cuh", "matvec.cuh", "attention.cuh", "ops.cuh", "sample.cuh", "monokernel.cu")
MAX_TILE_ROWS = 256  # MAX_TILE_ROWS in common.cuh: the widest tile the kernel handles
MAX_TOP_K = 64       # MAX_TOP_K in sample.cuh: the largest top-k the kernel samples with


def kernel_source(program: Program, defines: dict[str, int] | None = None) -> str:
    """The one source nvcc compiles; `defines` override the kernel's tuning macros (MONO_*)."""
    macros = "".join(f"#define {name} {value}\n" for name, value in sorted((defines or {}).items()))
    header = generate_header(program).replace("#pragma once\n", "")  # one translation unit, not a header
    check = f'static_assert(sizeof(Params) == {ctypes.sizeof(Params)}, "Params differs from kernel.py");\n'
    return "\n".join([macros + header] + [(CSRC / name).read_text() for name in SOURCES] + [check])


def unsupported(program: Program) -> str | None:
    """Why the CUDA kernel cannot run this program, or None."""
    c, t = program.config, program.tiling
    if t.weight_bytes != 2:
        return "the kernel streams bf16 weights only"
    if c.head_dim % 8 or c.head_dim > 512:
        return f"head_dim {c.head_dim} is not a multiple of 8 up to 512"
    for name, size in (("hidden", c.hidden_size), ("intermediate", c.intermediate_size), ("q", c.q_size)):
        if size % 8:
            return f"the {name} size {size} is not a multiple of 8"
    for ins in program.instructions:
        rows = ins.tile_end - ins.tile_begin
        if ins.op == Op.QKV_ROPE:
            rows = rows * c.head_dim // head_parts(ins)
        elif ins.op == Op.GATE_UP:
            rows *= 2
        elif ins.op not in (Op.O_PROJ, Op.DOWN_PROJ, Op.LM_HEAD):
            continue
        if rows > MAX_TILE_ROWS:
            return f"a {ins.op.name} tile of {rows} rows is wider than the kernel's {MAX_TILE_ROWS} rows"
        if (ins.k_end - ins.k_begin) % 8 and ins.op in (Op.O_PROJ, Op.DOWN_PROJ):
            return f"a {ins.op.name} k split of {ins.k_end - ins.k_begin} is not a multiple of 8"
    return None


# common.cuh's launch shape and shared-memory layout (defaults of its MONO_* macros), mirrored so the
# host can size verification batches without compiling; a compile test checks the two agree.
CONSUMERS, CONSUMER_WARPS, PAGE_BYTES, SMEM_BYTES, MAX_PAGES = 256, 8, 16 * 1024, 227 * 1024, 32


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def ring_pages(program: Program) -> int:
    """NUM_PAGES of common.cuh: the 16 KiB weight pages left beside the activations of `rows` rows."""
    c, m = program.config, program.rows
    tile_rows = widest_tile(program)
    red = max(max(CONSUMERS, CONSUMER_WARPS * tile_rows) * m, 64 + 4 * CONSUMERS)
    chunk = min(64 if c.head_dim > 64 else 128, CONSUMERS)
    attn = max(c.gqa_group * chunk, CONSUMERS // (c.head_dim // 2) * c.gqa_group * c.head_dim)
    off = _align(16 * MAX_PAGES + 64 + 4 * (CONSUMER_WARPS + 1) * m + 64, 16) + 4 * red + 4 * tile_rows * m
    off = _align(off + 4 * c.gqa_group * c.head_dim + 12 * c.gqa_group, 16)
    off = _align(off + 4 * attn, 16)
    off = _align(off + 2 * m * max(c.hidden_size, c.q_size, c.intermediate_size), 1024)
    return min((SMEM_BYTES - off) // PAGE_BYTES, MAX_PAGES)


_POINTERS = ("instructions", "queue_start", "queue", "blob", "smalls", "embed", "final_norm", "cos", "sin",
             "k_cache", "v_cache", "h", "q", "k_new", "attn_o", "attn_max", "attn_sum", "attn", "kpart", "act",
             "logits", "part_val", "part_idx", "cand_val", "cand_idx", "token", "pos", "counters", "stop_epoch",
             "error", "abort_flag", "out_tokens", "out_count", "host_stop", "profile")


class Params(ctypes.Structure):
    """`struct Params` of monokernel.cu, field for field."""
    _fields_ = [(name, ctypes.c_uint64) for name in _POINTERS] + [
        ("first_epoch", ctypes.c_uint64), ("timeout_ns", ctypes.c_uint64),
        ("num_epochs", ctypes.c_uint32), ("max_len", ctypes.c_uint32), ("stop_at_eos", ctypes.c_uint32),
        ("top_k", ctypes.c_uint32), ("seed", ctypes.c_uint64), ("sample_step", ctypes.c_uint64),
        ("inv_temperature", ctypes.c_float), ("top_p", ctypes.c_float)]


def compile_program(program: Program, defines: dict[str, int] | None = None) -> bytes:
    from sonic.kernels.cuda.build import compile_cubin
    return compile_cubin(kernel_source(program, defines))
