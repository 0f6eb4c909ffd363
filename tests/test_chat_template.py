"""Chat templates render exactly as transformers renders them."""
from datetime import datetime

import pytest

from sonic.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from sonic.errors import SonicError
from sonic.tokenizer import Tokenizer


SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "single_with_system": [SYSTEM, {"role": "user", "content": "Hi!"}],
    "multi_turn": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a joke about 中文 and 😀."},
    ],
    "multi_turn_with_system": [
        SYSTEM,
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?\n  Explain."},
    ],
}

# A template exercising what transformers provides: raise_exception, loopcontrols, bos/eos tokens,
# tojson on tools, and trim_blocks/lstrip_blocks whitespace handling.
HAND_TEMPLATE = """{{ bos_token }}
{% if tools %}
Tools: {{ tools | tojson }}
{% endif %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if message['role'] == 'system' %}{% continue %}{% endif %}
    {% if loop.index > 4 %}{% break %}{% endif %}
[{{ message['role'] }}] {{ message['content'] | trim }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}[assistant] {% endif %}"""

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find <things> & 'stuff'",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_default_template_matches_transformers(tok, hf_tok, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    expected = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_encode_chat_matches_transformers(tok, hf_tok, name):
    messages = CONVERSATIONS[name]
    expected = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert tok.encode_chat(messages) == list(expected)
    assert tok.encode_chat(messages)[0] == 1  # <|im_start|> written by the template, no extra BOS


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_hand_written_template_matches_transformers(tok, hf_tok, name, tools):
    messages = CONVERSATIONS[name] * 2  # long enough to reach the `break`
    expected = hf_tok.apply_chat_template(messages, chat_template=HAND_TEMPLATE, tools=tools, tokenize=False,
                                       add_generation_prompt=True)
    got = render_chat_template(HAND_TEMPLATE, messages, tools=tools, bos_token="<|im_start|>",
                               eos_token="<|im_end|>")
    assert got == expected
    assert got.startswith("<|im_start|>")


def test_raise_exception_becomes_sonic_error(hf_tok):
    import jinja2
    messages = [{"role": "wizard", "content": "abracadabra"}]
    with pytest.raises(jinja2.TemplateError, match="Unknown role: wizard"):
        hf_tok.apply_chat_template(messages, chat_template=HAND_TEMPLATE, tokenize=False)
    with pytest.raises(SonicError, match="Unknown role: wizard"):
        render_chat_template(HAND_TEMPLATE, messages)


def test_tojson_does_not_escape_html():
    out = render_chat_template("{{ tools | tojson }}|{{ messages[0] | tojson(indent=2) }}",
                               [{"role": "user", "content": "é"}], tools=TOOLS)
    assert "Find <things> & 'stuff'" in out
    assert '"content": "é"' in out


def test_strftime_now_and_extra_variables():
    out = render_chat_template("{{ strftime_now('%Y') }} {{ enable_thinking }}", [{"role": "user", "content": ""}],
                               enable_thinking=False)
    assert out == f"{datetime.now().year} False"


def test_none_fields_are_dropped():
    template = "{% for m in messages %}{{ m.get('tool_calls', 'none') }}{% endfor %}"
    assert render_chat_template(template, [{"role": "assistant", "content": "x", "tool_calls": None}]) == "none"


def test_fallback_is_chatml(tok):
    bare = Tokenizer(tok.backend, bos_token_id=1, eos_token_ids=(2,))
    assert bare.chat_template is None
    messages = CONVERSATIONS["multi_turn_with_system"]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert bare.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"
    assert bare.apply_chat_template(messages, add_generation_prompt=False) == expected
    assert render_chat_template(DEFAULT_CHAT_TEMPLATE, messages) == expected + "<|im_start|>assistant\n"


def test_broken_templates_are_sonic_errors():
    with pytest.raises(SonicError, match="does not parse"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    with pytest.raises(SonicError, match="failed to render"):
        render_chat_template("{{ ''.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    with pytest.raises(SonicError, match="empty conversation"):
        render_chat_template(None, [])
