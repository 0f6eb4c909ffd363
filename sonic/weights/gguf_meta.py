"""GGUF metadata as plain Python values (str, int, float, bool, lists of those)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sonic.errors import SonicError


def open_gguf_reader(path: str | Path):
    """A memory-mapped `gguf.GGUFReader`, or a clear error for a missing, unreadable or non-GGUF file."""
    try:
        import gguf
    except ImportError:
        raise SonicError("reading .gguf files needs the 'gguf' package: pip install gguf") from None
    path = Path(path)
    if not path.is_file():
        raise SonicError(f"model file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors/OSError on bad files
        raise SonicError(f"{path} is not a readable GGUF file ({e})") from None


def field_value(field) -> Any:
    """Decode one `gguf.ReaderField` into a Python value (str, int, float, bool or a list of them)."""
    return field.contents()


def read_metadata(reader) -> dict[str, Any]:
    return {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
