"""The official `openai` client against a live server: chat and completions, streamed or not."""
import pytest

from live_server import post, request, sse_events

MESSAGES = [{"role": "user", "content": "Write one line about the sea."}]


def chat(client, server, **kwargs):
    return client.chat.completions.create(model=server.model, messages=MESSAGES, **kwargs)


def test_models_and_health(server):
    status, body = request(server.url, "GET", "/health")
    assert status == 200 and body == {"status": "ok"}
    models = server.openai().models.list()
    assert [m.id for m in models.data] == [server.model] and models.data[0].max_model_len == 512


def test_chat_streamed_equals_non_streamed_at_temperature_0(client, server):
    whole = chat(client, server, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    timings = whole.model_extra["timings"]
    assert timings["output_tokens"] == 12 and timings["ttft_ms"] > 0 and timings["decode_tok_s"] > 0

    chunks = list(chat(client, server, max_tokens=12, temperature=0, stream=True,
                       stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason] == [chunks[-2]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert all("timings" in c.model_extra for c in chunks)


def test_completions_streamed_equals_non_streamed(client, server):
    whole = client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=10, temperature=0)
    parts = list(client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=10,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert [p.choices[0].finish_reason for p in parts].count("length") == 1
    assert whole.usage.completion_tokens == 10


def test_max_completion_tokens(client, server):
    out = chat(client, server, max_completion_tokens=3, temperature=0)
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_stop_strings(client, server):
    full = chat(client, server, max_tokens=16, temperature=0).choices[0].message.content
    assert len(full) > 8
    stop = full[5:8]
    cut = chat(client, server, max_tokens=16, temperature=0, stop=[stop, "never appears"])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = chat(client, server, max_tokens=16, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[:full.index(stop)]


def test_seeds_are_reproducible(client, server):
    def sample(seed):
        return chat(client, server, max_tokens=12, temperature=1.0, top_p=0.95, seed=seed).choices[0].message.content
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_top_k_is_honoured(server):
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 8, "temperature": 2.0, "seed": 1}
    greedy = post(server.url, "/v1/completions", {**body, "temperature": 0})[1]["choices"][0]["text"]
    top1 = post(server.url, "/v1/completions", {**body, "top_k": 1})[1]["choices"][0]["text"]
    hot = post(server.url, "/v1/completions", body)[1]["choices"][0]["text"]
    assert top1 == greedy != hot


def test_echo_with_logprobs_scores_the_prompt(client, server, tiny_chat_engine):
    import torch

    from sonic.engine.runner_ref import ReferenceRunner
    prompt = "The quick brown fox jumps"
    out = client.completions.create(model=server.model, prompt=prompt, max_tokens=2, temperature=0,
                                    echo=True, logprobs=2)
    choice = out.choices[0]
    ids = tiny_chat_engine.tokenizer.encode(prompt)
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + 2 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    all_ids = ids + [tiny_chat_engine.tokenizer.encode(t, add_special_tokens=False)[0] for t in lp.tokens[len(ids):]]
    want = torch.log_softmax(ReferenceRunner(tiny_chat_engine.runner.model).forward_all(all_ids), -1)
    for pos in range(1, len(all_ids)):
        assert lp.token_logprobs[pos] == pytest.approx(float(want[pos - 1, all_ids[pos]]), abs=1e-4)
        assert len(lp.top_logprobs[pos]) == 2 and max(lp.top_logprobs[pos].values()) >= lp.token_logprobs[pos]
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_echo_only_scores_with_zero_max_tokens(server, tiny_chat_engine):
    ids = tiny_chat_engine.tokenizer.encode("Score this sentence please")
    status, body = post(server.url, "/v1/completions", {"model": server.model, "prompt": [ids], "max_tokens": 0,
                                                        "echo": True, "logprobs": 0})
    assert status == 200
    assert body["usage"]["completion_tokens"] == 0 and len(body["choices"][0]["logprobs"]["tokens"]) == len(ids)
    assert body["choices"][0]["text"] == "Score this sentence please"


def test_chat_logprobs(client, server):
    out = chat(client, server, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob <= 0
    assert "".join(e.token for e in content) == out.choices[0].message.content


def test_unknown_fields_are_ignored(server):
    status, body = post(server.url, "/v1/chat/completions",
                        {"model": server.model, "messages": MESSAGES, "max_tokens": 2, "frequency_penalty": 0.5,
                         "user": "someone", "some_future_field": {"x": 1}})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_tokenize_and_detokenize(server, tiny_chat_engine):
    status, body = post(server.url, "/tokenize", {"prompt": "Hello world"})
    assert status == 200 and body["tokens"] == tiny_chat_engine.tokenizer.encode("Hello world")
    assert body["count"] == len(body["tokens"])
    status, chat_body = post(server.url, "/tokenize", {"messages": MESSAGES})
    assert status == 200 and chat_body["tokens"] == tiny_chat_engine.tokenizer.encode_chat(MESSAGES)
    status, back = post(server.url, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and back["prompt"] == "Hello world"


def test_sse_wire_format(server):
    events = sse_events(server.url, "/v1/completions",
                        {"model": server.model, "prompt": "Hi", "max_tokens": 3, "stream": True,
                         "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    assert all(e["usage"] is None for e in events[:-2])


def test_playground_page_is_served_offline(server):
    status, page = request(server.url, "GET", "/")
    assert status == 200 and "<title>Sonic playground</title>" in page
    assert "http://" not in page and "https://" not in page  # no external assets
    for asset in ("/static/app.js", "/static/style.css"):
        status, text = request(server.url, "GET", asset)
        assert status == 200 and "http://" not in text and "https://" not in text


def test_metrics_count_tokens_and_latencies(make_server, tiny_chat_engine):
    from live_server import metric
    live = make_server()
    prompt_ids = tiny_chat_engine.tokenizer.encode("Count me")
    status, _ = post(live.url, "/v1/completions", {"prompt": "Count me", "max_tokens": 5, "temperature": 0})
    assert status == 200
    assert metric(live.url, "sonic_time_to_first_token_seconds_count") == 1
    assert metric(live.url, "sonic_inter_token_latency_seconds_count") == 4
    assert metric(live.url, "sonic_e2e_request_latency_seconds_count") == 1
    assert metric(live.url, "sonic_prompt_tokens_total") == len(prompt_ids)
    assert metric(live.url, "sonic_generation_tokens_total") == 5
    assert metric(live.url, "sonic_requests_total", finish_reason="length") == 1
    assert metric(live.url, "sonic_num_requests_running") == 0 == metric(live.url, "sonic_num_requests_waiting")


def test_text_content_parts_read_as_one_string(server):
    plain = {"model": server.model, "max_tokens": 4, "temperature": 0,
             "messages": [{"role": "user", "content": "Hello there"}]}
    parts = {**plain, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                                 {"type": "text", "text": "there"}]}]}
    a, b = post(server.url, "/v1/chat/completions", plain), post(server.url, "/v1/chat/completions", parts)
    assert a[0] == b[0] == 200
    assert a[1]["choices"][0]["message"] == b[1]["choices"][0]["message"]
    assert a[1]["usage"] == b[1]["usage"]
