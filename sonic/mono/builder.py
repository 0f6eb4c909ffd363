"""Builds the instruction list of one decode step from a model config and a tiling policy.

Instructions come out in one global topological order (every lag-0 wait names counters whose
producers come earlier), which the schedule keeps on every SM. Weight offsets follow the same order,
so the blob streams front to back within an epoch.
"""
from __future__ import annotations

from dataclasses import replace

from sonic.config import ModelConfig
from sonic.errors import SonicError
from sonic.mono.instructions import Instruction, Op, Program, Tiling, Wait
from sonic.mono.tiles import tile_shape

MAX_ROWS = 8  # query rows of a verification batch


def packed_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's packed matrices (`sonic.engine.packed.PackedLayer`) and the LM head."""
    c = config
    return {"w_qkv": (c.q_size + 2 * c.kv_size, c.hidden_size), "w_o": (c.hidden_size, c.q_size),
            "w_gate_up": (2 * c.intermediate_size, c.hidden_size), "w_down": (c.hidden_size, c.intermediate_size),
            "lm_head": (c.vocab_size, c.hidden_size)}


def shapes_of(packed) -> dict[str, tuple[int, ...]]:
    """The same shapes read from a `PackedModel`."""
    layer = packed.layers[0]
    return {"w_qkv": tuple(layer.w_qkv.shape), "w_o": tuple(layer.w_o.shape),
            "w_gate_up": tuple(layer.w_gate_up.shape), "w_down": tuple(layer.w_down.shape),
            "lm_head": tuple(packed.lm_head.shape)}


def _ranges(n: int, step: int) -> list[tuple[int, int]]:
    return [(b, min(b + step, n)) for b in range(0, n, step)]


