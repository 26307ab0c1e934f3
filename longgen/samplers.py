"""ALM and its baselines: one step function each, sharing the base DDIM/DDPM step.

Notation (ARCHITECTURE.md, paper Sec. 3): ``M`` = 1 where content is generated, 0 where observed;
``x_t`` = observed content at this step's noise level; ``y`` = the window being sampled, batched
``(B, *shape)``. ``ev`` is a :class:`~longgen.denoiser.Evaluator`: condition-only requests give
``eps_c``, guided ones ``eps_g``; each call is ONE batched forward.

A window with nothing observed (its mask all ones) takes the plain base step, as the released
wide-image code does for its first patch; ``act`` marks the windows that have observed content.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .denoiser import Evaluator, Request, to_eps
from .schedule import Schedule, base_step

from .constants import METHODS, OBSERVING  # noqa: F401  (defined there: the CLI reads them without torch)


def _eps(sch: Schedule, i: int, out: torch.Tensor, x: torch.Tensor, pt: str) -> torch.Tensor:
    return to_eps(out, x, sch.abar[i].to(x.dtype), pt)


def alm_step(ev, sch, i, y, x_t, m, act, w1, w2, generator):
    """ALM in the released order: likelihood step at Y_t, base step at Y', then SyncSDE sync."""
    t, sig, pt = sch.timesteps[i], sch.sigma(i), ev.denoiser.prediction_type
    yp = y
    if (w1 or w2) and act.any():
        ya, ma, rows = y[act], m[act], act.nonzero().squeeze(1)
        e = x_t[act] * (1 - ma) + ya * ma                              # E = X_t (1-M) + Y_t M
        out_y, out_e = ev(t, [Request(ya, rows=rows), Request(e, rows=rows)])  # eps_c(Y_t), eps_c(E): 1 forward
        eps_y, eps_e = _eps(sch, i, out_y, ya, pt), _eps(sch, i, out_e, e, pt)
        yp = y.clone()
        yp[act] = ya + sig * ma * (w1 * (eps_y - eps_e) - w2 * eps_e)  # Y' (likelihood step)
    (out,) = ev(t, [Request(yp, guided=True)])                         # eps_g(Y'): 1 forward
    ys = base_step(sch, i, yp, out, pt, generator)
    if w1 and act.any():
        ys[act] -= w1 * sig * (1 - m[act]) * (yp[act] - x_t[act])    # observed-region sync
    return ys


def alm_chained_step(ev, sch, i, y, x_of, m, act, w1, w2, generator):
    """ALM over windows in the released wide-image order: eps_c(Y) for all windows in one batch,
    then window by window E_b from its neighbour's already-updated Y' (one forward each), then
    eps_g(Y') batched, the base step and the sync. ``x_of(b, y_now)`` gives window b's X_t."""
    t, sig, pt = sch.timesteps[i], sch.sigma(i), ev.denoiser.prediction_type
    (out_y,) = ev(t, [Request(y)])
    eps_y = _eps(sch, i, out_y, y, pt)
    yp, xs = y.clone(), {}
    for b in act.nonzero().squeeze(1).tolist():
        xs[b] = x_of(b, yp)
        e = (xs[b] * (1 - m[b]) + y[b] * m[b])[None]
        (out_e,) = ev(t, [Request(e, rows=torch.tensor([b]))])
        eps_e = _eps(sch, i, out_e, e, pt)[0]
        yp[b] = y[b] + sig * m[b] * (w1 * (eps_y[b] - eps_e) - w2 * eps_e)
    (out,) = ev(t, [Request(yp, guided=True)])
    ys = base_step(sch, i, yp, out, pt, generator)
    for b, x_t in xs.items():
        ys[b] -= w1 * sig * (1 - m[b]) * (yp[b] - x_t)
    return ys


def alm_fused_step(ev, sch, i, y, x_t, m, act, w1, w2, generator):
    """Paper Eq. 1: the same terms added to one base step at Y_t; eps_c(Y_t) is the cond row of
    the guided evaluation, so a step costs one forward of (2 or 1) + 1 rows per window."""
    t, sig, pt = sch.timesteps[i], sch.sigma(i), ev.denoiser.prediction_type
    if not act.any():
        (out,) = ev(t, [Request(y, guided=True)])
        return base_step(sch, i, y, out, pt, generator)
    ya, ma, rows = y[act], m[act], act.nonzero().squeeze(1)
    e = x_t[act] * (1 - ma) + ya * ma
    (out, out_e), (out_c, _) = ev(t, [Request(y, guided=True), Request(e, rows=rows)], return_cond=True)
    ys = base_step(sch, i, y, out, pt, generator)
    eps_y, eps_e = _eps(sch, i, out_c[act], ya, pt), _eps(sch, i, out_e, e, pt)
    ys[act] += sig * ma * (w1 * (eps_y - eps_e) - w2 * eps_e) + w1 * sig * (1 - ma) * (x_t[act] - ya)
    return ys


def syncsde_step(ev, sch, i, y, x_t, m, act, w1, w2, generator):
    """SyncSDE (paper Eq. 3): the base step plus the observed-region sync; w2 and the
    likelihood step are not used."""
    (out,) = ev(sch.timesteps[i], [Request(y, guided=True)])
    ys = base_step(sch, i, y, out, ev.denoiser.prediction_type, generator)
    if w1 and act.any():
        ys[act] += w1 * sch.sigma(i) * (1 - m[act]) * (x_t[act] - y[act])
    return ys


