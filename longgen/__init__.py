"""longgen: long and wide generation with pretrained diffusion models, windows sampled with ALM.

The public names are imported on first use (PEP 562), so ``import longgen`` and ``longgen --help``
do not load torch."""

from __future__ import annotations

import importlib

from .constants import METHODS

_LAZY = {
    "sample": ".api",
    "Denoiser": ".denoiser", "Evaluator": ".denoiser", "Request": ".denoiser",
    "FunctionDenoiser": ".denoiser", "CountingDenoiser": ".denoiser", "cat_cond": ".denoiser",
    "to_eps": ".denoiser", "to_x0": ".denoiser",
    "SeparableGMM": ".priors", "SharedBasisGMM": ".priors", "PriorDenoiser": ".priors",
    "Schedule": ".schedule", "make_schedule": ".schedule",
}

__all__ = ["sample", "Denoiser", "Evaluator", "Request", "FunctionDenoiser", "CountingDenoiser",
           "cat_cond", "to_eps", "to_x0", "SeparableGMM", "SharedBasisGMM", "PriorDenoiser", "METHODS", "Schedule",
           "make_schedule"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
