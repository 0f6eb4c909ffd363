"""Progress bars that only appear for work lasting over a second."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_enabled = True


def disable():
    """No bars in this process (tensor-parallel workers: rank 0 shows the one bar)."""
    global _enabled
    _enabled = False


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap `items` in a tqdm bar on stderr, shown only after one second (so quick loads stay quiet)."""
    if not _enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but loading must not fail without it
        yield from items
        return
    yield from tqdm(items, total=total, desc=desc, delay=1.0, leave=False, file=sys.stderr,
                    dynamic_ncols=True)