def _splits(n: int, parts: int, align: int = 8) -> list[tuple[int, int]]:
    """`parts` near-equal ranges covering 0..n (fewer when n is smaller), cut at multiples of `align`
    when n is one (the kernel reads 16-byte vectors of 8 bf16)."""
    unit = align if n % align == 0 else 1
    parts = min(parts, n // unit)
    cuts = [n // unit * i // parts * unit for i in range(parts)] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


class _Emitter:
    def __init__(self, config: ModelConfig, tiling: Tiling):
        self.config, self.tiling = config, tiling
        self.instructions: list[Instruction] = []
        self.counters: list[str] = []
        self.offset = 0

    def counter(self, name: str) -> int:
        self.counters.append(name)
        return len(self.counters) - 1

    def emit(self, op: Op, signal: int, waits: tuple[Wait, ...], **fields) -> None:
        ins = Instruction(op, waits=waits, signal=signal, **fields)
        shape = tile_shape(self.config, ins)
        if shape is not None:
            nbytes = shape[0] * shape[1] * self.tiling.weight_bytes
            ins = Instruction(op, waits=waits, signal=signal, weight_offset=self.offset, weight_bytes=nbytes,
                              **fields)
            self.offset += nbytes
        self.instructions.append(ins)

    def signalled(self, counter: int) -> int:
        return sum(ins.signal == counter for ins in self.instructions)

    def wait_all(self, counter: int, lag: int = 0) -> tuple[Wait, ...]:
        return (Wait(counter, self.signalled(counter), lag),)

    def projection(self, op: Op, layer: int, k_size: int, rows_per_tile: int, name: str,
                   waits: tuple[Wait, ...]) -> tuple[Wait, ...]:
        """A matvec into the residual: direct when unsplit, else split-K partials and a RESIDUAL pass
        per row tile, which waits only for that tile's partials. Returns the wait that says the
        residual is updated."""
        hidden, k_parts = self.config.hidden_size, _splits(k_size, self.tiling.k_splits)
        tiles = _ranges(hidden, rows_per_tile)
        if len(k_parts) == 1:
            done = self.counter(f"L{layer}.{name}")
            for b, end in tiles:
                self.emit(op, done, waits, layer=layer, tile_begin=b, tile_end=end, k_end=k_size)
            return self.wait_all(done)
        partials = [self.counter(f"L{layer}.{name}.r{b}") for b, _ in tiles]
        for (b, end), counter in zip(tiles, partials):
            for split, (k0, k1) in enumerate(k_parts):
                self.emit(op, counter, waits, layer=layer, split=split, tile_begin=b, tile_end=end,
                          k_begin=k0, k_end=k1)
        reduced = self.counter(f"L{layer}.{name}.residual")
        for (b, end), counter in zip(tiles, partials):
            self.emit(Op.RESIDUAL, reduced, self.wait_all(counter), layer=layer, tile_begin=b, tile_end=end,
                      k_end=len(k_parts))
        return self.wait_all(reduced)


def fit_tiling(config: ModelConfig, tiling: Tiling, rows: int = 1) -> Tiling:
    """The tiling as this model can use it. q/k norm with heads in parts moves the norm into attention
    (Program.norm_in_attention), which needs the splits merged in O and one query row; otherwise such
    models keep whole heads (one part)."""
    parts = tiling.qkv_head_parts
    if parts > 1 and config.qk_norm and (rows > 1 or not tiling.combine_in_o):
        return replace(tiling, qkv_head_parts=1)
    if config.head_dim % (2 * parts):
        raise SonicError(f"qkv_head_parts={parts} does not divide the head's {config.head_dim // 2} RoPE pairs: "
                         "use a divisor of head_dim / 2")
    return tiling


def _layer(e: _Emitter, layer: int, h_ready: tuple[Wait, ...]) -> tuple[Wait, ...]:
    c, t = e.config, e.tiling
    slots, parts = c.gqa_group + 2, t.qkv_head_parts
    qkv = [e.counter(f"L{layer}.qkv.g{g}") for g in range(c.num_key_value_heads)]
    for g in range(c.num_key_value_heads):
        for b, end in _ranges(slots, t.qkv_heads_per_tile):
            for part in range(parts):
                e.emit(Op.QKV_ROPE, qkv[g], h_ready, layer=layer, group=g, split=part, tile_begin=b,
                       tile_end=end, k_end=parts)
    heads = lambda g: {"tile_begin": g * c.gqa_group, "tile_end": (g + 1) * c.gqa_group}  # noqa: E731
    if t.combine_in_o:  # one counter for every split of every group: each O tile merges them
        merged = e.counter(f"L{layer}.attn")
        partial = [merged] * c.num_key_value_heads
    else:
        partial = [e.counter(f"L{layer}.attn.g{g}") for g in range(c.num_key_value_heads)]
    for g in range(c.num_key_value_heads):
        for s in range(t.kv_splits):
            e.emit(Op.ATTN_PARTIAL, partial[g], e.wait_all(qkv[g]), layer=layer, group=g, split=s,
                   k_end=t.kv_splits, **heads(g))
    if t.combine_in_o:
        attn_ready = e.wait_all(merged)
    else:
        combined = e.counter(f"L{layer}.combine")
        for g in range(c.num_key_value_heads):
            e.emit(Op.ATTN_COMBINE, combined, e.wait_all(partial[g]), layer=layer, group=g, k_end=t.kv_splits,
                   **heads(g))
        attn_ready = e.wait_all(combined)
    h_ready = e.projection(Op.O_PROJ, layer, c.q_size, t.o_rows_per_tile, "o", attn_ready)
    gate_up = e.counter(f"L{layer}.gate_up")
    for b, end in _ranges(c.intermediate_size, t.gate_up_rows_per_tile):
        e.emit(Op.GATE_UP, gate_up, h_ready, layer=layer, tile_begin=b, tile_end=end)
    return e.projection(Op.DOWN_PROJ, layer, c.intermediate_size, t.down_rows_per_tile, "down",
                        e.wait_all(gate_up))


def build_program(config: ModelConfig, tiling: Tiling = Tiling(), rows: int = 1,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> Program:
    """The instruction list of one epoch. `shapes` (from `shapes_of(packed)`) are checked against
    the config, so a list is never built for weights of another model."""
    if not 1 <= rows <= MAX_ROWS:
        raise SonicError(f"invalid monokernel batch of {rows} rows: use 1 (decode) to {MAX_ROWS} (verification)")
    if shapes is not None and shapes != packed_shapes(config):
        want = packed_shapes(config)
        bad = next(k for k in want if shapes.get(k) != want[k])
        raise SonicError(f"packed weight {bad} has shape {shapes.get(bad)}, the config implies {want[bad]}: "
                         "pack the weights of this model")
    tiling = fit_tiling(config, tiling, rows)
    e = _Emitter(config, tiling)
    sample = e.counter("sample")
    embed = e.counter("embed")
    e.emit(Op.EMBED, embed, (Wait(sample, 1, lag=1),), tile_end=config.hidden_size)
    h_ready = e.wait_all(embed)
    for layer in range(config.num_hidden_layers):
        h_ready = _layer(e, layer, h_ready)
    lm = e.counter("lm_head")
    for b, end in _ranges(config.vocab_size, tiling.lm_head_rows_per_tile):
        e.emit(Op.LM_HEAD, lm, h_ready, tile_begin=b, tile_end=end)
    e.emit(Op.SAMPLE, sample, e.wait_all(lm), tile_end=config.vocab_size)
    return Program(config, tiling, rows, tuple(e.instructions), tuple(e.counters))
