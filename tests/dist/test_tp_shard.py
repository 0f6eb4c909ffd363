"""The sharded model on 2 and 4 gloo ranks against the unsharded reference on the same weights."""
import functools

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS
from tp_helpers import DECODE_STEPS, GREEDY_TOKENS, PROMPT_LEN, allreduce_checks, run_ranks, shard_checks

from sonic.dist.vocab import gumbel_noise
from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams, filter_logits
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

SEED = 3
# Every family's quirk, plus a vocabulary that does not split evenly (the last slice is shorter).
CONFIGS = dict(TINY_CONFIGS, **{"uneven-vocab": TINY_CONFIGS["llama3"].with_(vocab_size=253)})
# Four ranks on the families whose KV heads are fewer than the ranks (copied), bias, q/k norm, and a refusal.
FOUR_RANKS = ["llama3", "mistral", "qwen2", "qwen3", "qwen3-untied-gqa4", "uneven-vocab", "smollm2"]
CASES = [(2, name) for name in sorted(CONFIGS)] + [(4, name) for name in FOUR_RANKS]


@functools.cache
def rank_results(world: int) -> list[dict]:
    """Spawned once per world size and shared by the tests (each spawn costs seconds)."""
    names = CONFIGS if world == 2 else FOUR_RANKS
    return run_ranks(world, shard_checks, {n: CONFIGS[n] for n in names}, SEED)


@functools.cache
def reference(name):
    """Teacher-forced logits, step logits, greedy and Gumbel-max sampled tokens of the full model."""
    config = CONFIGS[name]
    runner = ReferenceRunner(build_model(config, random_state_dict(config, seed=SEED)))
    ids = torch.randint(0, config.vocab_size, (PROMPT_LEN + DECODE_STEPS,),
                        generator=torch.Generator().manual_seed(SEED)).tolist()
    forced = runner.forward_all(ids)
    runner.reserve(len(ids))
    steps = [runner.prefill(ids[:PROMPT_LEN])] + [runner.decode(torch.tensor(t)) for t in ids[PROMPT_LEN:-1]]
    greedy = list(runner.generate(ids[:PROMPT_LEN], GREEDY_TOKENS, SamplingParams()))
    return forced, torch.stack(steps), greedy, gumbel_tokens(runner, ids[:PROMPT_LEN], config.vocab_size)


def gumbel_tokens(runner, prompt, vocab):
    """A single-device Gumbel-max draw: argmax(filtered logits / T + noise), the noise seeded as on the ranks."""
    params = SamplingParams(temperature=1.0, top_k=20, seed=SEED)
    gen = torch.Generator().manual_seed(SEED)
    runner.reserve(len(prompt) + GREEDY_TOKENS)
    logits, out = runner.prefill(prompt), []
    for _ in range(GREEDY_TOKENS):
        out.append(int(torch.argmax(filter_logits(logits[None], params)[0] + gumbel_noise(vocab, gen, "cpu"))))
        logits = runner.decode(torch.tensor(out[-1]))
    return out


@pytest.mark.parametrize("world, name", CASES)
def test_sharded_matches_reference(world, name):
    results = rank_results(world)
    got = results[0][name]
    if isinstance(got, str):  # the split was refused: only where the shapes really do not divide
        config = CONFIGS[name]
        assert (config.num_attention_heads % world or config.intermediate_size % world
                or max(config.num_key_value_heads, world) % min(config.num_key_value_heads, world)), got
        return
    forced, steps, greedy, sampled = reference(name)
    np.testing.assert_allclose(got["forced"], forced.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["steps"], steps.numpy(), rtol=0, atol=1e-4)
    assert got["greedy"] == greedy
    assert got["sampled"] == sampled
    kv = CONFIGS[name].num_key_value_heads
    assert got["kv_heads"] == max(1, kv // world)  # each rank caches only its own KV heads
    for other in results[1:]:  # every rank ends with the same logits and tokens, bit for bit
        assert np.array_equal(other[name]["forced"], got["forced"], equal_nan=False)
        assert other[name]["greedy"] == got["greedy"] and other[name]["sampled"] == got["sampled"]


@pytest.mark.parametrize("world", [2, 4])
def test_refusals_name_the_shape(world):
    assert rank_results(world)[0]["smollm2"] == f"the model's 9 attention heads do not divide by {world}"


def test_ordered_allreduce_is_rank_order_sum():
    sizes = [1, 7, 2048, 8192, 12345]
    results = run_ranks(2, allreduce_checks, sizes)
    for key in results[0]:
        inputs = [r[key][0] for r in results]
        dtype = getattr(torch, key[1].split(".")[1])
        expected = (torch.tensor(inputs[0]) + torch.tensor(inputs[1])).to(dtype).float().numpy()
        for r in results:
            assert np.array_equal(r[key][1], expected), key  # fp32 sum in rank order, then rounded
            assert np.array_equal(r[key][1], results[0][key][1])
            np.testing.assert_allclose(r[key][2], expected, rtol=1e-3, atol=1e-3)  # native: same sum
