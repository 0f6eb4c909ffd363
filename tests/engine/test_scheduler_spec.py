"""Speculative decoding in the scheduler: greedy tokens identical to plain decoding, with drafts accepted
and rejected; EOS, stop strings and max_tokens end a request where plain decoding ends it."""
import pytest
import torch

from conftest import retracing_prompt
from sonic.engine.batch_runner import BatchRunner
from sonic.engine.generate import Engine
from sonic.engine.requests import Delta, Finished, Request
from sonic.engine.sampling import SamplingParams
from sonic.engine.scheduler import Scheduler
from sonic.spec.loop import SpecStats
from sonic.spec.speculator import SpecConfig
from threads import single_thread  # noqa: F401  (autouse: one torch thread)

MAX_TOKENS = 40


@pytest.fixture(scope="module")
def plain(retracing_model_dir):
    return Engine.load(str(retracing_model_dir))


@pytest.fixture(scope="module", params=["ngram", "draft"])
def speculating(request, retracing_model_dir, tiny_chat_model_dir):
    # The draft model: the retracing model's own weights (it always agrees) would hide rejections, so
    # the draft is the tiny chat model, which agrees now and then.
    draft = str(tiny_chat_model_dir) if request.param == "draft" else None
    return Engine.load(str(retracing_model_dir), spec=SpecConfig(request.param, 6, draft))


@pytest.fixture(scope="module")
def prompt(plain):
    return retracing_prompt(plain)


def run(engine, ids, max_tokens=MAX_TOKENS, speculate=True, **options):
    from sonic.engine.graph_slot import make_batch_runner
    # As `sonic serve` sets it up: the fused path's slot for a graph runner, else the reference batch.
    runner = make_batch_runner(engine.runner, 1, engine.config.max_position_embeddings)
    scheduler = Scheduler(runner, engine.tokenizer, engine.eos_ids,
                          speculator=engine.speculator if speculate else None)
    events = []
    scheduler.submit(Request(ids, max_tokens, events.append, **options))
    for _ in range(10_000):
        if events and isinstance(events[-1], Finished):
            return events
        scheduler.step()
    raise AssertionError("the request did not finish")


def tokens(events):
    return [e.token_id for e in events if isinstance(e, Delta)]


def text(events):
    return "".join(e.text for e in events if isinstance(e, (Delta, Finished)))


def test_greedy_tokens_equal_plain_decoding(plain, speculating, prompt):
    want = run(plain, prompt, speculate=False)
    got = run(speculating, prompt)
    assert tokens(got) == tokens(want) and text(got) == text(want)
    spec = got[-1].stats.spec
    assert spec.steps > 0 and 0 < spec.accepted <= spec.drafted
    assert got[-1].stats.output_tokens == MAX_TOKENS and got[-1].reason == "length"


def test_prompt_lookup_accepts_and_rejects_drafts(plain, prompt, retracing_model_dir):
    engine = Engine.load(str(retracing_model_dir), spec=SpecConfig("ngram", 8))
    spec = run(engine, prompt)[-1].stats.spec
    # Both outcomes happen, so rewinds after rejected drafts are part of the identity checked above.
    assert 0 < spec.accepted < spec.drafted, spec


def test_every_depth_and_length_matches(plain, retracing_model_dir, prompt):
    want = tokens(run(plain, prompt, speculate=False))
    for k in (1, 3, 15):
        engine = Engine.load(str(retracing_model_dir), spec=SpecConfig("ngram", k))
        for n in (1, 2, k + 1, 23):
            assert tokens(run(engine, prompt, max_tokens=n)) == want[:n], (k, n)


