"""Runner registry: name -> class, imported lazily so CPU-only installs never touch GPU code."""
from __future__ import annotations

import importlib

from sonic.errors import SonicError

RUNNERS = {
    "ref": ("sonic.engine.runner_ref", "ReferenceRunner"),
    "graph": ("sonic.engine.runner_graph", "GraphRunner"),
    "mono": ("sonic.mono.runner", "MonoRunner"),
}


def make_runner(name: str, model):
    try:
        module, cls = RUNNERS[name]
    except KeyError:
        raise SonicError(f"unknown runner '{name}': choose one of {', '.join(RUNNERS)}") from None
    return getattr(importlib.import_module(module), cls)(model)
