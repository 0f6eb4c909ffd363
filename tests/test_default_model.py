"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) end to end on CPU."""
import pytest
import torch

from sonic.engine.generate import Engine
from sonic.engine.runner_ref import ReferenceRunner

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine():
    return Engine.load(None, device="cpu", dtype="float32")


def test_answers_paris(engine):
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    text = "".join(engine.stream(ids, max_tokens=48))
    assert "Paris" in text
    stats = engine.last_stats
    assert stats.prompt_tokens == len(ids) and 0 < stats.output_tokens <= 48
    assert stats.ttft_s > 0 and stats.decode_tok_s > 0


def test_logits_match_transformers_on_same_gguf(engine, hf_gguf_model):
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    with torch.no_grad():
        ref = hf_gguf_model(torch.tensor([ids])).logits[0]
    got = ReferenceRunner(engine.runner.model).forward_all(ids)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_same_seed_same_text(engine):
    from sonic.engine.sampling import SamplingParams
    ids = engine.tokenizer.encode("Once upon a time")
    runs = ["".join(engine.stream(ids, 24, SamplingParams(temperature=0.9, top_p=0.95, seed=s)))
            for s in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
