"""GGUF files -> ModelConfig and Hugging Face state dicts: the default model and tiny written files."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from sonic.config import RopeScaling
from sonic.errors import SonicError
from sonic.weights.gguf import hf_name, read_gguf
from tiny_gguf import FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, VOCAB, permute, tiny_weights, write_gguf  # noqa: F401

@pytest.fixture(scope="module")
def model(default_model_path):
    return read_gguf(default_model_path)


@pytest.fixture(scope="module")
def state(model):
    return model.state_dict()


@pytest.fixture(scope="module")
def hf_state(hf_gguf_model):
    return hf_gguf_model.state_dict()


def reverse_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K permutation undone, written as transformers' GGUF loader writes it."""
    dim = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


# --- the default model -------------------------------------------------------------------------

def test_default_model_config(model):
    cfg = model.config
    assert (cfg.architecture, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == \
        ("llama", 30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.max_position_embeddings == 8192
    assert cfg.rope_theta == 100000.0 and cfg.rope_scaling is None and cfg.rope_freq_factors is None
    assert cfg.rms_norm_eps == pytest.approx(1e-5)
    assert cfg.tie_word_embeddings and not cfg.attention_bias and not cfg.qk_norm
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,)
    assert cfg.name and model.metadata["general.architecture"] == "llama"
    assert len(model.tensor_names()) == 272


def test_default_model_matches_gguf_reference(model, state):
    cfg = model.config
    assert set(state) == {hf_name(n) for n in model.tensor_names()}
    assert "lm_head.weight" not in state
    for t in model.reader.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        if ".attn_q." in t.name:
            ref = reverse_permute(ref, cfg.num_attention_heads)
        elif ".attn_k." in t.name:
            ref = reverse_permute(ref, cfg.num_key_value_heads)
        got = state[hf_name(t.name)]
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(ref))), t.name


def test_default_model_matches_transformers(state, hf_state):
    assert set(hf_state) == set(state) | {"lm_head.weight"}  # transformers lists the tied head too
    for name, got in state.items():
        torch.testing.assert_close(got, hf_state[name], rtol=0, atol=1e-6, msg=name)
    assert torch.equal(hf_state["lm_head.weight"], state["model.embed_tokens.weight"])


def test_shapes_are_torch_order(state):
    assert state["model.embed_tokens.weight"].shape == (49152, 576)
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert state["model.norm.weight"].shape == (576,)


# --- tiny written files ------------------------------------------------------------------------

