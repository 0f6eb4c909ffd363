"""Shared pieces of the monokernel tests: tilings that exercise every path, tiny models, references."""
from __future__ import annotations

import pytest
import torch

from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams
from sonic.models.registry import build_model
from sonic.mono.builder import build_program
from sonic.mono.instructions import Tiling
from sonic.mono.pyvm import MonoVM
from sonic.mono.schedule import list_schedule
from sonic.weights.random import random_state_dict
from threads import single_thread  # noqa: F401  (autouse: one torch thread)

# Direct residual adds with one head per QKV tile; and split-K, two heads per tile, odd tile sizes.
TILINGS = {
    "direct": Tiling(o_rows_per_tile=16, gate_up_rows_per_tile=32, down_rows_per_tile=16,
                     lm_head_rows_per_tile=64, kv_splits=4),
    "split-k": Tiling(qkv_heads_per_tile=2, o_rows_per_tile=24, gate_up_rows_per_tile=40, down_rows_per_tile=20,
                      lm_head_rows_per_tile=100, k_splits=3, kv_splits=3),
    # Heads cut in two parts, the attention merged in O's staging, split-K projections.
    "parts": Tiling(qkv_head_parts=2, combine_in_o=True, o_rows_per_tile=16, gate_up_rows_per_tile=32,
                    k_splits=2, kv_splits=3),
}


def tiny(family: str):
    from conftest import TINY_CONFIGS
    return TINY_CONFIGS[family]


def tiny_model(family: str, seed: int = 2):
    config = tiny(family)
    return build_model(config, random_state_dict(config, seed=seed))


def prompt_for(config, n: int = 7, seed: int = 5) -> list[int]:
    return torch.randint(0, config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefilled_vm(model, tiling: Tiling, prompt: list[int], extra: int, num_sms: int = 8, rows: int = 1, **kw):
    """A VM whose cache holds the prompt (prefilled by the reference), and the first decode token."""
    runner = ReferenceRunner(model)
    runner.reserve(len(prompt) + extra)
    first = int(runner.prefill(prompt).argmax())
    program = build_program(model.config, tiling, rows=rows)
    vm = MonoVM(model, program, list_schedule(program, num_sms), runner.cache, **kw)
    return vm, first


def greedy_reference(model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """The reference's greedy tokens and the logits [n - 1, V] that chose tokens 2..n."""
    tokens = list(ReferenceRunner(model).generate(prompt, n, SamplingParams()))
    logits = ReferenceRunner(model).forward_all(prompt + tokens)[len(prompt):len(prompt) + n - 1]
    return tokens, logits


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


