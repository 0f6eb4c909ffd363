"""The instruction builder and the tile-packed weights: every output covered once, every byte streamed once."""
import pytest
import torch

from mono_helpers import TILINGS, tiny, tiny_model

from sonic.engine.packed import pack_model
from sonic.errors import SonicError
from sonic.mono.builder import build_program, packed_shapes, shapes_of
from sonic.mono.instructions import Op, Tiling
from sonic.mono.tiles import MATRIX_OPS, blob_tile, pack_tiles, qkv_part_dims, tile_matrix
from sonic.presets import PRESETS


def _assert_partition(ranges, n):
    """The ranges tile 0..n exactly: no gap, no overlap."""
    edge = 0
    for lo, hi in sorted(ranges):
        assert lo == edge and hi > lo
        edge = hi
    assert edge == n


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral", "smollm2", "qwen3-untied-gqa4"])
@pytest.mark.parametrize("tiling", sorted(TILINGS))
def test_tiles_cover_every_output_once(family, tiling):
    c, t = tiny(family), TILINGS[tiling]
    program = build_program(c, t)
    by_op = lambda op, layer=0: [i for i in program.instructions if i.op == op and i.layer == layer]  # noqa: E731
    assert program.count(Op.EMBED) == program.count(Op.SAMPLE) == 1
    _assert_partition([(i.tile_begin, i.tile_end) for i in by_op(Op.LM_HEAD)], c.vocab_size)
    for layer in range(c.num_hidden_layers):
        for g in range(c.num_key_value_heads):
            parts = program.tiling.qkv_head_parts  # 1 where q/k norm needs whole heads
            for part in range(parts):
                qkv = [(i.tile_begin, i.tile_end) for i in by_op(Op.QKV_ROPE, layer) if i.group == g and i.split == part]
                _assert_partition(qkv, c.gqa_group + 2)
            assert {i.split for i in by_op(Op.QKV_ROPE, layer)} == set(range(parts))
            assert sorted(i.split for i in by_op(Op.ATTN_PARTIAL, layer) if i.group == g) == list(range(t.kv_splits))
        combines = [(i.tile_begin, i.tile_end) for i in by_op(Op.ATTN_COMBINE, layer)]
        if t.combine_in_o:
            assert combines == []
        else:
            _assert_partition(combines, c.num_attention_heads)
        _assert_partition([(i.tile_begin, i.tile_end) for i in by_op(Op.GATE_UP, layer)], c.intermediate_size)
        residuals = 0
        for op, k_size in ((Op.O_PROJ, c.q_size), (Op.DOWN_PROJ, c.intermediate_size)):
            tiles = by_op(op, layer)
            for split in range(t.k_splits):
                _assert_partition([(i.tile_begin, i.tile_end) for i in tiles if i.split == split], c.hidden_size)
            rows = {(i.tile_begin, i.tile_end) for i in tiles}
            for r in rows:
                _assert_partition([(i.k_begin, i.k_end) for i in tiles if (i.tile_begin, i.tile_end) == r], k_size)
            residuals += 0 if t.k_splits == 1 else len(rows)
        assert len(by_op(Op.RESIDUAL, layer)) == residuals


def test_weights_are_streamed_once_in_instruction_order():
    c = PRESETS["llama-3.2-1b"]
    program = build_program(c, Tiling())
    offset = 0
    for ins in program.instructions:
        assert ins.weight_offset == offset or ins.weight_bytes == 0
        offset += ins.weight_bytes
    shapes = packed_shapes(c)
    per_layer = sum(shapes[k][0] * shapes[k][1] for k in ("w_qkv", "w_o", "w_gate_up", "w_down"))
    assert program.weight_bytes == 2 * (c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size)


