"""Where X_t comes from: a given trajectory, DDIM inversion of X_0, or fresh forward noise.

The engine adds ``live`` (a neighbour's current latent) and ``trajectory`` (a neighbour's stored
per-step latents) on top of these.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .denoiser import Evaluator, Request, to_eps
from .schedule import Schedule, q_sample


@torch.no_grad()
def ddim_invert(ev: Evaluator, schedule: Schedule, x0: torch.Tensor) -> list[torch.Tensor]:
    """DDIM inversion of ``x0`` (B, ...) with the condition-only prediction, batched over B.

    As the released ALM inpainting: walk the sampling timesteps upwards; to reach timestep t,
    evaluate eps_c at the current latent and t, and move from ``abar[max(0, t - ratio)]`` to
    ``abar[t]`` along the DDIM direction. Returns X_t for every sampling step, in SAMPLING order
    (noisiest first), so ``result[i]`` is X at ``schedule.timesteps[i]``.
    """
    x = x0
    out_levels: list[torch.Tensor] = []
    pt = ev.denoiser.prediction_type
    for i in reversed(range(len(schedule))):
        t = schedule.timesteps[i]
        a_from = torch.tensor(schedule.inversion_abar_from(i), dtype=x.dtype, device=x.device)
        a_to = schedule.abar[i].to(x.dtype)
        (out,) = ev(t, [Request(x)])
        eps = to_eps(out, x, a_to, pt)
        x = (x - (1 - a_from).sqrt() * eps) * (a_to.sqrt() / a_from.sqrt()) + (1 - a_to).sqrt() * eps
        out_levels.append(x)
    return out_levels[::-1]


class SequenceSource:
    """X_t read from a given list, one tensor per sampling step in sampling order."""

    def __init__(self, xs: Sequence[torch.Tensor], steps: int):
        if len(xs) != steps:
            raise ValueError(f"observed_path has {len(xs)} tensors; it needs one per sampling step "
                             f"(num_inference_steps={steps})")
        self.xs = list(xs)

    def __call__(self, i: int, y: torch.Tensor) -> torch.Tensor:
        return self.xs[i].to(y.dtype).expand_as(y)


class NoiseSource:
    """Fresh forward noise every step: X_t ~ q(X_t | X_0), drawn from ``generator``."""

    def __init__(self, schedule: Schedule, x0: torch.Tensor, generator: torch.Generator | None):
        self.schedule, self.x0, self.generator = schedule, x0, generator

    def __call__(self, i: int, y: torch.Tensor) -> torch.Tensor:
        x0 = self.x0.to(y.dtype).expand_as(y)
        noise = torch.randn(y.shape, generator=self.generator, dtype=y.dtype, device=y.device)
        return q_sample(self.schedule, i, x0, noise)