def test_stop_strings_and_eos_end_where_plain_decoding_ends(plain, speculating, prompt):
    full = text(run(plain, prompt, speculate=False))
    stop = full[len(full) // 2:len(full) // 2 + 4]
    want = run(plain, prompt, speculate=False, stop=(stop,))
    got = run(speculating, prompt, stop=(stop,))
    assert text(got) == text(want) == full[:full.index(stop)] and got[-1].reason == "stop"

    eos = tokens(want)[len(tokens(want)) // 2]  # a token of the answer, as if it were EOS
    runner = BatchRunner(speculating.runner.model, 1, 512)
    scheduler = Scheduler(runner, speculating.tokenizer, {eos}, speculator=speculating.speculator)
    events = []
    scheduler.submit(Request(prompt, MAX_TOKENS, events.append))
    while not (events and isinstance(events[-1], Finished)):
        scheduler.step()
    assert tokens(events) == tokens(want)[:tokens(want).index(eos)] and events[-1].reason == "stop"


def test_stats_in_deltas_are_snapshots(speculating, prompt):
    events = run(speculating, prompt)
    drafted = [e.stats.spec.drafted for e in events if isinstance(e, Delta)]
    assert drafted == sorted(drafted) and drafted[-1] <= events[-1].stats.spec.drafted
    assert all(isinstance(e.stats.spec, SpecStats) for e in events if isinstance(e, Delta))
    assert events[1].stats.spec is not events[-1].stats.spec


def test_logprob_requests_decode_plainly(plain, speculating, prompt):
    want = run(plain, prompt, max_tokens=8, speculate=False, logprobs=2)
    got = run(speculating, prompt, max_tokens=8, logprobs=2)
    assert tokens(got) == tokens(want) and got[-1].stats.spec is None
    assert [e.logprob.logprob for e in got if isinstance(e, Delta)] == \
        [e.logprob.logprob for e in want if isinstance(e, Delta)]


def test_sampled_speculation_is_seeded(speculating, prompt):
    sampling = SamplingParams(temperature=0.8, top_p=0.9, seed=5)
    first = tokens(run(speculating, prompt, sampling=sampling))
    assert first == tokens(run(speculating, prompt, sampling=sampling)) and len(first) == MAX_TOKENS
    assert first != tokens(run(speculating, prompt, sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=6)))


def test_sampling_at_top_k_1_is_greedy(plain, speculating, prompt):
    # With one candidate left the target's distribution is a point mass: rejection sampling must keep
    # exactly the drafts greedy decoding keeps, whatever the random draws.
    want = tokens(run(plain, prompt, speculate=False))
    assert tokens(run(speculating, prompt, sampling=SamplingParams(temperature=1.0, top_k=1, seed=3))) == want


def test_a_batched_runner_refuses_a_speculator(speculating):
    with pytest.raises(ValueError, match="one sequence"):
        Scheduler(BatchRunner(speculating.runner.model, 2, 64), speculating.tokenizer, (),
                  speculator=speculating.speculator)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; GPU tests cover CUDA")
def test_fused_path_speculation_matches_plain(tok):
    pytest.importorskip("triton")
    from conftest import TINY_CONFIGS
    from sonic.engine.graph_slot import make_batch_runner
    from sonic.engine.runner_graph import GraphRunner
    from sonic.models.registry import build_model
    from sonic.spec.speculator import Speculator
    from sonic.weights.random import random_state_dict

    config = TINY_CONFIGS["qwen3"]
    model = build_model(config, random_state_dict(config, seed=7))
    prompt = [5, 9, 13, 5, 9, 13, 5, 9]
    results = []
    for spec in (None, SpecConfig("ngram", 3)):
        graph = GraphRunner(model, max_len=64, require_cuda=False)
        speculator = Speculator.build(spec, graph, torch.float32, "cpu", "graph") if spec else None
        scheduler = Scheduler(make_batch_runner(graph, 1, 64), tok, (), speculator=speculator)
        events = []
        scheduler.submit(Request(prompt, 5, events.append))  # few steps: the interpreter is slow
        while not (events and isinstance(events[-1], Finished)):
            scheduler.step()
        results.append(events)
    assert tokens(results[1]) == tokens(results[0])
    assert results[1][-1].stats.spec.drafted > 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ngram", "auto"])
def test_gpu_fused_path_speculation_matches_plain(retracing_model_dir, mode):
    plain = Engine.load(str(retracing_model_dir), device="cuda")
    engine = Engine.load(str(retracing_model_dir), device="cuda", spec=SpecConfig(mode, 8))
    assert engine.runner.name == "graph"
    prompt = retracing_prompt(plain)
    want = run(plain, prompt, speculate=False)
    got = run(engine, prompt)
    assert tokens(got) == tokens(want)
    if mode == "ngram":
        assert got[-1].stats.spec.accepted > 0
