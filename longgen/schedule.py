"""Sampling schedules read from a diffusers scheduler config, and the two base steps.

A checkpoint's own ``scheduler_config.json`` drives everything: timestep spacing, ``steps_offset``,
``set_alpha_to_one``, the betas (linear, scaled-linear, cosine ``squaredcos_cap_v2``), clipping and
the DDPM variance type. We let diffusers compute the timesteps and alphas_cumprod on a private copy
(``from_config``), so the caller's scheduler is never touched, and keep every value the steps need
in a plain :class:`Schedule`: the samplers hold no hidden state.

Previous-timestep rules, as diffusers applies them (scheduling_ddim.py / scheduling_ddpm.py):
DDIM steps to ``t - num_train // num_inference`` and uses ``final_alpha_cumprod`` below 0; DDPM
steps to the next timestep in its list and uses 1 below 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoiser import check_prediction_type, to_eps, to_x0

BASE_KINDS = ("ddim", "ddpm")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass
class Schedule:
    kind: str                      # "ddim" or "ddpm": which base step
    timesteps: list[int]           # sampling order, noisiest first
    prev_timesteps: list[int]      # the step each one goes to (< 0: the end)
    abar: torch.Tensor             # (N,) float64, alphas_cumprod at t
    abar_prev: torch.Tensor        # (N,) float64, at prev (final alpha / 1 below 0)
    alphas_cumprod: torch.Tensor   # (num_train,) float64
    num_train_timesteps: int
    prediction_type: str
    clip_sample: float | None      # clip range for predicted x0, None = off
    variance_type: str = "fixed_small"

    def __len__(self) -> int:
        return len(self.timesteps)

    def sigma(self, i: int) -> float:
        """DDPM posterior std at step i (eta = 1), ALM's decay of w1, w2 (paper Eq. 10)."""
        a_t, a_s = self.abar[i], self.abar_prev[i]
        return float(((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt())

    def inversion_abar_from(self, i: int) -> float:
        """alphas_cumprod of the level that DDIM inversion steps up from to reach timestep i.

        As the released inversion: ``abar[max(0, t - num_train // N)]`` (clean input taken at t=0).
        """
        ratio = self.num_train_timesteps // len(self.timesteps)
        return float(self.alphas_cumprod[max(0, self.timesteps[i] - ratio)])


def make_schedule(scheduler, num_inference_steps: int, kind: str | None = None) -> Schedule:
    """Build a :class:`Schedule` from a diffusers scheduler instance without changing it.

    ``kind`` forces the base step; by default a ``DDPMScheduler`` gives DDPM steps and any other
    scheduler DDIM steps.
    """
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind is None:
        kind = "ddpm" if isinstance(scheduler, DDPMScheduler) else "ddim"
    if kind not in BASE_KINDS:
        raise ValueError(f"unknown base step {kind!r}; allowed: {', '.join(BASE_KINDS)}")
    config = scheduler.config
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
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
    return Schedule(kind=kind, timesteps=timesteps, prev_timesteps=prev, abar=abar,
                    abar_prev=abar_prev, alphas_cumprod=acp.double(), num_train_timesteps=n_train,
                    prediction_type=check_prediction_type(private.config.prediction_type),
                    clip_sample=clip, variance_type=variance_type)


def base_step(schedule: Schedule, i: int, x: torch.Tensor, output: torch.Tensor,
              prediction_type: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM (eta = 0, DDIM Eq. 12) or DDPM (Ho et al. Eq. 7) step from model ``output`` at x.

    x0 is clipped when the config asks; epsilon comes from the unclipped output, as diffusers does
    with ``use_clipped_model_output=False``. DDPM draws its noise with ``torch.randn`` on
    ``generator`` in the same order and shape as ``DDPMScheduler.step``.
    """
    a_t = schedule.abar[i].to(x.dtype)
    a_s = schedule.abar_prev[i].to(x.dtype)
    x0 = to_x0(output, x, a_t, prediction_type)
    if schedule.clip_sample is not None:
        x0 = x0.clamp(-schedule.clip_sample, schedule.clip_sample)
    if schedule.kind == "ddim":
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
    """Forward noising q(x_t | x_0) to sampling step i's timestep."""
    a = schedule.abar[i].to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
