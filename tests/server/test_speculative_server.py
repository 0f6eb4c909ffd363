"""`sonic serve --speculative`: through the official client, greedy answers equal those of a server
without speculation; `timings` and /metrics carry each request's drafted and accepted tokens."""
import pytest
import torch

from conftest import retracing_prompt
from live_server import metric, sse_events, start_server, stop_server
from sonic.cli import build_parser, load_engine
from sonic.engine.generate import Engine
from sonic.server.cli import check_speculation, serve_runner, settings_from_args

from test_serve_cli import one_line_error
from threads import single_thread  # noqa: F401  (autouse: one torch thread)

MAX_TOKENS = 40
SPEC_KEYS = ("draft_tokens", "accepted_tokens", "verification_steps", "mean_accepted_length")


def serve_args(*flags):
    """What `sonic serve FLAGS` sets up before it listens: checked flags, settings, the engine loader."""
    args = build_parser().parse_args(["serve", *flags])
    check_speculation(args)
    settings = settings_from_args(args)
    args.runner = serve_runner(args)
    return args, settings


@pytest.fixture(scope="module")
def servers(retracing_model_dir):
    """A server as `sonic serve --model M --speculative ngram --spec-max-tokens 6` starts it, one without."""
    pytest.importorskip("openai")
    model = str(retracing_model_dir)
    args, settings = serve_args("--model", model, "--speculative", "ngram", "--spec-max-tokens", "6")
    assert settings.max_concurrency == 1  # speculation decodes one request at a time
    spec = start_server(lambda: load_engine(args), model, settings)
    plain_engine = Engine.load(model)
    plain = start_server(lambda: plain_engine, model)
    yield spec, plain, retracing_prompt(plain_engine)
    stop_server(spec)
    stop_server(plain)


