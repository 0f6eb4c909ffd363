"""The buffer regions each instruction reads and writes: what the validator and the simulation check.

A region is (buffer, lo, hi) over the buffer's tiled axis; every instruction covers all query rows,
so rows are not part of a region. `pyvm.py` touches exactly these regions (its tests check that it
reproduces the reference model, so a region missing here would show up there as a wrong result).

Buffers: token, pos [rows]; h [rows, H] fp32 residual; q [rows, Nq] by (q head, part); k_new
[rows, Nkv] by (kv head, part) (Program.norm_in_attention); kv{l} the
layer's cache by (group, k|v, part); attn_part by (group, split); attn [rows, Nq] by q head; kpart by
(split, H row); act [rows, I]; logits [rows, V]; out (tokens to the host). Parts are those of
`Tiling.qkv_head_parts` (qkv_part_dims).
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from sonic.mono.instructions import Instruction, Op, Program


@dataclass(frozen=True)
class Access:
    buffer: str
    lo: int
    hi: int
    write: bool

    def overlaps(self, other: "Access") -> bool:
        return self.buffer == other.buffer and self.lo < other.hi and other.lo < self.hi


def _r(buffer, lo, hi):
    return Access(buffer, lo, hi, False)


def _w(buffer, lo, hi):
    return Access(buffer, lo, hi, True)


def _qkv(program: Program, ins: Instruction) -> list[Access]:
    c, parts, part = program.config, program.tiling.qkv_head_parts, ins.split
    out = [_r("h", 0, c.hidden_size), _r("pos", 0, 1)]
    g, gqa = ins.group, c.gqa_group
    for slot in range(ins.tile_begin, min(ins.tile_end, gqa)):
        unit = (g * gqa + slot) * parts + part
        out.append(_w("q", unit, unit + 1))
    for slot, which in ((gqa, 0), (gqa + 1, 1)):  # the k head, then the v head
        if ins.tile_begin <= slot < ins.tile_end:
            if which == 0 and program.norm_in_attention:  # raw k, normed by attention
                out.append(_w("k_new", g * parts + part, g * parts + part + 1))
                continue
            unit = (2 * g + which) * parts + part
            out.append(_w(f"kv{ins.layer}", unit, unit + 1))
    return out


def _projection(program: Program, ins: Instruction, source: str) -> list[Access]:
    out = [_r(source, ins.k_begin, ins.k_end)]
    if program.tiling.k_splits == 1:
        return out + [_r("h", ins.tile_begin, ins.tile_end), _w("h", ins.tile_begin, ins.tile_end)]
    hidden = program.config.hidden_size
    base = ins.split * hidden
    return out + [_w("kpart", base + ins.tile_begin, base + ins.tile_end)]


def accesses(program: Program, ins: Instruction) -> list[Access]:
    c, splits = program.config, program.tiling.kv_splits
    h = c.hidden_size
    if ins.op == Op.EMBED:
        return [_r("token", 0, 1), _w("h", 0, h)]
    if ins.op == Op.QKV_ROPE:
        return _qkv(program, ins)
    if ins.op == Op.ATTN_PARTIAL:
        g, parts = ins.group, program.tiling.qkv_head_parts
        new = [_r("k_new", g * parts, (g + 1) * parts)] if program.norm_in_attention else []
        return [_r("pos", 0, 1), _r("q", ins.tile_begin * parts, ins.tile_end * parts), *new,
                _r(f"kv{ins.layer}", 2 * g * parts, (2 * g + 2) * parts),
                _w("attn_part", g * splits + ins.split, g * splits + ins.split + 1)]
    if ins.op == Op.ATTN_COMBINE:
        g = ins.group
        return [_r("attn_part", g * splits, (g + 1) * splits), _w("attn", ins.tile_begin, ins.tile_end)]
    if ins.op == Op.O_PROJ:
        # attn is addressed by q head, the projection by feature: convert its k range to heads.
        d = c.head_dim
        h0, h1 = ins.k_begin // d, -(-ins.k_end // d)
        acc = _projection(program, ins, "attn")
        if program.tiling.combine_in_o:  # the splits of every group its heads belong to
            g0, g1 = h0 // c.gqa_group, -(-h1 // c.gqa_group)
            acc = [_r("attn_part", g0 * splits, g1 * splits)] + acc[1:]
            if program.is_k_writer(ins):  # every group's new k row, normed, into the cache
                parts = program.tiling.qkv_head_parts
                acc += [_r("pos", 0, 1), _r("k_new", 0, c.num_key_value_heads * parts)]
                acc += [_w(f"kv{ins.layer}", 2 * g * parts, (2 * g + 1) * parts) for g in range(c.num_key_value_heads)]
            return acc
        return [_r("attn", h0, h1)] + acc[1:]
    if ins.op == Op.GATE_UP:
        return [_r("h", 0, h), _w("act", ins.tile_begin, ins.tile_end)]
    if ins.op == Op.DOWN_PROJ:
        return _projection(program, ins, "act")
    if ins.op == Op.RESIDUAL:
        parts = [_r("kpart", s * h + ins.tile_begin, s * h + ins.tile_end) for s in range(ins.k_end)]
        return parts + [_r("h", ins.tile_begin, ins.tile_end), _w("h", ins.tile_begin, ins.tile_end)]
    if ins.op == Op.LM_HEAD:
        return [_r("h", 0, h), _w("logits", ins.tile_begin, ins.tile_end)]
    if ins.op == Op.SAMPLE:
        return [_r("logits", 0, c.vocab_size), _r("pos", 0, 1), _w("token", 0, 1), _w("pos", 0, 1),
                _w("out", 0, 1)]
    raise ValueError(f"unknown opcode {ins.op}")


def _segments(program: Program) -> dict[str, list[int]]:
    """Per buffer, the sorted boundaries of every access: regions cut into pieces no access splits."""
    edges: dict[str, set[int]] = {}
    for ins in program.instructions:
        for a in accesses(program, ins):
            edges.setdefault(a.buffer, set()).update((a.lo, a.hi))
    return {buf: sorted(e) for buf, e in edges.items()}


def prior_conflicts(program: Program, epochs: int) -> list[list[tuple[int, Access, Access]]]:
    """For each unrolled node (epoch * N + index), in sequential order, the nearest earlier accesses
    it conflicts with: (node, their access, its access). A write conflicts with each segment's last
    writer and the readers since; a read with the last writer. Older conflicts are ordered before
    these by the same rule, so ordering these orders all of them."""
    n, cuts = len(program.instructions), _segments(program)
    writer: dict[tuple[str, int], tuple[int, Access]] = {}
    readers: dict[tuple[str, int], list[tuple[int, Access]]] = {}
    out = []
    for node in range(epochs * n):
        acc = accesses(program, program.instructions[node % n])
        found: dict[int, tuple[int, Access, Access]] = {}
        for a in acc:
            edges = cuts[a.buffer]
            for seg in range(bisect_left(edges, a.lo), bisect_left(edges, a.hi)):
                key = (a.buffer, seg)
                earlier = ([writer[key]] if key in writer else []) + (readers.get(key, []) if a.write else [])
                for other, b in earlier:
                    found.setdefault(other, (other, b, a))
        out.append(sorted(found.values(), key=lambda t: t[0]))
        for a in sorted(acc, key=lambda x: x.write):  # its reads, then its writes, become the history
            edges = cuts[a.buffer]
            for seg in range(bisect_left(edges, a.lo), bisect_left(edges, a.hi)):
                key = (a.buffer, seg)
                if a.write:
                    writer[key], readers[key] = (node, a), []
                else:
                    readers.setdefault(key, []).append((node, a))
    return out
