"""Sampling schedules read from a diffusers scheduler config, and the two base steps.

A checkpoint's own ``scheduler_config.json`` drives everything: timestep spacing, ``steps_offset``,
``set_alpha_to_one``, the betas (linear, scaled-linear, cosine ``squaredcos_cap_v2``), clipping and
the DDPM variance type. We let diffusers compute the timesteps and alphas_cumprod on a private copy
(``from_config``), so the caller's scheduler is never touched, and keep every value the steps need
in a plain :class:`Schedule`: the samplers hold no hidden state.

Previous-timestep rules, as diffusers applies them (scheduling_ddim.py / scheduling_ddpm.py):
DDIM steps to ``t - num_train // num_inference`` and uses ``final_alpha_cumprod`` below 0; DDPM
steps to the next timestep in its list and uses 1 below 0.

Flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``; UniPC / DPM-Solver configs with
``use_flow_sigmas``) give a grid of flow levels t (``sigmas``, 1 -> 0). A flow schedule keeps them
(its time input is the level itself, a float) and the equivalent VP levels
``abar = (1 - t)^2 / ((1 - t)^2 + t^2)``; its base step is ``"euler"``, which in the VP view the
engine works in is the deterministic DDIM step (:class:`longgen.denoiser.FlowDenoiser` has the
derivation). We take the scheduler's own sigmas, shifted as its config says (static ``shift``,
or dynamic shifting with ``mu``; :func:`flow_mu` computes the pipelines' ``mu`` from a window's
token count), and step them with Euler whatever solver the config names: UniPC's flow grid is not
FlowMatchEuler's (``../shared/facts/flow-models.md``), so it is the checkpoint's grid, Euler-stepped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoiser import check_prediction_type, flow_abar, flow_scale, to_eps, to_x0

BASE_KINDS = ("ddim", "ddpm", "euler")
OWN_ALPHAS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")   # stepped as DDIM on their own alphas
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass
class Schedule:
    kind: str                      # "ddim", "ddpm" or "euler" (flow): which base step
    timesteps: list                # the model's time input per step, noisiest first: training
                                   # timesteps (int) for VP schedules, flow levels t (float)
    prev_timesteps: list           # the step each one goes to (VP: < 0 is the end; flow: level)
    abar: torch.Tensor             # (N,) float64, alphas_cumprod at t (flow: its VP level)
    abar_prev: torch.Tensor        # (N,) float64, at prev (final alpha / 1 below 0)
    alphas_cumprod: torch.Tensor | None  # (num_train,) float64; None for flow schedules
    num_train_timesteps: int
    prediction_type: str
    clip_sample: float | None      # clip range for predicted x0, None = off
    variance_type: str = "fixed_small"
    sigmas: torch.Tensor | None = None           # flow: (N + 1,) float64 levels t, final included
    model_timesteps: list | None = None          # flow: the scheduler's own timesteps (1000 t)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def flow(self) -> bool:
        return self.sigmas is not None

    def initial_state(self, noise: torch.Tensor) -> torch.Tensor:
        """Y_T in the VP view from the pipeline's initial latents: ``noise`` itself for VP
        schedules, ``noise / s(t_0)`` for flow ones (a flow pipeline starts from ``x = noise`` at
        its first level, which is 1 for FlowMatchEuler and 0.99999 for UniPC's flow grid)."""
        if not self.flow:
            return noise
        return noise / float(flow_scale(self.sigmas[0]))

    def sigma(self, i: int) -> float:
        """DDPM posterior std at step i (eta = 1), ALM's decay of w1, w2 (paper Eq. 10). A flow
        schedule has it from the VP view of its levels (abar = (1 - t)^2 / ((1 - t)^2 + t^2)),
        the same quantity for the same noise levels, so ALM on a flow model is ALM on its VP twin."""
        a_t, a_s = self.abar[i], self.abar_prev[i]
        return float(((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt())

    def inversion_abar_from(self, i: int) -> float:
        """alphas_cumprod of the level that DDIM inversion steps up from to reach timestep i.

        As the released inversion: ``abar[max(0, t - num_train // N)]`` (clean input taken at t=0).
        A flow schedule steps up from the next lower level of its grid (t = 0 is the clean input).
        """
        if self.flow:
            return float(self.abar_prev[i])
        ratio = self.num_train_timesteps // len(self.timesteps)
        return float(self.alphas_cumprod[max(0, self.timesteps[i] - ratio)])


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def is_flow_scheduler(scheduler) -> bool:
    """A flow-matching scheduler: FlowMatchEuler, or a solver config with ``use_flow_sigmas``."""
    if getattr(scheduler, "flow", None) is True:   # a Schedule, or a backend's schedule policy
        return True
    config = scheduler.config
    return (type(scheduler).__name__ in FLOW_SCHEDULERS or bool(getattr(config, "use_flow_sigmas", False))
            or getattr(config, "prediction_type", None) == "flow_prediction")


def scheduler_prediction_type(scheduler, default: str | None = None) -> str | None:
    """What a scheduler's model predicts, in longgen's names (flow schedulers: ``"flow"``)."""
    if isinstance(scheduler, Schedule):
        return scheduler.prediction_type
    if is_flow_scheduler(scheduler):
        return "flow"
    return getattr(scheduler.config, "prediction_type", default)


def flow_mu(config, image_seq_len: int) -> float:
    """The dynamic-shifting ``mu`` that the Flux / LTX pipelines compute for ``image_seq_len``
    tokens: linear from (base_image_seq_len, base_shift) to (max_image_seq_len, max_shift) of the
    scheduler config (``calculate_shift`` in diffusers' pipeline_flux.py; defaults 256, 0.5, 4096,
    1.15 as there). A window has a fixed size, so a run has one ``mu``."""
    get = (lambda k, d: config.get(k, d)) if isinstance(config, dict) else (lambda k, d: getattr(config, k, d))
    x0, y0 = get("base_image_seq_len", 256), get("base_shift", 0.5)
    x1, y1 = get("max_image_seq_len", 4096), get("max_shift", 1.15)
    m = (y1 - y0) / (x1 - x0)
    return image_seq_len * m + (y0 - m * x0)


def _flow_schedule(scheduler, num_inference_steps: int, kind: str | None, mu, sigmas) -> Schedule:
    if kind not in (None, "ddim", "euler"):
        raise ValueError(f"{type(scheduler).__name__} is a flow-matching scheduler: its base step is "
                         f"Euler (method 'ddim'); {kind!r} needs a DDPM/DDIM scheduler")
    config = scheduler.config
    for flag in ("stochastic_sampling", "invert_sigmas"):
        if getattr(config, flag, False):
            raise ValueError(f"scheduler config has {flag}=True, which longgen does not implement; "
                             f"allowed: {flag}=False")
    private = type(scheduler).from_config(config)
    dynamic = bool(getattr(config, "use_dynamic_shifting", False))
    if dynamic and mu is None:
        raise ValueError(f"{type(scheduler).__name__} has use_dynamic_shifting=True and needs mu "
                         "(longgen.schedule.flow_mu(config, tokens per window) gives the pipelines' value)")
    kwargs = {}
    if sigmas is not None:
        kwargs["sigmas"] = [float(v) for v in sigmas]
    if mu is not None:
        if not dynamic:
            raise ValueError(f"mu={mu} is given but the scheduler config has use_dynamic_shifting=False")
        kwargs["mu"] = float(mu)
    if sigmas is not None:
        if len(kwargs["sigmas"]) != num_inference_steps:
            raise ValueError(f"sigmas has {len(kwargs['sigmas'])} levels; num_inference_steps="
                             f"{num_inference_steps} needs one per step")
        private.set_timesteps(**kwargs)
    else:
        private.set_timesteps(num_inference_steps, **kwargs)
    levels = torch.as_tensor(private.sigmas).double().flatten()
    model_t = [float(t) for t in private.timesteps]
    n = len(model_t)
    if levels.numel() != n + 1 or not bool((levels[:-1] > levels[1:]).all()):
        raise ValueError(f"{type(scheduler).__name__} gave {levels.numel()} levels for {n} steps "
                         "(need a decreasing grid with its final level)")
    if float(levels[0]) > 1 or float(levels[-1]) != 0:
        raise ValueError(f"flow levels must run from at most 1 down to 0, got {float(levels[0])} .. "
                         f"{float(levels[-1])} (a solver config needs final_sigmas_type='zero')")
    t = [float(v) for v in levels]
    abar = flow_abar(levels)
    return Schedule(kind="euler", timesteps=t[:-1], prev_timesteps=t[1:], abar=abar[:-1],
                    abar_prev=abar[1:], alphas_cumprod=None,
                    num_train_timesteps=int(getattr(config, "num_train_timesteps", 1000)),
                    prediction_type="flow", clip_sample=None, sigmas=levels, model_timesteps=model_t)


def make_schedule(scheduler, num_inference_steps: int, kind: str | None = None, *,
                  mu: float | None = None, sigmas=None) -> Schedule:
    """Build a :class:`Schedule` from a diffusers scheduler instance without changing it.

    ``kind`` forces the base step; by default a ``DDPMScheduler`` gives DDPM steps and any other
    VP scheduler DDIM steps; flow-matching schedulers step with Euler (``kind`` None, "ddim" or
    "euler"). ``mu`` (dynamic shifting) and ``sigmas`` (a custom grid, as the Flux pipeline
    passes) are for flow schedulers and go to their ``set_timesteps``. A :class:`Schedule` passes
    through unchanged when its length is ``num_inference_steps``; an object with a
    ``longgen_schedule(steps, kind)`` method (a backend's schedule policy, e.g. FLUX's sigmas and
    ``mu`` for its window size) builds its own.
    """
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if isinstance(scheduler, Schedule):
        if len(scheduler) != num_inference_steps:
            raise ValueError(f"the schedule has {len(scheduler)} steps; num_inference_steps="
                             f"{num_inference_steps}")
        if kind == "ddpm" and scheduler.kind != "ddpm" or kind == "ddim" and scheduler.kind == "ddpm":
            raise ValueError(f"method {kind!r} cannot run on a {scheduler.kind!r} schedule")
        return scheduler
    if hasattr(scheduler, "longgen_schedule"):
        return scheduler.longgen_schedule(num_inference_steps, kind)
    if is_flow_scheduler(scheduler):
        return _flow_schedule(scheduler, num_inference_steps, kind, mu, sigmas)
    if mu is not None or sigmas is not None:
        raise ValueError(f"mu and sigmas are for flow-matching schedulers; {type(scheduler).__name__} "
                         "is not one")
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind is None:
        kind = "ddpm" if isinstance(scheduler, DDPMScheduler) else "ddim"
    if kind == "euler":
        raise ValueError(f"the Euler step is for flow-matching schedulers; {type(scheduler).__name__} "
                         "steps with 'ddim' or 'ddpm'")
    if kind not in BASE_KINDS:
        raise ValueError(f"unknown base step {kind!r}; allowed: {', '.join(BASE_KINDS)}")
    config = scheduler.config
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    if type(scheduler).__name__ in OWN_ALPHAS:
        # CogVideoX's schedulers shift the SNR (snr_shift_scale) before the zero-terminal rescale:
        # their alphas_cumprod is not DDIMScheduler's from the same config, so read their own
        if kind == "ddpm":
            raise ValueError(f"{type(scheduler).__name__} steps with 'ddim'; 'ddpm' needs a DDPM scheduler")
        from diffusers import CogVideoXDDIMScheduler

        cls = CogVideoXDDIMScheduler
    if getattr(config, "thresholding", False):
        raise ValueError("scheduler config has thresholding=True, which longgen does not implement; "
                         "allowed: thresholding=False (clip_sample is supported)")
    private = cls.from_config(config)
    if num_inference_steps > private.config.num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the scheduler's "
                         f"num_train_timesteps={private.config.num_train_timesteps}")
    private.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in private.timesteps]
    acp = private.alphas_cumprod  # float32 as diffusers keeps it; same values as its step uses
    n_train = private.config.num_train_timesteps
    if kind == "ddim":
        ratio = n_train // num_inference_steps
        prev = [t - ratio for t in timesteps]
        final = private.final_alpha_cumprod
        variance_type = "fixed_small"
    else:
        prev = timesteps[1:] + [-1]
        final = torch.tensor(1.0)
        variance_type = private.config.variance_type
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"DDPM variance_type {variance_type!r} is not supported; allowed: "
                             f"{', '.join(VARIANCE_TYPES)}")
    abar = torch.stack([acp[t] for t in timesteps]).double()
    abar_prev = torch.stack([acp[p] if p >= 0 else final for p in prev]).double()
    clip = float(private.config.clip_sample_range) if private.config.clip_sample else None
    if type(scheduler).__name__ in OWN_ALPHAS:
        clip = None   # their step never clips x0, whatever clip_sample says
    return Schedule(kind=kind, timesteps=timesteps, prev_timesteps=prev, abar=abar,
                    abar_prev=abar_prev, alphas_cumprod=acp.double(), num_train_timesteps=n_train,
                    prediction_type=check_prediction_type(private.config.prediction_type),
                    clip_sample=clip, variance_type=variance_type)


