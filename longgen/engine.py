"""The streaming engine: samples a plan's windows group by group and yields finished chunks.

G windows are sampled together in one batch. Inside a group each window's observed overlap comes
from its left neighbour's CURRENT latent (``live``, as the released wide-image code does) — either
all windows at once from the state at the start of the step (``live="batched"``: one forward for
all blended inputs) or in the released order (``live="chained"``: window by window, each reading
its neighbour after the neighbour's likelihood step; G = all reproduces the released procedure).
The first window of a group observes the previous group's last window through ``observed``:

* ``trajectory`` — that window's own per-step latents, stored while it was sampled (free);
* ``matched``    — its finished latent X_0 noised with the sampled window's OWN noise estimate:
  ``X_t = sqrt(abar_t) X_0 + sqrt(1 - abar_t) eps_hat``, where eps_hat is the noise the window's
  last guided evaluation predicted (at step i - 1; the initial latent itself at step 0) on the
  overlap. E = X_t (1 - M) + Y_t M then differs from Y_t only by the clean content the window
  predicts there and X_0, so ALM's likelihood and sync terms condition on the finished overlap
  itself rather than on the path the neighbour took to it (which its own right edge shaped).
  No extra forward; the neighbour must be finished (no pipelining across ranks);
* ``invert``     — DDIM inversion of its finished latent (one extra forward per step);
* ``noise``      — fresh q(X_t | X_0) of its finished latent every step.

User-given content (motion keyframes, a video's first clip, an inpainting source) is observed
through ``given_path``: ``invert`` (DDIM inversion of the given window: for inpainting the full
latent of the masked image, ``Given(keep_unknown=True)``, as released), ``noise`` (as released
for motion: ``q_sample`` of the keyframes, zero elsewhere) or ``matched`` (the given content
noised with the window's own noise estimate, as ``observed="matched"`` below). Given content wins
over the overlap.

A ``window_transform`` (:class:`WindowTransform`) gives each window its own coordinates: content
entering a window (given content, the overlap from its neighbour) is mapped into them before the
sampler sees it, and the finished window is mapped back before it goes onto the canvas (motion:
every window re-centred on its own start, as GMD advises for long sequences).

Finished windows go onto a :class:`longgen.stitch.Canvas`; everything before the next group's first window
is final and is yielded as a :class:`Chunk`. Memory: G windows, the canvas tail and (for
``trajectory``) one window's overlap per step — never the whole output.

Loops (a plan from :func:`longgen.planner.plan_loop`): the last window's right end lies on the
first window's start, so it observes both its left neighbour and the first window (``wrap``
positions, ALM's mask is 0 on both overlaps), and the canvas holds the first ``hold`` positions
until it is in (they are yielded last, as ``Chunk(0, hold)``). Its X_t there comes from the first
window like any group boundary: live when both are in one group, else ``trajectory`` (the first
window's latents at those positions, stored per step while it was sampled), ``invert`` or
``noise`` (of the first window's finished latent, kept for this). Its initial noise there is the
first window's (the noise field wraps).

Randomness is a function of (seed, position) for initial noise — overlapping windows share their
initial noise where they overlap, like the released canvas noise — and of (seed, group) for
step noise, so a run resumed at a group boundary draws exactly what the uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from longgen.stitch import Canvas

from .api import check_method, check_weights
from .denoiser import Evaluator, cat_cond, to_eps
from .impute import IMPUTE_MODES, ImputingEvaluator, KnownImputer
from .observed import ddim_invert
from .planner import Plan, Window
from .samplers import STEPS, alm_chained_step, observed_windows
from .schedule import make_schedule, q_sample

OBSERVED_SOURCES = ("trajectory", "matched", "invert", "noise")
LIVE_ORDERS = ("batched", "chained")
GIVEN_PATHS = ("invert", "matched", "noise")
BLENDS = ("paste", "feather", "average")


@dataclass
class EngineConfig:
    method: str = "alm"
    w1: float = 1.0
    w2: float = 0.001
    steps: int = 50
    group: int = 1                      # windows per batch; 0 = all
    observed: str = "trajectory"        # group boundary source
    live: str = "batched"               # order inside a group
    given_path: str = "invert"
    guidance_scale: float = 1.0
    blend: str = "paste"
    seed: int = 0
    paste_given: bool = False           # copy given content into the result exactly (e.g. an init clip)
    impute: str = "none"                # "spline": the base step's x0 moved onto the observed content
    impute_stride: int = 10             # ... the finished overlap fitted every this many positions
    soft_overlap: int = 0               # the mask ramps 0 -> 1 over the overlap's last positions
                                        # (not where content is given, which stays observed)

    def validate(self) -> "EngineConfig":
        check_method(self.method)
        check_weights(self.w1, self.w2)
        for name, val, allowed in (("observed", self.observed, OBSERVED_SOURCES),
                                   ("live", self.live, LIVE_ORDERS),
                                   ("given_path", self.given_path, GIVEN_PATHS),
                                   ("blend", self.blend, BLENDS),
                                   ("impute", self.impute, IMPUTE_MODES)):
            if val not in allowed:
                raise ValueError(f"unknown {name} {val!r}; allowed: {', '.join(allowed)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        for name in ("impute_stride", "soft_overlap"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.group, int) or self.group < 0:
            raise ValueError(f"group must be an integer >= 0 (0 = all windows), got {self.group!r}")
        if self.live == "chained" and self.method != "alm":
            raise ValueError("live='chained' is the released ALM order; it needs method='alm'")
        return self


@dataclass
class Given:
    """Content the user gives along the long axis: ``values`` (window shape, long axis of length
    n <= plan length, starting at position 0) and ``known`` (same shape or broadcastable; 1 where
    observed). Positions >= n are not given.

    ``keep_unknown``: by default the unobserved part of ``values`` is zeroed before the engine
    uses it (the released motion code noises ``keyframes * mask``); with True the values are used
    as they are, so DDIM inversion sees the whole window (the released inpainting code inverts
    the full VAE latent of the masked image). Only the observed part is ever read as X_t.

    ``xt``: X_t of the given content supplied from outside, ``xt(i, window)`` -> a window-shaped
    tensor for step i (read where ``known`` is 1), used instead of ``given_path``: a 2-D canvas
    gives each row of windows the per-step latents the row above had there (its trajectory)."""

    values: torch.Tensor
    known: torch.Tensor
    keep_unknown: bool = False
    xt: Callable[[int, Window], torch.Tensor] | None = None


class WindowTransform:
    """Per-window coordinates (the protocol of ``Engine(window_transform=...)``; subclassing is
    optional). ``fit(window, x0, known)`` returns the window's parameters (a tensor, kept in the
    resume state) from what is known of its clean content in the output's coordinates: ``x0`` and
    ``known`` have the window shape (known = 1 where x0 is given or already final).
    ``to_window(x, params, signal)`` maps a window-shaped tensor into the window's coordinates,
    ``from_window`` back. ``x`` may be noisy, ``signal * x0 + noise`` with signal = sqrt(abar):
    the map must be affine with its offset scaled by ``signal`` and send the noise to noise of
    the same law (an orthogonal linear part), so that noisy latents can move between windows."""

    def fit(self, window: Window, x0: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_window(self, x: torch.Tensor, params: torch.Tensor, signal: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def from_window(self, x: torch.Tensor, params: torch.Tensor, signal: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    # Optional: ``realign(prev_x0, prev_params, d, n, x0, known) -> params``. Called before a
    # group's first window is fitted, with the previous (finished) window ``prev_x0`` in its own
    # coordinates and the new window's given content (output coordinates, ``known`` = 1 where
    # given); returns new parameters for the previous window, so that the overlap it hands on
    # (its positions [d, d + n), the new window's [0, n)) agrees with the given content there.
    # The canvas keeps the previous window as it was finished.


@dataclass
class Chunk:
    start: int
    stop: int
    latent: torch.Tensor      # per-window shape with the long axis of length stop - start
    windows_done: int


def _sl(axis: int, a: int, b: int, ndim: int):
    """Index selecting [a, b) along negative ``axis`` of a tensor with ``ndim`` dims."""
    idx = [slice(None)] * ndim
    idx[ndim + axis] = slice(a, b)
    return tuple(idx)


class NoiseField:
    """Initial noise as a function of position on the long axis: position p's slice is drawn
    from its own generator seeded by (seed, p), so any window's noise is reproducible on its own."""

    def __init__(self, seed: int, shape: tuple, axis: int, dtype, device):
        self.seed, self.shape, self.axis, self.dtype, self.device = seed, shape, axis, dtype, device

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        sl_shape = list(self.shape)
        sl_shape[len(self.shape) + self.axis] = 1
        parts = []
        for p in range(start, stop):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + p) % (2**63 - 1))
            parts.append(torch.randn(sl_shape, generator=g, dtype=torch.float32).to(self.dtype))
        return torch.cat(parts, dim=len(self.shape) + self.axis).to(self.device)


