"""Chat templates: render a model's Jinja template the way Hugging Face transformers does.

Templates come from model files we did not write, so they run in jinja2's immutable sandbox with the
same globals and filters transformers gives them; a template that renders differently here than
there would silently change the prompt the model sees.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from sonic.errors import SonicError

# Used when a model ships no template: plain ChatML, one `<|im_start|>role\ncontent<|im_end|>\n` block
# per message, then `<|im_start|>assistant\n` when a reply is wanted.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _TemplateRaised(Exception):
    """What `raise_exception(...)` inside a template throws; carries the template's own message."""


def _raise_exception(message):
    raise _TemplateRaised(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja2's own `tojson` HTML-escapes `<`, `>` and `&`, which templates that print tool schemas must not do.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the `dict` type itself to the sandbox."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=16)
def compile_template(source: str):
    """Compile once per distinct template text; a syntax error becomes a SonicError."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise SonicError(f"the chat template does not parse (line {e.lineno}: {e.message}); "
                         "fix the template or pass another one") from None


def _clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # API clients send `content: None` / `tool_calls: None`; templates handle a missing key, not a None.
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise SonicError(f"chat messages must be dicts with 'role' and 'content', got {m!r}")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def render_chat_template(template: str | None, messages: list[dict[str, Any]], *,
                         add_generation_prompt: bool = True, tools: list[dict] | None = None,
                         bos_token: str | None = None, eos_token: str | None = None,
                         **extra: Any) -> str:
    """Render `messages` with `template` (None: DEFAULT_CHAT_TEMPLATE) to the prompt text.

    `extra` reaches the template as variables too (e.g. `enable_thinking=False`), as in transformers.
    """
    import jinja2

    if not messages:
        raise SonicError("cannot render an empty conversation: give at least one message")
    compiled = compile_template(template or DEFAULT_CHAT_TEMPLATE)
    variables = {"bos_token": bos_token, "eos_token": eos_token, **extra}
    try:
        return compiled.render(messages=_clean_messages(messages), tools=tools, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
    except _TemplateRaised as e:
        raise SonicError(f"the chat template rejected the conversation: {e}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise SonicError(f"the chat template failed to render ({type(e).__name__}: {e}); "
                         "check the messages' roles and fields") from None
