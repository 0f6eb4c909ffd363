"""Batched decoding of sequences at different positions matches each sequence decoded alone."""
import torch

from sonic.engine.batch_runner import BatchRunner
from sonic.engine.runner_ref import ReferenceRunner
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

PROMPTS = [[5, 9, 13, 2, 7], list(range(20, 31)), [3] * 17 + [40, 41]]  # 5, 11 and 19 tokens
STEPS = 6


def alone(model, prompt, steps):
    """Greedy logits [steps + 1, V] of one sequence through the reference runner."""
    runner = ReferenceRunner(model)
    runner.reserve(len(prompt) + steps + 1)
    logits = [runner.prefill(prompt)]
    for _ in range(steps):
        logits.append(runner.decode(logits[-1].argmax()))
    return torch.stack(logits)


def assert_close(got, want):
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def start(runner, owner, prompt, got):
    slot = runner.open(owner=owner)
    got[owner].append(runner.prefill(slot, prompt)[-1])
    runner.activate(slot)


def decode_greedy(runner, got, steps=STEPS):
    """Decode steps for every row, each fed its own greedy token; logits land in got[owner]."""
    for _ in range(steps):
        owners = [s.owner for s in runner.decoding]
        logits = runner.decode([int(got[i][-1].argmax()) for i in owners])
        for i, row in zip(owners, logits):
            got[i].append(row)


def test_batched_decode_matches_single_sequences(tiny_family):
    _, config = tiny_family
    model = build_model(config, random_state_dict(config, seed=3))
    want = [alone(model, p, STEPS) for p in PROMPTS]
    runner = BatchRunner(model, max_batch=4, max_len=64)
    got = {i: [] for i in range(len(PROMPTS))}
    for i, prompt in enumerate(PROMPTS):
        start(runner, i, prompt, got)
    decode_greedy(runner, got)
    for i in got:
        assert_close(torch.stack(got[i]), want[i])


def test_rows_stay_right_when_sequences_leave_mid_prefill():
    """A sequence leaving moves the last decoding row and the one being prefilled; both carry on exactly."""
    from conftest import TINY_CONFIGS
    config = TINY_CONFIGS["qwen3"]
    model = build_model(config, random_state_dict(config, seed=4))
    want = {i: alone(model, p, STEPS) for i, p in enumerate(PROMPTS)}
    runner = BatchRunner(model, max_batch=3, max_len=64)
    got = {i: [] for i in range(3)}
    for i in (0, 1):
        start(runner, i, PROMPTS[i], got)
    filling = runner.open(owner=2)
    runner.prefill(filling, PROMPTS[2][:8])  # chunked prefill, interrupted by a departure
    runner.release(runner.decoding[0])
    assert [s.owner for s in runner.decoding] == [1] and filling.row == 1
    got[2].append(runner.prefill(filling, PROMPTS[2][8:])[-1])
    runner.activate(filling)
    decode_greedy(runner, got)
    for i in (1, 2):
        assert_close(torch.stack(got[i]), want[i])


def test_cache_growth_keeps_what_it_holds():
    from conftest import TINY_CONFIGS
    config = TINY_CONFIGS["llama3"]
    model = build_model(config, random_state_dict(config, seed=5))
    prompts = [list(range(3, 255)), [7, 8, 9]]  # the first crosses the 256-position granule while decoding
    want = [alone(model, p, STEPS) for p in prompts]
    runner = BatchRunner(model, max_batch=2, max_len=512)
    got = {0: [], 1: []}
    for i, prompt in enumerate(prompts):
        start(runner, i, prompt, got)
    assert runner.cache.max_len == 256
    decode_greedy(runner, got)
    assert runner.cache.max_len == 512
    for i, w in enumerate(want):
        assert_close(torch.stack(got[i]), w)


def test_rows_of_several_tokens_match_single_sequences():
    """forward_rows with T > 1 (as a verification step would use) equals each row's own forward."""
    from conftest import TINY_CONFIGS
    from sonic.engine.kv_cache import KVCache
    config = TINY_CONFIGS["mistral"]  # sliding window 8: masks must follow each row's own positions
    model = build_model(config, random_state_dict(config, seed=8))
    prefixes, new = [list(range(3, 14)), [40, 41, 42]], [[7, 8, 9], [50, 51, 52]]
    batch = KVCache(config, 64, batch_size=2)
    for row, p in enumerate(prefixes):
        model(torch.tensor([p]), 0, batch.rows(row, row + 1))
    got = model.forward_rows(torch.tensor(new), torch.tensor([len(p) for p in prefixes]), batch)
    for row, (p, n) in enumerate(zip(prefixes, new)):
        want = ReferenceRunner(model).forward_all(p + n)[len(p):]
        assert_close(got[row], want)
