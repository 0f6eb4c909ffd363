"""Tokenizer: GGUF- and folder-built tokenizers agree with transformers' tokenizer for the same model."""
import json
import re
import shutil
from pathlib import Path

import pytest

from sonic.errors import SonicError
from sonic.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"

STRINGS = [
    "", " ", "Hello, world!", "hello world", " leading space", "trailing space ", "   three leading",
    "double  space", "tabs\tand\t\ttabs", "new\nline", "\n\n\nblank lines\n\n", "\r\nwindows\r\n",
    "mixed \t\n whitespace \n\t ", "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "import numpy as np\nnp.zeros((3, 4), dtype=np.float32)", '{"key": [1, 2.5, null, true]}', "<html><body>&amp;</body></html>",
    "SELECT * FROM users WHERE id = 42;", "numbers 0 7 42 123 4567 89012 3.14159 -2e10 1,000,000", "x=1234567890",
    "year 2024 and  2025", "indent\n    12 spaces before digits", "tab\t\t9", "naïve café résumé façade", "Ångström über straße",
    "Привет, мир!", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "中文分词测试：你好，世界！", "日本語のテキストです。",
    "한국어 텍스트", "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family", "flags 🇫🇷🇯🇵", "math ∑∫√∞ ≠ ≤ ≥ π", "combining e\u0301 a\u0308",
    "zero\u200bwidth", "<|im_start|>user\nHi there<|im_end|>\n", "text <|endoftext|> more text", "<|im_start|><|im_end|>",
    "almost <|im_start special", "<repo_name>sonic<file_sep>main.py", "It's don't we'll they've I'm you'd",
    "ALL CAPS SHOUTING", "CamelCaseIdentifierName snake_case_name", "url https://example.com/a?b=c&d=e#f",
    "a" * 200, "!!! ??? ... ---",
]
# Text where a run of 2+ whitespace characters meets a digit: llama.cpp and SmolLM2's own
# tokenizer.json split digits off first (`tokenizer.ggml.pre = smollm`), transformers' GGUF loader
# does not, so there the reference is transformers with the model's own pre-tokenizer.
PRE_TOKENIZER_DIFFERS = re.compile(r"\s{2,}\d")


@pytest.fixture(scope="module")
def ref_smollm_pre(hf_tok):
    """transformers' tokenizer with the pre-tokenizer of SmolLM2's own tokenizer.json."""
    from tokenizers import Tokenizer as Backend, pre_tokenizers
    backend = Backend.from_str(hf_tok.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


@pytest.fixture(scope="module")
def saved_folder(hf_tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    hf_tok.save_pretrained(str(folder))
    return folder


def test_fifty_strings():
    assert len(STRINGS) == 50 and len(set(STRINGS)) == 50


@pytest.mark.parametrize("text", STRINGS)
def test_encode_decode_match_transformers(tok, hf_tok, ref_smollm_pre, text):
    ids = tok.encode(text)
    assert ids == ref_smollm_pre.encode(text, add_special_tokens=False).ids
    if not PRE_TOKENIZER_DIFFERS.search(text):
        assert ids == hf_tok.encode(text)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_digits_split_like_llama_cpp(tok):
    # "a", "  ", "1": the whitespace run stays whole because the digit is split off first.
    assert [tok.id_to_token(i) for i in tok.encode("a  1")] == ["a", "ĠĠ", "1"]
    assert [tok.id_to_token(i) for i in tok.encode(" 42")] == ["Ġ", "4", "2"]


def test_special_tokens_are_single_ids(tok):
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.encode("<|endoftext|>") == [0]
    assert tok.id_to_token(1) == "<|im_start|>"
    assert tok.decode([1, *tok.encode("hi"), 2]) == "hi"


def test_model_ids(tok):
    assert tok.bos_token_id == 1
    assert tok.eos_token_ids == (2,)
    assert tok.vocab_size == 49152
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # SmolLM2 adds no BOS
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_from_hf_folder_matches_transformers(saved_folder, hf_tok):
    hf = Tokenizer.load(saved_folder)
    for text in STRINGS:
        assert hf.encode(text) == hf_tok.encode(text), text
    assert hf.bos_token_id == 1 and hf.eos_token_ids == (2,)
    assert hf.chat_template == hf_tok.chat_template
    assert hf.vocab_size == 49152


def test_hf_folder_config_variants(saved_folder, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(saved_folder / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, bos_token={"content": "<|endoftext|>", "special": True})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    hf = Tokenizer.from_hf_folder(tmp_path)
    assert hf.bos_token_id == 0
    assert hf.eos_token_ids == (2, 0)
    assert hf.encode("hi") == [0, *hf.encode("hi", add_special_tokens=False)]
    assert hf.encode_chat([{"role": "user", "content": "<|endoftext|>x"}])[:2] == [0, hf.encode("x", False)[0]]
    assert hf.apply_chat_template([{"role": "user", "content": "yo"}]) == "yo"


def test_sentencepiece_gguf_matches_transformers():
    from transformers.integrations.gguf import convert_gguf_tokenizer
    meta = json.loads((DATA / "tiny_spm_tokenizer.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_gguf_metadata(meta)
    hf_tok, _ = convert_gguf_tokenizer("llama", {
        "tokenizer_type": "llama", "tokens": meta["tokenizer.ggml.tokens"],
        "scores": meta["tokenizer.ggml.scores"], "token_type": meta["tokenizer.ggml.token_type"]})
    for text in ["hello world", " hello  there", "the other then", "héllo wörld 中 😀", "<s>hello</s> there",
                 "x<tool>y", "", "  ", "\n\nhello\n"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == hf_tok.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)
        assert tok.encode(text) == [1, *ids]  # SentencePiece models add BOS unless the file says not to
    assert tok.encode("<tool>", add_special_tokens=False) == [tok.token_to_id("<tool>")]


def test_missing_path_is_a_sonic_error(tmp_path):
    with pytest.raises(SonicError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.gguf")


def test_folder_without_tokenizer_json(tmp_path):
    with pytest.raises(SonicError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_other_file_kinds_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SonicError, match="notes.txt"):
        Tokenizer.load(tmp_path / "notes.txt")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(SonicError, match="bad.gguf"):
        Tokenizer.load(tmp_path / "bad.gguf")
    (tmp_path / "tokenizer.json").write_text("{ broken")
    with pytest.raises(SonicError, match="not a valid tokenizer"):
        Tokenizer.load(tmp_path)


def test_unsupported_gguf_tokenizer_model():
    with pytest.raises(SonicError, match="'bert'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(SonicError, match="no tokenizer"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2"})