def replace_step(ev, sch, i, y, x_t, m, act, w1, w2, generator):
    """Replacement (RePaint / Blended-Diffusion style): observed region set to X_t, then a step."""
    y = torch.where(m.bool(), y, x_t) if act.any() else y
    (out,) = ev(sch.timesteps[i], [Request(y, guided=True)])
    return base_step(sch, i, y, out, ev.denoiser.prediction_type, generator)


def plain_step(ev, sch, i, y, x_t, m, act, w1, w2, generator):
    """Plain DDIM / DDPM: no conditioning on observed content."""
    (out,) = ev(sch.timesteps[i], [Request(y, guided=True)])
    return base_step(sch, i, y, out, ev.denoiser.prediction_type, generator)


STEPS = {"alm": alm_step, "alm-fused": alm_fused_step, "syncsde": syncsde_step,
         "replace": replace_step, "ddim": plain_step, "ddpm": plain_step}

Source = Callable[[int, torch.Tensor], torch.Tensor]


def observed_windows(mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which windows observe anything (mask not all ones)."""
    return (mask.flatten(1) < 0.5).any(dim=1)


def run(ev: Evaluator, schedule: Schedule, y: torch.Tensor, mask: torch.Tensor, source: Source | None,
        method: str = "alm", w1: float = 1.0, w2: float = 0.001,
        generator: torch.Generator | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``method`` from ``y`` = Y_T, yielding ``(i, Y)`` after every step (smalldiffusion style).

    ``source(i, y)`` gives X_t for step i (it may read the current ``y``: the engine's ``live``
    mode); ``mask`` is expanded to ``y``'s shape. The caller sees every intermediate state, so it
    can stop early, store a trajectory, or feed neighbours.
    """
    step = STEPS[method]
    m = mask.to(y.dtype).expand_as(y)
    act = observed_windows(m)
    for i in range(len(schedule)):
        x_t = source(i, y) if (method in OBSERVING and source is not None) else None
        if x_t is None:
            act_i, x_t = torch.zeros_like(act), y
        else:
            act_i = act
        y = step(ev, schedule, i, y, x_t, m, act_i, w1, w2, generator)
        yield i, y


@torch.no_grad()
def multidiffusion(ev: Evaluator, schedule: Schedule, canvas: torch.Tensor, starts, size: int,
                   axis: int, generator: torch.Generator | None = None,
                   view_batch: int = 0) -> torch.Tensor:
    """MultiDiffusion (Bar-Tal et al. 2023, Eq. 5), a baseline: Y_T (B, *shape) -> Y_0.

    ``canvas`` holds the whole output; its long ``axis`` (negative) is cut into views of ``size``
    positions at ``starts``. Every step each view takes the guided base step on its own, and each
    position becomes the average of the views that cover it (value / count), as diffusers'
    ``StableDiffusionPanoramaPipeline`` does with ``circular_padding=False`` (its views: 64 latents
    at a stride of 8). Views go to the model ``view_batch`` at a time (0 = all in one forward).
    """
    if not -canvas.ndim < axis < 0:
        raise ValueError(f"axis must be negative and not the batch dim of a {canvas.ndim}-dim "
                         f"canvas, got {axis}")
    L = canvas.shape[axis]
    starts = [int(s) for s in starts]
    bad = [s for s in starts if not 0 <= s <= L - size]
    if not isinstance(size, int) or size < 1 or not starts or bad:
        raise ValueError(f"views of size {size!r} at starts {bad or starts} do not fit a canvas of "
                         f"length {L}; allowed: size >= 1 and 0 <= start <= {L - size}")
    if not isinstance(view_batch, int) or view_batch < 0:
        raise ValueError(f"view_batch must be an integer >= 0 (0 = all views), got {view_batch!r}")
    count = torch.zeros(L, dtype=canvas.dtype, device=canvas.device)
    for s in starts:
        count[s:s + size] += 1
    if (count == 0).any():
        raise ValueError(f"positions {(count == 0).nonzero().squeeze(1).tolist()[:8]} are in no view; "
                         "the views must cover the canvas")
    count = count.reshape(L, *([1] * (-axis - 1)))               # broadcasts along the long axis
    B, nb, pt = canvas.shape[0], view_batch or len(starts), ev.denoiser.prediction_type
    y = canvas
    for i in range(len(schedule)):
        value = torch.zeros_like(y)
        for k in range(0, len(starts), nb):
            part = starts[k:k + nb]
            views = torch.cat([y.narrow(axis, s, size) for s in part])     # (len(part) * B, *shape)
            rows = torch.arange(B).repeat(len(part))                       # condition row of each view
            (out,) = ev(schedule.timesteps[i], [Request(views, guided=True, rows=rows)])
            stepped = base_step(schedule, i, views, out, pt, generator)
            for j, s in enumerate(part):
                value.narrow(axis, s, size).add_(stepped[j * B:(j + 1) * B])
        y = value / count                                                  # Eq. 5: the views' average
    return y
