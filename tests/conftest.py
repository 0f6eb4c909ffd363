"""Shared fixtures: tiny random models of every supported family, and the default model's path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter; this must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sonic.config import ModelConfig, RopeScaling
from sonic.engine.sampling import SamplingParams

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers such as tiny_gguf

from live_server import client, make_server, server, tiny_chat_engine  # noqa: E402,F401 - server fixtures

# One tiny config per family, each exercising that family's quirk.
TINY_CONFIGS = {
    "llama3": ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16, rope_theta=500000.0,
                          rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 32),
                          max_position_embeddings=512, bos_token_id=1, eos_token_ids=(2,)),
    "llama2": ModelConfig("llama", 256, 64, 160, 2, 4, 4, 16, max_position_embeddings=512),
    "llama-linear-rope": ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16,
                                     rope_scaling=RopeScaling("linear", 2.0), max_position_embeddings=512),
    "smollm2": ModelConfig("llama", 256, 72, 96, 3, 9, 3, 8, rope_theta=100000.0,
                           tie_word_embeddings=True, max_position_embeddings=512),
    "mistral": ModelConfig("mistral", 256, 64, 128, 2, 4, 1, 16, rope_theta=1e6, sliding_window=8,
                           max_position_embeddings=512),
    "qwen2": ModelConfig("qwen2", 256, 64, 128, 2, 4, 2, 16, attention_bias=True,
                         tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                         max_position_embeddings=512),
    "qwen3": ModelConfig("qwen3", 256, 64, 128, 2, 4, 2, 32, qk_norm=True, tie_word_embeddings=True,
                         rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512),
    "qwen3-untied-gqa4": ModelConfig("qwen3", 256, 96, 128, 2, 8, 2, 24, qk_norm=True,
                                     rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512),
}


def pytest_collection_modifyitems(config, items):
    gpus = torch.cuda.device_count()
    for item in items:
        if "gpu" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "multi_gpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason="needs several CUDA GPUs"))


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_family(request):
    return request.param, TINY_CONFIGS[request.param]


@pytest.fixture(scope="session")
def default_model_path():
    from sonic.weights.loader import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def tok(default_model_path):
    """Our tokenizer for the default model, built from its GGUF vocabulary."""
    from sonic.tokenizer import Tokenizer
    return Tokenizer.load(default_model_path)


@pytest.fixture(scope="session")
def hf_tok(default_model_path, tmp_path_factory):
    """transformers' tokenizer loaded from the same GGUF file: the reference ours is held to."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("gguf")
    (folder / default_model_path.name).symlink_to(default_model_path)
    return transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=default_model_path.name)


@pytest.fixture(scope="session")
def hf_gguf_model(default_model_path, tmp_path_factory):
    """transformers' model loaded (dequantised to float32) from the default GGUF file."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_gguf")
    (folder / default_model_path.name).symlink_to(default_model_path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=default_model_path.name, dtype=torch.float32).eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def save_tiny_model(folder, tok, config: ModelConfig, seed: int, state_dict=None):
    """A random model of `config` (or these weights) with the default model's tokenizer and chat
    template, as an HF folder."""
    import json

    from sonic.weights.random import random_state_dict
    from sonic.weights.safetensors import save_hf_folder

    state = state_dict if state_dict is not None else random_state_dict(config, seed=seed)
    folder = save_hf_folder(config, state, folder)
    tok.backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": tok.chat_template, "eos_token": "<|im_end|>", "add_bos_token": False}))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tok):
    """A one-layer random model with the default model's tokenizer and a 64-token context: loads in
    well under a second, so CLI and engine tests can run the whole pipeline."""
    config = ModelConfig("llama", tok.vocab_size, 32, 64, 1, 2, 1, 16, max_position_embeddings=64,
                         bos_token_id=1, eos_token_ids=(2,), name="tiny")
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), tok, config, seed=5)


RETRACING_START = 504  # a token from which the retracing model's greedy path runs long before it strays


@pytest.fixture(scope="session")
def retracing_model_dir(tmp_path_factory, tok):
    """The tiny chat model's shape with its attention outputs scaled to a tenth: nearly a Markov chain,
    so after a prompt that holds the path greedy decoding takes from a token, prompt lookup's drafts
    are mostly right; attention still steers the answer off that path, so some are rejected."""
    from sonic.weights.random import random_state_dict
    config = ModelConfig("llama", tok.vocab_size, 64, 128, 2, 4, 2, 16, max_position_embeddings=512,
                         bos_token_id=1, eos_token_ids=(2,), name="tiny-retracing")
    state = {k: v * 0.1 if "o_proj" in k else v for k, v in random_state_dict(config, seed=6).items()}
    return save_tiny_model(tmp_path_factory.mktemp("tiny_retracing"), tok, config, seed=6, state_dict=state)


def retracing_prompt(engine, length: int = 40, start: int = RETRACING_START) -> list[int]:
    """Token ids: `start`, the greedy path from it, and `start` again, so the answer retraces the prompt."""
    path = list(engine.generate_ids([start], length, SamplingParams()))
    return [start] + path + [start]


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory, tok):
    """Like tiny_model_dir, with two layers and a 512-token context: room for chat templates, long
    prompts and several sequences (scheduler and server tests)."""
    config = ModelConfig("llama", tok.vocab_size, 64, 128, 2, 4, 2, 16, max_position_embeddings=512,
                         bos_token_id=1, eos_token_ids=(2,), name="tiny-chat")
    return save_tiny_model(tmp_path_factory.mktemp("tiny_chat"), tok, config, seed=6)
