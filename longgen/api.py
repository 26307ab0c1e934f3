"""``longgen.sample``: the public entry point for one (batched) inpainting run."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .denoiser import Evaluator, check_prediction_type
from .observed import NoiseSource, SequenceSource, ddim_invert
from .samplers import METHODS, run
from .schedule import make_schedule, scheduler_prediction_type

OBSERVED_PATHS = ("invert", "noise")


def check_weights(w1: float, w2: float) -> None:
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    return method


def check_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A 0/1 mask (1 = generate) broadcastable to ``shape``."""
    mask = torch.as_tensor(mask)
    try:
        full = torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        full = None
    if full != torch.Size(shape):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to observed of "
                         f"shape {tuple(shape)}")
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise ValueError(f"mask values must be 0 or 1 (1 = generate); found {mask[bad].unique()[:5].tolist()}")
    return mask


@torch.no_grad()
def sample(denoiser, scheduler, observed: torch.Tensor, mask: torch.Tensor, *, method: str = "alm",
           w1: float = 1.0, w2: float = 0.001, observed_path: str | Sequence[torch.Tensor] = "invert",
           cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
           num_inference_steps: int = 50, latents: torch.Tensor | None = None,
           generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Sample the masked part of ``observed`` (B, *shape) with ``method``; returns Y_0 (B, *shape).

    ``mask`` is 1 where content is generated (the paper's M). ``observed_path`` gives X_t:
    ``"invert"`` (DDIM inversion of ``observed`` with the condition only, as released),
    ``"noise"`` (q(X_t | X_0) afresh each step) or a sequence of X_t in sampling order.
    ``latents`` is Y_T; when omitted it is drawn from ``generator`` (``torch.randn``).
    ``callback(i, t, y)`` is called after every step. The scheduler is only read.
    """
    method = check_method(method)
    check_weights(w1, w2)
    if not isinstance(observed, torch.Tensor) or observed.ndim < 2:
        raise ValueError("observed must be a tensor with a batch dimension, (B, *shape)")
    mask = check_mask(mask, observed.shape).to(device=observed.device, dtype=observed.dtype)
    pt = check_prediction_type(getattr(denoiser, "prediction_type", None))
    sched_pt = scheduler_prediction_type(scheduler, pt)
    if sched_pt != pt:
        raise ValueError(f"the denoiser predicts {pt!r} but the scheduler config says {sched_pt!r}; "
                         "they must agree")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    kind = method if method in ("ddim", "ddpm") else None
    schedule = make_schedule(scheduler, num_inference_steps, kind=kind)
    ev = Evaluator(denoiser, cond=cond, uncond=uncond, guidance_scale=guidance_scale)

    if isinstance(observed_path, str):
        if observed_path not in OBSERVED_PATHS:
            raise ValueError(f"unknown observed_path {observed_path!r}; allowed: "
                             f"{', '.join(OBSERVED_PATHS)} or a sequence of X_t tensors")
    if method in ("ddim", "ddpm"):
        source = None
    elif observed_path == "invert":
        source = SequenceSource(ddim_invert(ev, schedule, observed), len(schedule))
    elif observed_path == "noise":
        source = NoiseSource(schedule, observed, generator)
    else:
        source = SequenceSource(observed_path, len(schedule))
        for k, x in enumerate(source.xs):
            if torch.broadcast_shapes(x.shape, observed.shape) != observed.shape:
                raise ValueError(f"observed_path[{k}] has shape {tuple(x.shape)}; it must broadcast "
                                 f"to observed's {tuple(observed.shape)}")

    if latents is None:
        y = torch.randn(observed.shape, generator=generator, dtype=observed.dtype, device=observed.device)
    else:
        if latents.shape != observed.shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)} must match observed's "
                             f"{tuple(observed.shape)}")
        y = latents.to(observed.dtype)
    y = schedule.initial_state(y)
    for i, y in run(ev, schedule, y, mask, source, method, w1, w2, generator):
        if callback is not None:
            callback(i, schedule.timesteps[i], y)
    if method == "replace":
        y = torch.where(mask.expand_as(y).bool(), y, observed)  # observed region is X_0 exactly
    return y