class WindowScheduling:
    """A pipeline's schedule for windows of ``tokens`` transformer tokens, read by
    :func:`longgen.schedule.make_schedule` (the checkpoint's scheduler is never changed): the
    scheduler's own grid, or with ``linear_sigmas`` the sigmas ``linspace(1, 1/N, N)`` that the
    FLUX pipeline passes; with dynamic shifting, ``mu`` from the token count (a window has a
    fixed size, so one ``mu`` per run)."""

    flow = True
    linear_sigmas = False

    def __init__(self, scheduler, tokens: int):
        self.scheduler, self.tokens = scheduler, int(tokens)
        self.config = scheduler.config

    def longgen_schedule(self, steps: int, kind: str | None = None):
        import numpy as np

        mu = flow_mu(self.config, self.tokens) if getattr(self.config, "use_dynamic_shifting", False) else None
        sigmas = np.linspace(1.0, 1.0 / steps, steps) if self.linear_sigmas else None
        return make_schedule(self.scheduler, steps, kind, mu=mu, sigmas=sigmas)


def base_step(schedule: Schedule, i: int, x: torch.Tensor, output: torch.Tensor,
              prediction_type: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM (eta = 0, DDIM Eq. 12) or DDPM (Ho et al. Eq. 7) step from model ``output`` at x.

    ``"euler"`` (flow schedules) is the DDIM step on the VP view of the flow levels, which is
    the flow Euler step ``x + (t' - t) v`` (see :class:`longgen.denoiser.FlowDenoiser`).

    x0 is clipped when the config asks; epsilon comes from the unclipped output, as diffusers does
    with ``use_clipped_model_output=False``. DDPM draws its noise with ``torch.randn`` on
    ``generator`` in the same order and shape as ``DDPMScheduler.step``.
    """
    a_t = schedule.abar[i].to(x.dtype)
    a_s = schedule.abar_prev[i].to(x.dtype)
    x0 = to_x0(output, x, a_t, prediction_type)
    if schedule.clip_sample is not None:
        x0 = x0.clamp(-schedule.clip_sample, schedule.clip_sample)
    if schedule.kind in ("ddim", "euler"):
        eps = to_eps(output, x, a_t, prediction_type)
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    alpha_t = a_t / a_s
    beta_t = 1 - alpha_t
    mean = (a_s.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_s) / (1 - a_t)) * x
    if schedule.timesteps[i] > 0:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        var = ((1 - a_s) / (1 - a_t) * beta_t).clamp(min=1e-20)
        # fixed_small and fixed_small_log both scale the noise by sqrt(var) in diffusers
        std = beta_t.sqrt() if schedule.variance_type == "fixed_large" else var.sqrt()
        mean = mean + std * noise
    return mean


def q_sample(schedule: Schedule, i: int, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising q(x_t | x_0) to sampling step i's timestep (the VP state; for a flow
    schedule ``s(t)`` times it is ``(1 - t) x0 + t noise``)."""
    a = schedule.abar[i].to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
