"""Text <-> token ids for a model, from a GGUF file's metadata or a Hugging Face tokenizer folder.

Encoding and decoding run in the `tokenizers` library. A GGUF file carries no `tokenizer.json`, so
we rebuild one from the vocabulary, merges and token types it stores, the way transformers does
(`integrations/gguf`), plus the pre-tokenizer llama.cpp picks for the file's `tokenizer.ggml.pre`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from sonic.chat_template import render_chat_template
from sonic.detokenizer import IncrementalDetokenizer
from sonic.errors import SonicError

# llama.cpp's token types (`tokenizer.ggml.token_type`) that become added tokens.
CONTROL, USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# `tokenizer.ggml.pre` -> the split regex its merges were learned with (same table as transformers).
_PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}
# These split every digit off first, then apply GPT-2's regex (llama.cpp's `\p{N}` + GPT-2 pair).
_DIGIT_FIRST_PRES = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}


class Tokenizer:
    """A model's tokenizer: encode/decode, chat templates, and the ids that end generation."""

    def __init__(self, backend: _Backend, *, bos_token_id: int | None = None,
                 eos_token_ids: tuple[int, ...] = (), add_bos: bool = False,
                 chat_template: str | None = None, vocab_size: int | None = None):
        self.backend = backend
        self._bos = bos_token_id
        self._eos = tuple(dict.fromkeys(i for i in eos_token_ids if i is not None))
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._vocab_size = vocab_size or backend.get_vocab_size(with_added_tokens=True)

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """From a `.gguf` file or a folder holding `tokenizer.json`."""
        path = Path(path)
        if path.is_dir():
            return cls.from_hf_folder(path)
        if path.is_file() and path.suffix == ".gguf":
            from sonic.weights.gguf_meta import open_gguf_reader, read_metadata
            return cls.from_gguf_metadata(read_metadata(open_gguf_reader(path)))
        if not path.exists():
            raise SonicError(f"tokenizer not found: {path} does not exist; pass a .gguf file "
                             "or a folder with tokenizer.json")
        raise SonicError(f"cannot load a tokenizer from {path}: pass a .gguf file or a folder "
                         "with tokenizer.json")

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise SonicError(f"no tokenizer.json in {folder}: point at the model's Hugging Face folder "
                             "(with tokenizer.json) or at a .gguf file")
        try:
            backend = _Backend.from_file(str(file))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise SonicError(f"{file} is not a valid tokenizer file ({e})") from None
        config = {**_read_json(folder / "special_tokens_map.json"),
                  **_read_json(folder / "tokenizer_config.json")}
        bos, eos = (_token_id(backend, config.get(k)) for k in ("bos_token", "eos_token"))
        eos_ids = [eos] + _as_list(_read_json(folder / "generation_config.json").get("eos_token_id"))
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # no flag: follow what the file's own post-processor does
            add_bos = bos is not None and backend.encode("a").ids[:1] == [bos]
        return cls(backend, bos_token_id=bos, eos_token_ids=tuple(eos_ids), add_bos=bool(add_bos),
                   chat_template=_hf_chat_template(folder, config))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> "Tokenizer":
        kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise SonicError("this GGUF file has no tokenizer (tokenizer.ggml.tokens is missing); "
                             "load the tokenizer from the model's Hugging Face folder instead")
        special_ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")]
        if kind == "gpt2":
            backend = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [],
                                      meta.get("tokenizer.ggml.pre"))
        elif kind == "llama":
            backend = _sentencepiece_bpe(meta, tokens, special_ids[2])
        else:
            raise SonicError(f"unsupported GGUF tokenizer model '{kind}': Sonic reads 'gpt2' (byte-level "
                             "BPE) and 'llama' (SentencePiece BPE); use the model's Hugging Face folder")
        _add_special_tokens(backend, tokens, meta.get("tokenizer.ggml.token_type") or [],
                            special_ids, byte_level=kind == "gpt2")
        eos = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        return cls(backend, bos_token_id=special_ids[0], eos_token_ids=tuple(eos),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
                   chat_template=meta.get("tokenizer.chat_template"), vocab_size=len(tokens))

    # ---- use ---------------------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self._bos is not None:
            ids.insert(0, self._bos)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **kwargs: Any) -> str:
        names = {"bos_token": self._bos, "eos_token": self._eos[0] if self._eos else None}
        strings = {k: self.id_to_token(i) if i is not None else None for k, i in names.items()}
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, **{**strings, **kwargs})

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        ids = self.encode(self.apply_chat_template(messages, add_generation_prompt, **kwargs),
                          add_special_tokens=False)
        # Templates that write the BOS themselves must not get a second one.
        if self.add_bos and self._bos is not None and ids[:1] != [self._bos]:
            ids.insert(0, self._bos)
        return ids

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)


# ---- Hugging Face folder helpers ------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SonicError(f"cannot read {path}: {e}") from None


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _token_id(backend: _Backend, token) -> int | None:
    # Configs spell special tokens as strings or as serialized AddedToken dicts.
    content = token.get("content") if isinstance(token, dict) else token
    return backend.token_to_id(content) if content else None


def _hf_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(folder / "chat_template.json").get("chat_template") or config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


# ---- GGUF metadata -> tokenizers ------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet byte-level vocabularies are spelled in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> _Backend:
    spell = _bytes_to_unicode()
    alphabet = set(spell.values())
    # A token stored as raw text (outside the byte alphabet) is respelled so BPE can produce it.
    vocab = {t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = _Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre in _DIGIT_FIRST_PRES:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         byte_level])
    else:  # "gpt2", "default" and anything unlisted: GPT-2's own regex
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], unk_id: int | None) -> _Backend:
    merges = meta.get("tokenizer.ggml.merges")
    scores = meta.get("tokenizer.ggml.scores")
    if merges:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    elif scores:
        pairs = _merges_from_scores(tokens, scores)
    else:
        raise SonicError("this GGUF 'llama' tokenizer has neither merges nor scores; "
                         "load the tokenizer from the model's Hugging Face folder instead")
    unk = tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None
    backend = _Backend(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs, unk_token=unk,
                                  fuse_unk=True, byte_fallback=True))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", split=False,
                                                     prepend_scheme="first" if prefix else "never")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges pieces by the score of the result: rank every split of every token so."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:k], token[k:], score) for k in range(1, len(token))
                  if token[:k] in vocab and token[k:] in vocab]
        found += sorted(splits, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _add_special_tokens(backend: _Backend, tokens: list[str], types: list[int],
                        special_ids: list[int | None], byte_level: bool) -> None:
    """Keep control and user-defined tokens whole, so `<|im_start|>` in text is one id.

    In a byte-level vocabulary a marked token spelled outside the byte alphabet is a converter
    mislabel; adding it would create an id past the model's vocabulary, so it is skipped.
    """
    alphabet = set(_bytes_to_unicode().values()) if byte_level else None
    ok = (lambda t: set(t) <= alphabet) if byte_level else (lambda t: True)
    special = {i for i, kind in enumerate(types) if kind == CONTROL}
    special |= {i for i in special_ids if i is not None and i < len(tokens)}
    added = [AddedToken(tokens[i], special=True, normalized=False) for i in sorted(special) if ok(tokens[i])]
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types) if kind == USER_DEFINED and ok(t)]
    if added:
        backend.add_special_tokens(added)
    if user:
        backend.add_tokens(user)
