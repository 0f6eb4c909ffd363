"""Hugging Face model folders: `config.json` plus one or many `*.safetensors` files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sonic.config import ModelConfig
from sonic.errors import SonicError
from sonic.progress import progress


def safetensors_files(folder: Path) -> list[Path]:
    """The shards named by `model.safetensors.index.json`, else every `*.safetensors` in the folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise SonicError(f"cannot read {index}: {e}") from None
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SonicError(f"{folder} is missing weight shards listed in its index: {', '.join(missing[:3])}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SonicError(f"{folder} has a config.json but no *.safetensors weights "
                         "(Sonic reads safetensors folders or .gguf files)")
    return files


def load_safetensors_folder(folder: str | Path, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    config = ModelConfig.from_hf(folder)
    config = _with_generation_eos(config, folder)
    files = safetensors_files(folder)
    handles = []
    try:
        handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
    except (SafetensorError, OSError) as e:
        raise SonicError(f"cannot read weights in {folder}: {e}") from None
    jobs = [(h, name) for h in handles for name in h.keys()]
    state = {}
    for handle, name in progress(jobs, total=len(jobs), desc="loading weights"):
        state[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    return config, state


def _with_generation_eos(config: ModelConfig, folder: Path) -> ModelConfig:
    """Instruct models list their end-of-turn tokens in generation_config.json, not config.json."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return config
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return config
    if eos is None:
        return config
    eos = eos if isinstance(eos, list) else [eos]
    return config.with_(eos_token_ids=tuple(dict.fromkeys([*config.eos_token_ids, *eos])))


def save_hf_folder(config: ModelConfig, state_dict: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` so Sonic and transformers can load the model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_hf(), indent=2))
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