@pytest.mark.parametrize("family,tiling", [("qwen2", "split-k"), ("qwen3-untied-gqa4", "split-k"), ("qwen2", "parts")])
def test_the_blob_holds_each_tile_contiguously(family, tiling):
    model = tiny_model(family)
    packed = pack_model(model)
    program = build_program(model.config, TILINGS[tiling], shapes=shapes_of(packed))
    blob = pack_tiles(packed, program)
    assert blob.numel() == program.weight_bytes // program.tiling.weight_bytes
    for ins in program.instructions:
        if ins.op in MATRIX_OPS:
            assert torch.equal(blob_tile(blob, program, ins), tile_matrix(packed, model.config, ins))
    # The QKV tiles of one layer hold every row of the fused matrix exactly once.
    rows = torch.cat([tile_matrix(packed, model.config, i) for i in program.instructions
                      if i.op == Op.QKV_ROPE and i.layer == 0])
    w = packed.layers[0].w_qkv
    assert rows.shape == w.shape
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, w.tolist()))


def test_mistakes_end_in_one_clear_error():
    c = tiny("llama3")
    shapes = packed_shapes(c)
    with pytest.raises(SonicError, match=r"packed weight w_o has shape \(64, 32\), the config implies \(64, 64\)"):
        build_program(c, shapes={**shapes, "w_o": (64, 32)})
    with pytest.raises(SonicError, match="invalid monokernel batch of 9 rows: use 1"):
        build_program(c, rows=9)
    with pytest.raises(SonicError, match="invalid monokernel tiling kv_splits=0"):
        Tiling(kv_splits=0)
    with pytest.raises(SonicError, match="invalid monokernel tiling combine_in_o=1: use True or False"):
        Tiling(combine_in_o=1)
    with pytest.raises(SonicError, match="qkv_head_parts=3 does not divide the head's 8 RoPE pairs"):
        build_program(c.with_(head_dim=16), Tiling(qkv_head_parts=3))


def test_head_parts_keep_rope_pairs_together():
    assert qkv_part_dims(8, 0, 2) == [0, 1, 4, 5] and qkv_part_dims(8, 1, 2) == [2, 3, 6, 7]
    assert qkv_part_dims(8, 0, 1) == list(range(8))
    # q/k norm normalises whole heads: with parts it moves into attention (one row, splits merged in
    # O); otherwise such a model keeps one part.
    split = build_program(tiny("qwen3"), Tiling(qkv_head_parts=2, combine_in_o=True))
    assert split.tiling.qkv_head_parts == 2 and split.norm_in_attention
    writers = [i for i in split.instructions if split.is_k_writer(i)]
    assert len(writers) == tiny("qwen3").num_hidden_layers and all(i.op == Op.O_PROJ for i in writers)
    assert not build_program(tiny("llama3"), Tiling(qkv_head_parts=2, combine_in_o=True)).norm_in_attention
    assert build_program(tiny("qwen3"), Tiling(qkv_head_parts=2)).tiling.qkv_head_parts == 1
    assert build_program(tiny("qwen3"), Tiling(qkv_head_parts=2, combine_in_o=True), rows=2).tiling.qkv_head_parts == 1


def test_default_tiling_cuts_heads_into_four_parts_only_within_one_wave():
    from sonic.mono.runner import default_tiling
    parts = lambda name, sms=132: default_tiling(PRESETS[name], sms).qkv_head_parts  # noqa: E731
    # qwen3-1.7b: (16 + 2 * 8) heads * 4 = 128 QKV tiles of 32 rows fit 132 SMs; llama-3.2-1b's 48
    # heads would need 192, two waves; on fewer SMs qwen3 too keeps two parts.
    assert parts("qwen3-1.7b") == 4 and parts("qwen3-1.7b", 114) == 2
    assert parts("llama-3.2-1b") == parts("llama-3.1-8b") == 2
    # A part keeps 16 rows for the tensor cores: head_dim 32 keeps two parts.
    assert default_tiling(tiny("llama3").with_(head_dim=32), 132).qkv_head_parts == 2
    for name in ("qwen3-1.7b", "llama-3.2-1b", "smollm2-135m"):
        build_program(PRESETS[name], default_tiling(PRESETS[name]))  # valid for the builder
