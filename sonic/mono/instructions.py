"""The monokernel's instruction list: fused operations with tile ranges and dataflow counters.

One `Program` describes one decode step (an *epoch*) of every layer for `rows` query rows. The
persistent kernel walks the same list once per token; counters are monotonic and never reset, so a
wait in epoch e (1-based) is satisfied when `counter >= (e - lag) * count`. Every instruction signals
its counter exactly once per epoch, so `count` is the number of instructions that signal it.
`lag = 1` waits on the previous epoch (the embedding of token t+1 waits on the sampling of token t).

Tile ranges per opcode (`tile_begin:tile_end`, `k_begin:k_end`, `group`, `split`):
  EMBED         tile = hidden features written (all of them)
  QKV_ROPE      group = KV head group g; tile = head slots of the group, in group order: the group's
                q heads (0..gqa-1), then its k head (gqa), then its v head (gqa+1); split = part p of
                k_end parts of each head: dims p*w..(p+1)*w and the same + D/2 (w = D / 2 / parts),
                so every RoPE pair stays in one tile
  ATTN_PARTIAL  group g, split s of `Tiling.kv_splits`; tile = the group's q heads
  ATTN_COMBINE  group g; tile = the group's q heads; merges the splits in split order
  O_PROJ        tile = output rows of H; k = input features of q_size; split = k split index; with
                `Tiling.combine_in_o` it merges the attention splits of its k range itself
  GATE_UP       tile = rows of the intermediate size (gate rows and the same up rows)
  DOWN_PROJ     tile = output rows of H; k = input features of I; split = k split index
  RESIDUAL      tile = rows of H: adds the k-split partials, in split order, to the residual
  LM_HEAD       tile = vocabulary rows
  SAMPLE        tile = the whole vocabulary
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from sonic.config import ModelConfig
from sonic.errors import SonicError


class Op(IntEnum):
    EMBED = 0         # next-token embedding row -> fp32 residual
    QKV_ROPE = 1      # RMSNorm + QKV matvec (+ bias) (+ q/k norm) + RoPE + KV append
    ATTN_PARTIAL = 2  # one KV split of one KV head group: unnormalised output, running max and sum
    ATTN_COMBINE = 3  # merges one group's splits in split order
    O_PROJ = 4        # O projection; adds into the residual, or writes a split-K partial
    GATE_UP = 5       # RMSNorm + gate/up matvec + SiLU(gate) * up
    DOWN_PROJ = 6     # down projection; adds into the residual, or writes a split-K partial
    RESIDUAL = 7      # split-K partials summed in split order into the residual
    LM_HEAD = 8       # final RMSNorm + LM head rows -> fp32 logits
    SAMPLE = 9        # token choice, EOS check, position advance, token to the host


MAX_WAITS = 4  # fixed-size wait array in the C++ struct


@dataclass(frozen=True)
class Wait:
    counter: int
    count: int    # signals expected per epoch
    lag: int = 0  # 0: this epoch, 1: the previous one


@dataclass(frozen=True)
class Instruction:
    op: Op
    layer: int = 0
    group: int = 0
    split: int = 0
    tile_begin: int = 0
    tile_end: int = 0
    k_begin: int = 0
    k_end: int = 0
    waits: tuple[Wait, ...] = ()
    signal: int = 0
    weight_offset: int = 0  # bytes into the tile-packed weight blob
    weight_bytes: int = 0   # bytes of weights this instruction streams

    def __post_init__(self):
        if len(self.waits) > MAX_WAITS:
            raise ValueError(f"{self.op.name} has {len(self.waits)} waits; the struct holds {MAX_WAITS}")

    def describe(self) -> str:
        return (f"{self.op.name}(layer={self.layer}, group={self.group}, split={self.split}, "
                f"tile={self.tile_begin}:{self.tile_end}, k={self.k_begin}:{self.k_end})")


@dataclass(frozen=True)
class Tiling:
    """How work is cut into instructions. Rows are output rows of a matvec; a tile's weights are
    contiguous in the packed blob, so one instruction is one contiguous stream."""
    qkv_heads_per_tile: int = 1     # head slots per QKV tile (whole heads: RoPE pairs d and d + D/2)
    qkv_head_parts: int = 1         # parts of each head slot, RoPE pairs kept together
    o_rows_per_tile: int = 16
    gate_up_rows_per_tile: int = 16  # each tile streams these gate rows and the same up rows
    down_rows_per_tile: int = 16
    lm_head_rows_per_tile: int = 128
    k_splits: int = 1               # split-K of the O and down projections (reduced by RESIDUAL)
    kv_splits: int = 4              # split-KV of attention (merged by ATTN_COMBINE, or in O's staging)
    combine_in_o: bool = False      # O_PROJ merges the splits as it stages its inputs (no ATTN_COMBINE)
    weight_bytes: int = 2           # bytes per weight element (bf16)

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if name == "combine_in_o":
                if not isinstance(value, bool):
                    raise SonicError(f"invalid monokernel tiling {name}={value!r}: use True or False")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SonicError(f"invalid monokernel tiling {name}={value!r}: use a positive integer")


@dataclass(frozen=True)
class Program:
    config: ModelConfig
    tiling: Tiling
    rows: int                              # query rows per epoch: 1 for decode, 2..8 for verification
    instructions: tuple[Instruction, ...]
    counters: tuple[str, ...]              # counter id -> name
    _producers: dict = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        producers: dict[int, list[int]] = {}
        for i, ins in enumerate(self.instructions):
            producers.setdefault(ins.signal, []).append(i)
        object.__setattr__(self, "_producers", {c: tuple(p) for c, p in producers.items()})

    def producers(self, counter: int) -> tuple[int, ...]:
        """Indices of the instructions that signal `counter` (once each per epoch)."""
        return self._producers.get(counter, ())

    def with_instructions(self, instructions) -> "Program":
        return Program(self.config, self.tiling, self.rows, tuple(instructions), self.counters)

    def counter_id(self, name: str) -> int:
        return self.counters.index(name)

    def count(self, op: Op) -> int:
        return sum(ins.op == op for ins in self.instructions)

    @property
    def weight_bytes(self) -> int:
        return sum(ins.weight_bytes for ins in self.instructions)

    @property
    def norm_in_attention(self) -> bool:
        """q/k norm with heads in parts: a part cannot norm its head alone, so QKV leaves q and k raw
        (k in `k_new`), each attention split norms and rotates them, and the first O tile (ordered
        after every split) writes the normed k into the cache."""
        return self.config.qk_norm and self.tiling.qkv_head_parts > 1

    def is_k_writer(self, ins: Instruction) -> bool:
        """The instruction that writes the layer's new k rows under norm_in_attention."""
        return self.norm_in_attention and ins.op == Op.O_PROJ and ins.tile_begin == 0 and ins.split == 0
