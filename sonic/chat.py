"""The interactive chat loop behind `sonic chat`: history, chat template, streamed replies."""
from __future__ import annotations

import sys


HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) quits"


def read_line(prompt: str) -> str | None:
    """One line of user input, or None at end of input."""
    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def print_stream(pieces) -> str:
    """Write text pieces to stdout as they arrive, then a newline; returns the whole text."""
    text = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text.append(piece)
    sys.stdout.write("\n")
    return "".join(text)


def run_chat(engine, sampling, max_tokens: int, stop: list[str], system: str | None) -> int:
    tok = engine.text_tokenizer()
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    if sys.stdin.isatty():
        sys.stderr.write(f"Chatting with {engine.config.name or 'the model'}; {HELP}\n")
    while True:
        line = read_line(">>> ")
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            history = list(base)
            sys.stderr.write("(conversation cleared)\n")
            continue
        if line.strip() == "/help":
            sys.stderr.write(HELP + "\n")
            continue
        history.append({"role": "user", "content": line})
        ids = tok.encode_chat(history)
        budget = min(max_tokens, engine.context_length - len(ids))
        if budget < 1:
            # Keep the session alive: the user can /reset instead of losing the program.
            history.pop()
            sys.stderr.write(f"sonic: the conversation ({len(ids)} tokens) fills the context length "
                             f"of {engine.context_length}: /reset to start over\n")
            continue
        reply = print_stream(engine.stream(ids, budget, sampling, stop))
        sys.stderr.write(f"[{engine.last_stats.summary()}]\n")
        history.append({"role": "assistant", "content": reply})
