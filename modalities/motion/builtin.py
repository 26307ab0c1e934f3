"""The builtin motion prior: a Gaussian mixture over (263 features x frames) of absolute-root
HumanML3D features, fitted to procedural walks (:mod:`.procedural`), normalised per feature group
as CondMDI's abs_3d statistics are. The time axis is fitted stationary (Toeplitz), so a window
looks alike wherever it sits on a long motion. Deterministic: same arguments, same prior.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from longgen.builtin import fit_separable_gmm
from longgen.priors import SeparableGMM

from .features import Normalizer, joints_to_features, to_abs_root
from .procedural import generate_motions


def motion_features(joints: np.ndarray) -> np.ndarray:
    """(T+1, 22, 3) joints -> (T, 263) absolute-root features."""
    return np.asarray(to_abs_root(joints_to_features(joints)))


@lru_cache(maxsize=4)
def builtin_motion_prior(length: int = 196, n: int = 160, k: int = 4, seed: int = 0) -> tuple[SeparableGMM, Normalizer]:
    """(prior over normalised (263, length) features, the normaliser). Fitting takes a few seconds."""
    joints = generate_motions(n, length + 1, seed=seed)
    feats = np.stack([motion_features(j) for j in joints])            # (n, length, 263)
    norm = Normalizer.fit(feats)
    data = norm.normalize(torch.from_numpy(feats)).transpose(1, 2)   # (n, 263, length)
    prior = fit_separable_gmm(data, k=k, stationary_axes=(1,), seed=seed)
    return prior, norm


def ddpm_scheduler():
    """CondMDI's diffusion: 1000 steps, cosine schedule, x0 prediction, fixed-small variance."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=False, variance_type="fixed_small")
