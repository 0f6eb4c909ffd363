"""The server on the real default model: greedy answers are token-identical to `sonic generate`,
whatever else is decoding in the same batch."""
import threading

import pytest

from sonic.cli import messages_for
from sonic.engine.generate import Engine

from live_server import start_server, stop_server

PROMPTS = ["What is the capital of France?", "Name three colours.", "Count from one to five."]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def default_server(default_model_path):
    engine = Engine.load(None)
    # What `sonic generate PROMPT --max-tokens 16` prints, computed before the server shares the model.
    expected = {p: "".join(engine.stream(engine.tokenizer.encode_chat(messages_for(p, None)), MAX_TOKENS))
                for p in PROMPTS}
    live = start_server(lambda: engine, default_model_path)
    yield live, expected
    stop_server(live)


def test_concurrent_greedy_answers_equal_sonic_generate(default_server):
    live, expected = default_server
    client = live.openai()
    answers = {}

    def ask(prompt):
        out = client.chat.completions.create(model=live.model, messages=messages_for(prompt, None),
                                             max_tokens=MAX_TOKENS, temperature=0)
        answers[prompt] = out.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert answers == expected
    assert "Paris" in answers[PROMPTS[0]]