def complete(live, prompt, **kwargs):
    kwargs = {"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return live.openai().completions.create(model=live.model, prompt=prompt, **kwargs)


def check_stats(t: dict):
    assert 0 <= t["accepted_tokens"] <= t["draft_tokens"]
    assert t["verification_steps"] > 0 and t["accepted_tokens"] > 0, t
    assert t["mean_accepted_length"] == round(t["accepted_tokens"] / t["verification_steps"], 3)


def test_greedy_answers_equal_the_server_without_speculation(servers):
    spec, plain, prompt = servers
    got, want = complete(spec, prompt), complete(plain, prompt)
    assert got.choices[0].text == want.choices[0].text and got.usage.completion_tokens == MAX_TOKENS
    check_stats(got.model_extra["timings"])
    assert all(want.model_extra["timings"][k] == 0 for k in SPEC_KEYS)  # zero where nothing was drafted


def test_streamed_answers_carry_running_stats(servers):
    spec, plain, prompt = servers
    chunks = list(complete(spec, prompt, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == complete(plain, prompt).choices[0].text
    timings = [c.model_extra["timings"] for c in chunks]
    drafted = [t["draft_tokens"] for t in timings]
    assert drafted == sorted(drafted)
    assert all(set(SPEC_KEYS) <= set(t) for t in timings)
    check_stats(timings[-1])


def test_chat_streamed_and_not_agree(servers):
    spec, plain, _ = servers
    messages = [{"role": "user", "content": "Say it again: the sea, the sea, the sea, the sea."}]
    create = spec.openai().chat.completions.create
    whole = create(model=spec.model, messages=messages, max_tokens=24, temperature=0)
    parts = list(create(model=spec.model, messages=messages, max_tokens=24, temperature=0, stream=True))
    reference = plain.openai().chat.completions.create(model=plain.model, messages=messages, max_tokens=24,
                                                       temperature=0)
    assert whole.choices[0].message.content == reference.choices[0].message.content
    assert "".join(p.choices[0].delta.content or "" for p in parts) == whole.choices[0].message.content
    t, last = whole.model_extra["timings"], parts[-1].model_extra["timings"]
    assert {k: t[k] for k in SPEC_KEYS} == {k: last[k] for k in SPEC_KEYS}
    assert t["accepted_tokens"] <= t["draft_tokens"]


def test_metrics_grow_by_the_request_figures(servers):
    spec, _, prompt = servers
    names = ("sonic_spec_draft_tokens_total", "sonic_spec_accepted_tokens_total",
             "sonic_spec_verification_steps_total")
    before = [metric(spec.url, n, model_name=spec.model) for n in names]
    # Streamed over raw HTTP too: the last chunk's figures are the request's.
    events = sse_events(spec.url, "/v1/completions", {"model": spec.model, "prompt": prompt, "max_tokens": MAX_TOKENS,
                                                      "temperature": 0, "stream": True})
    t = events[-2]["timings"]
    after = [metric(spec.url, n, model_name=spec.model) for n in names]
    assert [b - a for a, b in zip(before, after)] == [t["draft_tokens"], t["accepted_tokens"],
                                                       t["verification_steps"]]
    assert t["accepted_tokens"] > 0


def test_metrics_exist_at_zero_without_speculation(servers):
    _, plain, prompt = servers
    complete(plain, prompt)
    assert metric(plain.url, "sonic_spec_draft_tokens_total", model_name=plain.model) == 0
    status_line = f'sonic_spec_verification_steps_total{{model_name="{plain.model}"}} 0.0'
    from live_server import request
    assert status_line in request(plain.url, "GET", "/metrics")[1]


def test_sampled_requests_are_seeded(servers):
    spec, _, prompt = servers

    def sample(seed):
        out = complete(spec, prompt, temperature=0.9, top_p=0.95, seed=seed)
        return out.choices[0].text, out.model_extra["timings"]

    (a, ta), (b, _), (c, _) = sample(1), sample(1), sample(2)
    assert a == b != c and ta["accepted_tokens"] <= ta["draft_tokens"]


def test_logprobs_requests_decode_without_drafts(servers):
    spec, plain, prompt = servers
    got = complete(spec, prompt, logprobs=1, max_tokens=8)
    want = complete(plain, prompt, logprobs=1, max_tokens=8)
    assert got.choices[0].text == want.choices[0].text
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(want.choices[0].logprobs.token_logprobs)
    assert got.model_extra["timings"]["draft_tokens"] == 0


@pytest.mark.parametrize("flags, words", [
    (["--speculative", "fast"], ["--speculative", "ngram"]),
    (["--speculative", "ngram", "--spec-max-tokens", "0"], ["--spec-max-tokens 0", "1 to 15"]),
    (["--speculative", "draft"], ["--draft-model PATH"]),
    (["--speculative", "ngram", "--draft-model", "x.gguf"], ["--draft-model", "not ngram"]),
    (["--speculative", "ngram", "--max-concurrency", "4"], ["one request at a time", "--max-concurrency 1"]),
    (["--speculative", "draft", "--draft-model", "/no/such/draft"], ["/no/such/draft"]),
])
def test_bad_flags(capsys, flags, words):
    one_line_error(capsys, ["serve", *flags], *words)


def test_a_draft_with_another_vocabulary_fails_before_listening(capsys, tiny_model_dir, tmp_path):
    from conftest import TINY_CONFIGS
    from sonic.weights.random import random_state_dict
    from sonic.weights.safetensors import save_hf_folder
    config = TINY_CONFIGS["llama2"]  # 256 tokens
    draft = save_hf_folder(config, random_state_dict(config, seed=1), tmp_path / "draft")
    one_line_error(capsys, ["serve", "--model", str(tiny_model_dir), "--speculative", "draft",
                            "--draft-model", str(draft)], "vocabulary of 256 tokens", "same tokenizer")


def test_speculation_with_one_slot_is_accepted():
    args, settings = serve_args("--speculative", "auto", "--max-concurrency", "1")
    assert settings.max_concurrency == 1 and args.runner == "ref"
    assert serve_args()[1].max_concurrency == 8