def as_hf(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {hf_name(n): torch.from_numpy(w) for n, w in weights.items()}


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert set(got) == set(expected)
    for name in got:
        assert torch.equal(got[name], expected[name]), name


def test_llama_undoes_rope_permutation(tmp_path):
    weights = tiny_weights("llama", layers=2, tied=False)
    stored = dict(weights)
    for i in range(2):
        stored[f"blk.{i}.attn_q.weight"] = permute(weights[f"blk.{i}.attn_q.weight"], HEADS)
        stored[f"blk.{i}.attn_k.weight"] = permute(weights[f"blk.{i}.attn_k.weight"], KV_HEADS)
    freqs = np.linspace(1, 4, HEAD_DIM // 2).astype(np.float32)
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0,
            "llama.attention.sliding_window": 128, "tokenizer.ggml.eot_token_id": 7}
    f = read_gguf(write_gguf(tmp_path / "m.gguf", "llama", stored | {"rope_freqs.weight": freqs}, meta, 2))
    cfg = f.config
    assert not cfg.tie_word_embeddings and cfg.num_hidden_layers == 2 and cfg.head_dim == HEAD_DIM
    assert cfg.rope_scaling == RopeScaling(rope_type="linear", factor=2.0)
    assert cfg.rope_freq_factors == tuple(freqs.tolist())
    assert cfg.sliding_window == 128 and cfg.eos_token_ids == (2, 7) and cfg.vocab_size == VOCAB
    assert cfg.name == "tiny llama" and cfg.rms_norm_eps == pytest.approx(1e-6)
    state = f.state_dict()
    assert_same(state, as_hf(weights))
    assert "lm_head.weight" in state
    half = f.state_dict(dtype=torch.bfloat16)
    assert_same(half, {n: w.to(torch.bfloat16) for n, w in state.items()})


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_is_not_permuted(tmp_path, arch):
    weights = tiny_weights(arch)
    f = read_gguf(write_gguf(tmp_path / "m.gguf", arch, weights))
    assert f.config.attention_bias == (arch == "qwen2") and f.config.qk_norm == (arch == "qwen3")
    assert f.config.tie_word_embeddings
    assert_same(f.state_dict(), as_hf(weights))


def test_key_length_sets_head_dim(tmp_path):
    meta = {"mistral.attention.key_length": HEAD_DIM, "mistral.vocab_size": VOCAB}
    f = read_gguf(write_gguf(tmp_path / "m.gguf", "mistral", tiny_weights("mistral"), meta))
    assert f.config.architecture == "mistral" and f.config.head_dim == HEAD_DIM


def test_quantised_tensors_are_dequantised(tmp_path):
    weights = tiny_weights("qwen2")
    stored = dict(weights)
    stored["blk.0.ffn_up.weight"] = (gguf.quants.quantize(weights["blk.0.ffn_up.weight"], Q.Q8_0), Q.Q8_0)
    f = read_gguf(write_gguf(tmp_path / "m.gguf", "qwen2", stored))
    up = f.state_dict()["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(up, torch.from_numpy(weights["blk.0.ffn_up.weight"]), atol=0.05, rtol=0)


# --- errors ------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(SonicError, match="not found"):
        read_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(SonicError, match="not a readable GGUF file"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(SonicError, match=r"unsupported architecture 'gpt2' in .*gpt2\.gguf: Sonic runs llama"):
        read_gguf(path)


def test_missing_tensor(tmp_path):
    weights = tiny_weights("llama")
    del weights["blk.0.ffn_up.weight"]
    with pytest.raises(SonicError, match=r"lacks tensor blk\.0\.ffn_up\.weight"):
        read_gguf(write_gguf(tmp_path / "m.gguf", "llama", weights))


def test_missing_metadata(tmp_path):
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SonicError, match="lacks metadata key llama.embedding_length"):
        read_gguf(path)


def test_unknown_tensor(tmp_path):
    weights = tiny_weights("llama") | {"blk.0.ffn_gate_exps.weight": np.zeros((2, 4), np.float32)}
    with pytest.raises(SonicError, match=r"blk\.0\.ffn_gate_exps\.weight"):
        read_gguf(write_gguf(tmp_path / "m.gguf", "llama", weights))


def test_unsupported_tensor_type(tmp_path):
    weights = tiny_weights("llama")
    rows = weights["blk.0.attn_v.weight"].shape[0]
    raw = np.zeros((rows, gguf.GGML_QUANT_SIZES[Q.IQ4_NL][1] * HIDDEN // 32), np.uint8)
    f = read_gguf(write_gguf(tmp_path / "m.gguf", "llama", weights | {"blk.0.attn_v.weight": (raw, Q.IQ4_NL)}))
    with pytest.raises(SonicError, match=r"unsupported GGUF tensor type IQ4_NL in blk\.0\.attn_v\.weight"):
        f.state_dict()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_state_dict_on_cuda(tmp_path):
    weights = tiny_weights("llama", layers=2, tied=False)
    stored = dict(weights)
    stored["blk.1.ffn_up.weight"] = (gguf.quants.quantize(weights["blk.1.ffn_up.weight"], Q.Q4_1), Q.Q4_1)
    f = read_gguf(write_gguf(tmp_path / "m.gguf", "llama", stored, layers=2))
    cpu = f.state_dict(dtype=torch.bfloat16)
    gpu = f.state_dict(dtype=torch.bfloat16, device="cuda")
    assert all(t.device.type == "cuda" and t.dtype == torch.bfloat16 for t in gpu.values())
    assert_same({n: t.cpu() for n, t in gpu.items()}, cpu)
