"""Streaming detokenization: pieces never split a character and join to the full decode."""
import json
import random
from pathlib import Path

import pytest

from sonic.detokenizer import IncrementalDetokenizer
from sonic.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"

STRINGS = [
    "Hello, world!", "😀😃😄😁😆 emoji run", "👨‍👩‍👧‍👦 family 👍🏽 thumbs 🇫🇷 flag", "中文分词测试：你好，世界！",
    "日本語とEnglishの混在テキスト🎌", "한국어 텍스트와 숫자 123", "naïve café résumé — “quotes” … ellipsis",
    "Привет, мир! Γειά σου κόσμε", "مرحبا بالعالم 🌍", "math ∑∫√∞ ≠ ≤ ≥ π ℝ", "combining e\u0301 a\u0308 o\u0302",
    "def f(x):\n    return x ** 2  # 平方\n", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟘𝟙𝟚", "tabs\t\tand   spaces\n\n", "🧑‍💻 coding at 3am ☕☕☕",
    "<|im_start|>assistant\n答案是 42 🎉<|im_end|>",
]


@pytest.fixture(scope="module")
def spm():
    return Tokenizer.from_gguf_metadata(json.loads((DATA / "tiny_spm_tokenizer.json").read_text(encoding="utf-8")))


def stream(tokenizer, ids, skip_special_tokens=True):
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    pieces = [detok.add(i) for i in ids]
    return pieces, detok.flush()


def check(tokenizer, ids, skip_special_tokens=True):
    pieces, tail = stream(tokenizer, ids, skip_special_tokens)
    full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert "".join(pieces) + tail == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in p for p in pieces + [tail])
    return pieces


@pytest.mark.parametrize("skip", [True, False])
def test_strings_stream_exactly(tok, skip):
    for text in STRINGS:
        check(tok, tok.encode(text), skip)


def test_multibyte_characters_are_held_until_complete(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # one emoji, several byte-level tokens
    pieces = check(tok, ids)
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "😀"


def test_chat_prompt_streams(tok):
    ids = tok.encode_chat([{"role": "user", "content": "Dis bonjour 👋 en 中文"}])
    for skip in (True, False):
        check(tok, ids, skip)


def test_invalid_bytes_match_full_decode(tok):
    byte_token = {b: tok.token_to_id(c) for b, c in enumerate(_byte_alphabet())}
    h = tok.encode("h")[0]
    check(tok, [h, byte_token[0x80], h])           # a lone continuation byte mid-text
    check(tok, [h, byte_token[0xE4], byte_token[0xB8], h])  # a character cut short
    pieces, tail = stream(tok, [h, byte_token[0xF0], byte_token[0x9F]])  # ends mid-character
    assert "".join(pieces) == "h" and tail == "\ufffd" == tok.decode([byte_token[0xF0], byte_token[0x9F]])


def test_random_ids_stream_exactly(tok):
    rng = random.Random(0)
    for _ in range(20):
        check(tok, [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 60))], rng.random() < 0.5)


def test_sentencepiece_spaces_and_byte_fallback(spm):
    for text in ["hello world", " hello  there", "héllo wörld 中 😀", "the other\n\nthen", "  ", "x<tool>y"]:
        for skip in (True, False):
            check(spm, spm.encode(text), skip)
    ids = spm.encode("hello there")
    assert stream(spm, ids)[0] == ["", "hello", " there"]  # BOS skipped; first word loses its prefix space


def test_decodes_only_a_short_window(tok):
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode(" ".join(STRINGS) * 3)
    assert len(ids) > 500
    pieces, tail = stream(Counting(), ids)
    assert "".join(pieces) + tail == tok.decode(ids)
    assert max(calls) <= 8 and len(calls) <= 3 * len(ids) + 2


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> character table, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return [table[b] for b in range(256)]
