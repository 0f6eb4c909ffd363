"""Our torch dequantisation against the gguf package's numpy reference, bit for bit."""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, quants

import sonic.weights.dequant as dq
from sonic.errors import SonicError
from sonic.weights.dequant import SUPPORTED_TYPES, dequantize

# Byte offsets of the fp16 scale fields in each block: random bytes there could be NaN or Inf.
FP16_FIELDS = {
    Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
BLOCK_TYPES = list(FP16_FIELDS)


def reference(data: np.ndarray, qtype: Q) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(data, qtype), dtype=np.float32))


def gguf_shape(rows: int, cols: int) -> list[int]:
    return [cols, rows]


def random_blocks(qtype: Q, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random raw bytes in the reader's layout (rows, bytes), with finite fp16 scales."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, blocks_per_row, type_size), dtype=np.uint8)
    for at in FP16_FIELDS[qtype]:
        scale = (rng.standard_normal((rows, blocks_per_row, 1)) * 0.05).astype(np.float16)
        raw[..., at:at + 2] = scale.view(np.uint8)
    return raw.reshape(rows, blocks_per_row * type_size)


def quantized(qtype: Q, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 1e-8, 3.0, -3.0]  # zeros, a tiny value and outliers
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        return x.astype(np.float16)
    return quants.quantize(x, qtype)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda q: q.name)
@pytest.mark.parametrize("rows,blocks", [(1, 1), (5, 3), (7, 9)])
def test_quantized_random_floats_match_reference(qtype, rows, blocks):
    cols = blocks * max(GGML_QUANT_SIZES[qtype][0], 32)
    data = quantized(qtype, rows, cols, seed=rows * 100 + blocks)
    out = dequantize(data, qtype, gguf_shape(rows, cols))
    assert out.dtype == torch.float32 and out.shape == (rows, cols)
    assert torch.equal(out, reference(data, qtype))


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows,blocks", [(1, 1), (3, 7), (11, 2)])
def test_random_blocks_match_reference(qtype, rows, blocks):
    data = random_blocks(qtype, rows, blocks, seed=rows * 100 + blocks)
    cols = blocks * GGML_QUANT_SIZES[qtype][0]
    out = dequantize(data, qtype, gguf_shape(rows, cols))
    assert out.shape == (rows, cols)
    assert torch.equal(out, reference(data, qtype))


def test_bf16_random_bits_match_reference():
    bits = np.random.default_rng(1).integers(0, 1 << 16, (3, 17), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # keep Inf/NaN patterns out: NaN != NaN
    data = bits.view(np.uint8)
    assert torch.equal(dequantize(data, Q.BF16, [17, 3]), reference(data, Q.BF16))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0], ids=lambda q: q.name)
def test_torch_input_int_type_and_chunking(qtype, monkeypatch):
    data = random_blocks(qtype, 6, 5)
    cols = 5 * GGML_QUANT_SIZES[qtype][0]
    expected = reference(data, qtype)
    monkeypatch.setattr(dq, "CHUNK_ELEMENTS", 3 * GGML_QUANT_SIZES[qtype][0])  # 3 blocks per chunk
    out = dequantize(torch.from_numpy(data), int(qtype), gguf_shape(6, cols))
    assert torch.equal(out, expected)


def test_one_and_three_dimensional_shapes():
    data = quantized(Q.Q8_0, 6, 64)
    expected = reference(data, Q.Q8_0)
    assert torch.equal(dequantize(data.reshape(-1), Q.Q8_0, [384]), expected.reshape(-1))
    assert torch.equal(dequantize(data, Q.Q8_0, [64, 3, 2]), expected.reshape(2, 3, 64))


def test_f32_result_is_a_writable_copy():
    data = np.arange(8, dtype=np.float32)
    data.flags.writeable = False  # as in a memory-mapped file
    out = dequantize(data, Q.F32, [8])
    out += 1
    assert data[0] == 0 and out[0] == 1


def test_supported_types_cover_the_brief():
    names = {q.name for q in SUPPORTED_TYPES}
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"} <= names


def test_unsupported_type_names_the_type_and_tensor():
    data = np.zeros((1, GGML_QUANT_SIZES[Q.IQ2_XXS][1]), dtype=np.uint8)
    with pytest.raises(SonicError, match=r"unsupported GGUF tensor type IQ2_XXS in blk\.0\.attn_q\.weight: "
                                         r"Sonic reads F32, F16, BF16, Q8_0"):
        dequantize(data, Q.IQ2_XXS, [256, 1], name="blk.0.attn_q.weight")
    with pytest.raises(SonicError, match="unknown GGUF tensor type 999"):
        dequantize(data, 999, [256, 1])


def test_wrong_byte_count_is_an_error():
    data = quantized(Q.Q4_0, 2, 64)
    with pytest.raises(SonicError, match="has 72 bytes, expected 36"):
        dequantize(data, Q.Q4_0, [64, 1], name="w")
    with pytest.raises(SonicError, match="expected"):
        dequantize(data, Q.Q4_0, [48, 2], name="w")  # rows not a whole number of blocks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("qtype", [*QUANTIZABLE, *BLOCK_TYPES], ids=lambda q: q.name)
def test_cuda_matches_reference(qtype):
    if qtype in FP16_FIELDS:
        data = random_blocks(qtype, 9, 13)
    else:
        data = quantized(qtype, 9, 13 * 32)
    expected = reference(data, qtype)
    shape = gguf_shape(*expected.shape)
    out = dequantize(data, qtype, shape, device="cuda")
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), expected)
    out = dequantize(torch.from_numpy(np.ascontiguousarray(data)).cuda(), qtype, shape)
    assert torch.equal(out.cpu(), expected)