class LatentNoise:
    """Initial noise read from a given tensor of the whole output (the window shape with the long
    axis of the plan's length): ``Engine(latents=...)``; nothing is drawn."""

    def __init__(self, latents: torch.Tensor, axis: int, dtype, device):
        self.latents, self.axis = latents.to(device=device, dtype=dtype), axis

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        return self.latents[_sl(self.axis, start, stop, self.latents.ndim)]


def _gen(seed: int, group: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + group * 104_729 + salt) % (2**63 - 1))


class Engine:
    """Iterate to get :class:`Chunk` s; ``state_dict`` after any chunk resumes from there."""

    def __init__(self, denoiser, scheduler, plan: Plan, shape: tuple, axis: int, config: EngineConfig,
                 *, cond: Any = None, uncond: Any = None,
                 window_cond: Callable[[Window], tuple[Any, Any]] | None = None,
                 given: Given | None = None, dtype=torch.float32, device="cpu", progress=None,
                 latents: torch.Tensor | None = None, window_transform: WindowTransform | None = None,
                 noise: Callable[[int, int], torch.Tensor] | None = None,
                 on_step: Callable[[list[Window], int, torch.Tensor], None] | None = None):
        """``noise(start, stop)``: the initial noise of positions [start, stop) (window-shaped),
        instead of the seeded noise field. ``on_step(group, i, y)`` is called before every step
        with the group's windows and their current latents (a 2-D canvas records the strip the
        next row of windows observes)."""
        self.den, self.plan, self.cfg = denoiser, plan, config.validate()
        self.wt = window_transform
        self.prev_params: torch.Tensor | None = None  # the last finished window's transform parameters
        self.shape, self.axis = tuple(shape), axis
        if self.shape[axis] != plan.window:
            raise ValueError(f"window shape {self.shape} has {self.shape[axis]} positions on axis {axis}; "
                             f"the plan's window is {plan.window}")
        kind = config.method if config.method in ("ddim", "ddpm") else None
        self.sch = make_schedule(scheduler, config.steps, kind=kind)
        self.cond, self.uncond, self.window_cond = cond, uncond, window_cond
        self.given = given
        self.dtype, self.device = dtype, device
        self.noise = noise if noise is not None else NoiseField(config.seed, self.shape, axis, dtype, device)
        if latents is not None:
            self.use_latents(latents)
        self.on_step = on_step
        self.G = config.group if 0 < config.group < len(plan) else len(plan)
        if plan.loop and window_transform is not None:
            raise ValueError("a loop plan takes no window transform")
        self.canvas = Canvas(plan.length, axis, mode=config.blend, hold=plan.hold)
        self.first_final: torch.Tensor | None = None  # loops: the first window, for the last one
        self.first_traj: list[torch.Tensor] | None = None  # loops: its wrapped columns per step
        self.next_window = 0
        self.prev_final: torch.Tensor | None = None   # last finished window's latent
        self.prev_traj: list[torch.Tensor] | None = None  # its per-step latents (trajectory)
        self.progress = progress
        self.forwards = 0
        # hooks for a run pipelined across ranks (longgen.pipeline): ``on_strip(i, strip, head)``
        # gets each step's recorded overlap for the next window (and a loop's first-window strip,
        # or None) as it is recorded; ``before_finish()`` runs once a group's steps are done,
        # before ``replace`` reads the neighbours' finished latents
        self.on_strip: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None
        self.before_finish: Callable[[], None] | None = None

    def use_latents(self, latents: torch.Tensor) -> None:
        """Take the whole output's initial noise from ``latents`` (the window shape with the long
        axis of the plan's length) instead of the seeded noise field; nothing is drawn for Y_T."""
        want = list(self.shape)
        want[self.axis] = self.plan.length
        if tuple(latents.shape) != tuple(want):
            raise ValueError(f"latents has shape {tuple(latents.shape)}; the initial noise of "
                             f"this output must be {tuple(want)}")
        self.noise = LatentNoise(latents, self.axis, self.dtype, self.device)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        d = {"next_window": self.next_window, "canvas": self.canvas.state_dict()}
        if self.prev_final is not None:
            d["prev_final"] = self.prev_final
        if self.prev_traj is not None:
            d["prev_traj"] = torch.stack(self.prev_traj)
        if self.prev_params is not None:
            d["prev_params"] = self.prev_params
        if self.first_final is not None:
            d["first_final"] = self.first_final
        if self.first_traj is not None:
            d["first_traj"] = torch.stack(self.first_traj)
        return d

    def load_state_dict(self, d: dict) -> None:
        self.next_window = int(d["next_window"])
        self.canvas = Canvas.from_state_dict(d["canvas"])
        self.prev_final = d.get("prev_final")
        traj = d.get("prev_traj")
        self.prev_traj = list(traj.unbind(0)) if traj is not None else None
        self.prev_params = d.get("prev_params")
        self.first_final = d.get("first_final")
        traj = d.get("first_traj")
        self.first_traj = list(traj.unbind(0)) if traj is not None else None

    # ------------------------------------------------------------------ helpers
    def _slice(self, x, a, b):
        return x[_sl(self.axis, a, b, x.ndim)]

    def _initial_noise(self, w: Window) -> torch.Tensor:
        """Y_T of window w from the position-keyed noise; a loop's last window wraps onto 0."""
        if not w.wrap:
            return self.noise(w.start, w.stop)
        return torch.cat([self.noise(w.start, self.plan.length), self.noise(0, w.wrap)],
                         dim=len(self.shape) + self.axis)

    def _given_window(self, w: Window):
        """(values, known) of the given content inside window w, or None."""
        if self.given is None:
            return None
        if w.wrap:  # loops: the wrapped part is given where the canvas's start is
            return self._given_wrapped(w)
        n = self.given.values.shape[self.axis]
        if w.start >= n:
            return None
        vals = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        known = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        stop = min(w.stop, n)
        gv = self._slice(self.given.values, w.start, stop).to(self.dtype)
        gk = self._slice(self.given.known.expand_as(self.given.values), w.start, stop).to(self.dtype)
        vals[_sl(self.axis, 0, stop - w.start, vals.ndim)] = gv
        known[_sl(self.axis, 0, stop - w.start, known.ndim)] = gk
        if not known.any():
            return None
        return (vals if self.given.keep_unknown else vals * known), known

    def _given_wrapped(self, w: Window):
        n = self.given.values.shape[self.axis]
        if n != self.plan.length:
            raise ValueError("given content on a loop must cover the whole canvas")
        pos = torch.arange(w.start, w.stop, device=self.given.values.device) % n
        vals = self.given.values.index_select(self.given.values.ndim + self.axis, pos).to(self.dtype)
        known = self.given.known.expand_as(self.given.values).index_select(
            self.given.values.ndim + self.axis, pos).to(self.dtype)
        if not known.any():
            return None
        return (vals if self.given.keep_unknown else vals * known).to(self.device), known.to(self.device)

    def _carry(self, part, src: int, p_from, p_to, signal: float):
        """An overlap ``part`` (long axis n) at positions [src, src + n) of a window with transform
        parameters ``p_from`` -> the next window's coordinates (``p_to``), where it sits at [0, n)."""
        if self.wt is None:
            return part
        n = part.shape[self.axis]
        full = torch.zeros(self.shape, dtype=part.dtype, device=part.device)
        full[_sl(self.axis, src, src + n, full.ndim)] = part
        g = self._slice(self.wt.from_window(full, p_from, signal), src, src + n)
        full = torch.zeros_like(full)
        full[_sl(self.axis, 0, n, full.ndim)] = g
        return self._slice(self.wt.to_window(full, p_to, signal), 0, n)

    def _conds(self, windows):
        if self.window_cond is None:
            return self.cond, self.uncond
        pairs = [self.window_cond(w) for w in windows]
        n = [1] * len(pairs)
        return cat_cond([p[0] for p in pairs], n), cat_cond([p[1] for p in pairs], n)

    # ------------------------------------------------------------------ main loop
    def __iter__(self) -> Iterator[Chunk]:
        plan = self.plan
        while self.next_window < len(plan):
            k0 = self.next_window
            group = plan.windows[k0:k0 + self.G]
            y = self._sample_group(group, k0)
            for b, w in enumerate(group):
                self.canvas.add(w.start, y[b])
            k1 = k0 + len(group)
            self.next_window = k1
            upto = plan.finished_upto(k1 - 1)
            start = max(self.canvas.done, self.canvas.hold)
            chunk = self.canvas.finish(upto)
            if chunk is not None:
                yield Chunk(start, upto, chunk, k1)
        if plan.loop and not self.canvas.head_done:  # the positions the last window wrapped onto
            yield Chunk(0, plan.hold, self.canvas.finish_head(), len(plan))

    @torch.no_grad()
    def _sample_group(self, group: list[Window], k0: int) -> torch.Tensor:
        cfg, sch, ax = self.cfg, self.sch, self.axis
        G, N = len(group), len(sch)
        cond, uncond = self._conds(group)
        ev = Evaluator(self.den, cond=cond, uncond=uncond, guidance_scale=cfg.guidance_scale)
        cond_ev = Evaluator(self.den, cond=cond, uncond=uncond)  # inversions: condition only
        gen = _gen(cfg.seed, k0, 0)
        plain = cfg.method in ("ddim", "ddpm")

        # masks: overlap with earlier windows and given content are observed (M = 0)
        mask = torch.ones((G, *self.shape), dtype=self.dtype, device=self.device)
        given_x0 = torch.zeros_like(mask)
        given_known = torch.zeros_like(mask)
        for b, w in enumerate(group):
            mask[b][_sl(ax, 0, w.new_from, len(self.shape))] = 0
            mask[b][_sl(ax, w.new_to, w.size, len(self.shape))] = 0  # loops: the first window's start
            gw = self._given_window(w)
            if gw is not None:
                given_x0[b], given_known[b] = gw
        if cfg.soft_overlap > 0:   # the overlap's last positions observed ever less, up to its end
            for b, w in enumerate(group):
                r = min(cfg.soft_overlap, w.new_from)
                if r > 0:
                    ramp = torch.arange(1, r + 1, dtype=self.dtype, device=self.device) / (r + 1)
                    shape = [1] * len(self.shape)
                    shape[ax] = r
                    mask[b][_sl(ax, w.new_from - r, w.new_from, len(self.shape))] = ramp.reshape(shape)
        mask = mask * (1 - given_known)
        params = [None] * G
        if self.wt is not None:  # each window's own coordinates, fitted to what is known of it
            for b, w in enumerate(group):
                ctx_x, ctx_k = given_x0[b].clone(), given_known[b].clone()
                if b == 0 and k0 > 0 and w.new_from > 0:
                    d = w.start - self.plan.windows[k0 - 1].start
                    if hasattr(self.wt, "realign"):  # move the finished neighbour onto the given content
                        self.prev_params = self.wt.realign(self.prev_final, self.prev_params, d,
                                                           w.new_from, ctx_x, ctx_k)
                    prev_g = self._slice(self.wt.from_window(self.prev_final, self.prev_params),
                                         d, d + w.new_from)
                    ov = _sl(ax, 0, w.new_from, len(self.shape))
                    ctx_x[ov] = torch.where(ctx_k[ov].bool(), ctx_x[ov], prev_g)
                    ctx_k[ov] = 1
                params[b] = self.wt.fit(w, ctx_x, ctx_k)
                gx = self.wt.to_window(given_x0[b], params[b])
                given_x0[b] = gx if getattr(self.given, "keep_unknown", False) else gx * given_known[b]
        if plain:
            mask = torch.ones_like(mask)
        act = observed_windows(mask)

        # given content's X_t per step
        has_given = given_known.flatten(1).any(1)
        given_traj = None
        given_xt = getattr(self.given, "xt", None)
        if has_given.any() and not plain and cfg.given_path == "invert" and given_xt is None:
            idx = has_given.nonzero().squeeze(1)
            inv = ddim_invert(cond_ev, sch, given_x0[idx])  # masked source, as released
            given_traj = (idx, inv)
        given_gen = _gen(cfg.seed, k0, 1)

        # ``matched``: the window's own noise estimate, from its last guided evaluation (the
        # initial latent at step 0, set below)
        eps_hat: list[torch.Tensor | None] = [None]

        def matched(i, x0, b, a, z):
            """X_t at step i of finished content x0 sitting at [a, z) of window b."""
            ab = sch.abar[i].to(x0.dtype)
            return ab.sqrt() * x0 + (1 - ab).sqrt() * self._slice(eps_hat[0][b], a, z)

        # the first window's overlap with the previous group
        w0 = group[0]
        prev_src = None
        if k0 > 0 and w0.new_from > 0 and not plain:
            prev_w = self.plan.windows[k0 - 1]
            d = w0.start - prev_w.start
            if cfg.observed == "trajectory":
                prev_src = self.prev_traj  # stored overlap columns, one per step
            elif cfg.observed == "invert":
                inv = ddim_invert(cond_ev, sch, self.prev_final[None])
                prev_src = [self._slice(x[0], d, d + w0.new_from) for x in inv]
            elif cfg.observed == "matched":  # X_0 in this window's coordinates; its noise is the window's
                prev_x0 = self._carry(self._slice(self.prev_final, d, d + w0.new_from), d,
                                      self.prev_params, params[0], 1.0)
                prev_src = lambda i: matched(i, prev_x0, 0, 0, w0.new_from)  # noqa: E731
            else:
                prev_x0 = self._slice(self.prev_final, d, d + w0.new_from)
                prev_gen = _gen(cfg.seed, k0, 2)
                prev_src = lambda i: q_sample(sch, i, prev_x0, torch.randn(
                    prev_x0.shape, generator=prev_gen, dtype=self.dtype).to(self.device))
            if prev_src is None:
                raise RuntimeError("internal: no source for the group's first window")

        # loops: the last window's right end observes the first window's start
        wrap_b = next((b for b, w in enumerate(group) if w.wrap), None)
        wrap_src = None
        if wrap_b is not None and not plain:
            n_wrap = group[wrap_b].wrap
            if k0 == 0:
                wrap_src = "live"  # the first window is in this group
            elif cfg.observed == "trajectory":
                wrap_src = self.first_traj
            elif cfg.observed == "invert":
                inv = ddim_invert(cond_ev, sch, self.first_final[None])
                wrap_src = [self._slice(x[0], 0, n_wrap) for x in inv]
            elif cfg.observed == "matched":
                first_x0 = self._slice(self.first_final, 0, n_wrap)
                w_b = group[wrap_b]
                wrap_src = lambda i: matched(i, first_x0, wrap_b, w_b.new_to, w_b.size)  # noqa: E731
            else:
                first_x0 = self._slice(self.first_final, 0, n_wrap)
                first_gen = _gen(cfg.seed, k0, 3)
                wrap_src = lambda i: q_sample(sch, i, first_x0, torch.randn(  # noqa: E731
                    first_x0.shape, generator=first_gen, dtype=self.dtype).to(self.device))
            if wrap_src is None:
                raise RuntimeError("internal: no source for the loop's closing window")

        def overlap_from_prev(i):
            x = prev_src(i) if callable(prev_src) else prev_src[i]
            if self.wt is None or cfg.observed == "matched":
                return x
            d = w0.start - self.plan.windows[k0 - 1].start
            return self._carry(x, d, self.prev_params, params[0], float(sch.abar[i].sqrt()))

        def x_of(b: int, i: int, y_now: torch.Tensor, prev_i) -> torch.Tensor:
            """X_t of window b at step i given the group's current latents."""
            w = group[b]
            x = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
            if w.new_from > 0:
                if b > 0:
                    d = w.start - group[b - 1].start
                    x[_sl(ax, 0, w.new_from, x.ndim)] = self._carry(
                        self._slice(y_now[b - 1], d, d + w.new_from), d, params[b - 1], params[b],
                        float(sch.abar[i].sqrt()))
                elif prev_i is not None:
                    x[_sl(ax, 0, w.new_from, x.ndim)] = prev_i
            if w.wrap and wrap_src is not None:
                if isinstance(wrap_src, str):  # "live"
                    part = self._slice(y_now[0], 0, w.wrap)
                else:
                    part = wrap_src(i) if callable(wrap_src) else wrap_src[i]
                x[_sl(ax, w.new_to, w.size, x.ndim)] = part
            if has_given[b]:
                if given_xt is not None:
                    gx = given_xt(i, w).to(device=self.device, dtype=self.dtype)
                elif given_traj is not None:
                    gx = given_traj[1][i][(given_traj[0] == b).nonzero()[0, 0]]
                elif cfg.given_path == "matched":   # the given content with the window's own noise
                    gx = matched(i, given_x0[b], b, 0, self.shape[ax])
                else:
                    gx = q_sample(sch, i, given_x0[b], torch.randn(
                        self.shape, generator=given_gen, dtype=self.dtype).to(self.device))
                x = torch.where(given_known[b].bool(), gx, x)
            return x

        if cfg.impute != "none" and not plain:   # x0 of the base step moved onto what is observed
            obs_x0, obs_known = given_x0.clone(), given_known.clone()
            w0 = group[0]
            if k0 > 0 and w0.new_from > 0:   # the finished overlap, as knots every impute_stride
                d = w0.start - self.plan.windows[k0 - 1].start
                ov = _sl(ax, 0, w0.new_from, len(self.shape))
                prev_x0 = self._carry(self._slice(self.prev_final, d, d + w0.new_from), d,
                                      self.prev_params, params[0], 1.0)
                obs_x0[0][ov] = torch.where(obs_known[0][ov].bool(), obs_x0[0][ov], prev_x0)
                # back from where the overlap is still fully observed (before the soft ramp); its
                # position-to-position differences from x0_hat are noise the spline would carry on
                last = w0.new_from - 1 - min(cfg.soft_overlap, w0.new_from)
                for p in range(last, -1, -max(1, cfg.impute_stride)):
                    obs_known[0][_sl(ax, p, p + 1, len(self.shape))] = 1
            if obs_known.any():
                ev = ImputingEvaluator(ev, sch, KnownImputer(obs_x0, obs_known, ax))

        # initial latents from the position-keyed noise field
        y = sch.initial_state(torch.stack([self._initial_noise(w) for w in group]))
        eps_hat[0] = y  # step 0: the initial latent is the noise
        last = group[-1]
        nxt = self.plan.windows[k0 + G] if k0 + G < len(self.plan) else None
        keep_traj = cfg.observed == "trajectory" and nxt is not None and not plain
        traj = []
        # loops: the first window's columns that the last window (in a later group) will observe
        keep_first = (self.plan.loop and k0 == 0 and k0 + G < len(self.plan) and not plain
                      and cfg.observed == "trajectory")
        first_traj, n_hold = [], self.plan.hold
        steps = range(N)
        if self.progress is not None:
            steps = self.progress(steps, desc=f"windows {k0}-{k0 + G - 1}", leave=False)
        step = STEPS[cfg.method]
        for i in steps:
            if self.on_step is not None:
                self.on_step(group, i, y)
            if keep_traj:
                d = nxt.start - last.start
                traj.append(self._slice(y[-1], d, d + nxt.new_from).clone())
            if keep_first:
                first_traj.append(self._slice(y[0], 0, n_hold).clone())
            if self.on_strip is not None and keep_traj:
                self.on_strip(i, traj[-1], first_traj[-1] if keep_first else None)
            prev_i = overlap_from_prev(i) if prev_src is not None else None
            if isinstance(ev, ImputingEvaluator):
                ev.i = i
            if plain:
                y = step(ev, sch, i, y, y, mask, act, cfg.w1, cfg.w2, gen)
            elif cfg.live == "chained":
                y = alm_chained_step(ev, sch, i, y, lambda b, yn: x_of(b, i, yn, prev_i), mask, act,
                                     cfg.w1, cfg.w2, gen)
            else:
                x_t = torch.stack([x_of(b, i, y, prev_i) for b in range(G)])
                y = step(ev, sch, i, y, x_t, mask, act, cfg.w1, cfg.w2, gen)
            if "matched" in (cfg.observed, cfg.given_path) and ev.last_guided is not None:
                xg, og = ev.last_guided   # this step's guided evaluation: the noise it predicted
                eps_hat[0] = to_eps(og, xg, sch.abar[i].to(xg.dtype), self.den.prediction_type)
                ev.last_guided = None
        if self.before_finish is not None:
            self.before_finish()
        if cfg.method == "replace":  # the observed region is X_0 exactly: neighbours' finals, given
            x0 = torch.zeros_like(y)
            for b, w in enumerate(group):
                if w.new_from == 0:
                    continue
                src = y[b - 1] if b > 0 else self.prev_final
                d = w.start - (group[b - 1].start if b > 0 else self.plan.windows[k0 - 1].start)
                x0[b][_sl(ax, 0, w.new_from, x0.ndim - 1)] = self._carry(
                    self._slice(src, d, d + w.new_from), d,
                    params[b - 1] if b > 0 else self.prev_params, params[b], 1.0)
            for b, w in enumerate(group):  # loops: the first window's start, finished
                if w.wrap:
                    first = y[0] if k0 == 0 else self.first_final
                    x0[b][_sl(ax, w.new_to, w.size, x0.ndim - 1)] = self._slice(first, 0, w.wrap)
            x0 = torch.where(given_known.bool(), given_x0, x0)
            y = torch.where(mask.bool(), y, x0)
        if cfg.paste_given and has_given.any():
            y = torch.where(given_known.bool(), given_x0, y)
        self.forwards += ev.calls + cond_ev.calls
        self.prev_final = y[-1].clone()   # in its own window's coordinates
        self.prev_traj = traj if keep_traj else None
        if self.plan.loop and k0 == 0:
            self.first_final = y[0].clone()
            self.first_traj = first_traj if keep_first else None
        elif wrap_b is not None:  # the loop is closed: nothing later needs the first window
            self.first_final = self.first_traj = None
        if self.wt is not None:
            self.prev_params = params[-1]
            y = torch.stack([self.wt.from_window(y[b], params[b]) for b in range(G)])
        return y
