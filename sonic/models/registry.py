"""Which reference class runs which architecture, and building one from a state dict without copies."""
from __future__ import annotations

import torch

from sonic.config import ModelConfig
from sonic.errors import SonicError
from sonic.models.llama import LlamaModel

# One decoder covers every supported family; the differences are config flags (bias, qk-norm, window).
MODEL_CLASSES = {"llama": LlamaModel, "mistral": LlamaModel, "qwen2": LlamaModel, "qwen3": LlamaModel}

# Buffers some checkpoints carry that the reference recomputes.
IGNORED_KEYS = ("rotary_emb.inv_freq",)


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor],
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LlamaModel:
    """Instantiate on the meta device and adopt the given tensors (cast/moved only where needed)."""
    cls = MODEL_CLASSES.get(config.architecture)
    if cls is None:
        raise SonicError(f"unsupported architecture '{config.architecture}'")
    with torch.device("meta"):
        model = cls(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    state = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_KEYS)}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise SonicError(f"weights do not match the {config.architecture} architecture: "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for name, tensor in state.items():
        want = model.get_parameter(name).shape
        if tuple(tensor.shape) != tuple(want):
            raise SonicError(f"weight {name} has shape {tuple(tensor.shape)}, the config implies {tuple(want)}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval().requires_grad_(False)
