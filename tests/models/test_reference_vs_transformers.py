"""The reference model against transformers, float32 on CPU, on tiny random configs of every family."""
import pytest
import torch

from sonic.engine.runner_ref import ReferenceRunner
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict
from sonic.weights.safetensors import load_safetensors_folder, save_hf_folder

transformers = pytest.importorskip("transformers")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def pair(tiny_family, tmp_path):
    """Our model and transformers' loaded from the same saved folder (so loading is tested too)."""
    name, config = tiny_family
    save_hf_folder(config, random_state_dict(config, seed=7), tmp_path)
    loaded_config, state = load_safetensors_folder(tmp_path)
    assert loaded_config.with_(name="") == config.with_(name="")
    ours = build_model(loaded_config, state)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    return ours, theirs


def test_logits_match_prefill_then_decode(pair):
    ours, theirs = pair
    ids = torch.randint(0, ours.config.vocab_size, (24,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits[0]
    runner = ReferenceRunner(ours)
    runner.reserve(len(ids))
    got = [runner.prefill(ids[:16])]
    for i in range(16, len(ids)):
        got.append(runner.decode(torch.tensor(ids[i])))
    # prefill returns the last prompt position only; compare it and every decode step
    assert rel_err(got[0], ref[15]) < 1e-4
    assert rel_err(torch.stack(got[1:]), ref[16:]) < 1e-4
    # teacher-forced whole-sequence logits too
    assert rel_err(runner.forward_all(ids), ref) < 1e-4


def test_greedy_32_tokens_identical(pair):
    ours, theirs = pair
    prompt = [5, 17, 42, 99, 3, 250, 8]
    out = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, min_new_tokens=32,
                          eos_token_id=None, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    runner = ReferenceRunner(ours)
    runner.reserve(len(prompt) + 32)
    logits = runner.prefill(prompt)
    got = []
    for _ in range(32):
        token = logits.argmax()
        got.append(int(token))
        logits = runner.decode(token)
    assert got == expected
