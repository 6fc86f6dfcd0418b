"""Grid expansion and execution, the artifact cache, and result rows.

Imported lazily: reading result rows (`Results`) must not import torch, which the cache and the
runner need."""

from __future__ import annotations

import importlib

_WHERE = {"Cache": ".cache", "Cell": ".grid", "Runner": ".grid", "Results": ".results"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
