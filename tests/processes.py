"""A process's children and liveness from /proc, for tests that check worker processes end with their parent."""
from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc (field 4 of stat, after the name in parentheses)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
