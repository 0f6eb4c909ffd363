"""The all-reduce latency a `sonic bench --tp N --json` report measured, for `sonic estimate --allreduce-from`.

The report's figure is the median time of one all-reduce of a hidden-size vector on the bench's own
ranks (see sonic/bench/tp.py); it includes moving the data, which the projection's link term adds
again, but at batch 1 that is a few kB and well under a microsecond over NVLink.
"""
from __future__ import annotations

import json
from pathlib import Path

from sonic.errors import SonicError

HOW = "pass a report written by `sonic bench --tp N --json` (N of 2 or more)"


def measured_allreduce(path: str) -> tuple[float, str]:
    """(microseconds per all-reduce, what was measured and where) from a bench report."""
    try:
        report = json.loads(Path(path).read_text())
    except OSError as e:
        raise SonicError(f"cannot read --allreduce-from {path} ({e.strerror}): {HOW}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SonicError(f"--allreduce-from {path} is not a JSON report: {HOW}") from None
    figure = report.get("allreduce") if isinstance(report, dict) else None
    us = figure.get("us_per_call") if isinstance(figure, dict) else None
    if isinstance(us, bool) or not isinstance(us, (int, float)) or not us >= 0:
        raise SonicError(f"--allreduce-from {path} holds no all-reduce figure: {HOW}")
    where = (f"{figure.get('communicator', '?')} all-reduce of {figure.get('elements', '?')} values over "
             f"{report.get('tp', '?')} ranks on {report.get('device', '?')}")
    return float(us), where
