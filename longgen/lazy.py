"""A stand-in for a module that is imported on its first use (``longgen --help`` must not pay for
torch): ``torch = LazyModule("torch")`` at the top of a plugin, then ``torch.tensor(...)`` in its
functions imports torch the first time and is the real attribute from then on."""

from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
