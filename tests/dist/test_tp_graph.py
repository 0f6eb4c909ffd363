"""The fused path over shards (all-reduces in the step, the greedy choice across ranks) on 2 gloo ranks,
against the unsharded fused path on the same weights; the kernels run under the Triton interpreter."""
import functools

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS
from tp_helpers import graph_checks, run_ranks

from sonic.engine.runner_graph import GraphRunner
from sonic.models.registry import build_model
from sonic.weights.random import random_state_dict

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; a GPU compiles the kernels")

SEED, TOKENS = 5, 20  # 20 tokens: a first token, a chunk of 16 steps, then a last chunk of 3
CONFIGS = {name: TINY_CONFIGS[name] for name in ("llama3", "qwen2")}
PROMPT = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(SEED)).tolist()


@functools.cache
def rank_results() -> list[dict]:
    return run_ranks(2, graph_checks, CONFIGS, SEED, PROMPT, TOKENS, timeout_s=600)


def unsharded_logits(name: str, ids: list[int]) -> torch.Tensor:
    """Teacher-forced logits of the unsharded fused path, 16 rows a call."""
    config = CONFIGS[name]
    runner = GraphRunner(build_model(config, random_state_dict(config, seed=SEED)), max_len=64, require_cuda=False)
    runner.reserve(len(ids))
    return torch.cat([runner.forward_tokens(ids[s:s + 16], s) for s in range(0, len(ids), 16)])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sharded_fused_path_matches_unsharded(name):
    ranks = rank_results()
    want = unsharded_logits(name, PROMPT)
    for r in ranks:  # every rank holds the same full logits and the same tokens
        np.testing.assert_array_equal(r[name]["forced"], ranks[0][name]["forced"])
        assert r[name]["greedy"] == ranks[0][name]["greedy"]
    got = torch.from_numpy(ranks[0][name]["forced"])
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sharded_greedy_tokens_follow_the_unsharded_argmax(name):
    tokens = rank_results()[0][name]["greedy"]
    assert len(tokens) == TOKENS
    logits = unsharded_logits(name, PROMPT + tokens[:-1])[len(PROMPT) - 1:]
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # positions whose winner no rounding can change
    assert clear.sum() >= TOKENS // 2
    assert torch.equal(torch.tensor(tokens)[clear], logits.argmax(-1)[clear])


def test_go_on_flags_are_owed_only_while_peers_will_wait():
    # After token 1 and through the first chunk (tokens 2-17) a broadcast comes before the next step;
    # the last chunk (tokens 18-20) ends the request, so none is owed there.
    due = rank_results()[0]["llama3"]["flag_due"]
    assert due == [True] * 17 + [False] * 3
