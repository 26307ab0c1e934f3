"""The builtin motion prior: a Gaussian kernel density over procedural walks (:mod:`.procedural`)
in absolute-root HumanML3D features (263 x frames), normalised per feature group as CondMDI's
abs_3d statistics are. Deterministic: same arguments, same prior.

Why a kernel density. The first version fitted four separable Gaussian components (k-means +
flip-flop). Samples of it skated on almost every frame (skating ratio 0.72-0.76, jitter
~750 m/s^3 against 0 and ~79 for the walks it was fitted to): one covariance shared by every
feature (separable) cannot tie a planted foot to a gliding pelvis, so the feet slide whenever the
mixture mean is a blur of walks at different phases. Here every walk is its own component
(mean = the walk) and all components share one separable covariance, fitted to the whole set,
shrunk by ``bandwidth`` (a variance factor) and smoothed in time (its stationary spectrum damped
above ``cutoff`` cycles per frame). A sample is then a real walk bent smoothly, and the exact
posterior of a keyframed clip is a re-weighting of walks, each bent to meet the keyframes.
Measured (16-32 samples, seed 0): skating 0.72 -> 0.01, jitter 754 -> 142 m/s^3.

The price is conditioning. 128 narrow, well separated modes are hard for inpainting samplers:
with keyframes every 10 frames ALM misses them by ~1-2 m of root position (below SyncSDE, which
is below unconditional sampling), even on a clip that is itself one of the walks (2.1 m; with
every frame observed, 0.05 m), where the broad 4-component prior missed by ~0.8 m. Wider settings trade one for the
other (bandwidth 0.1-0.4: keyframe error ~1.0-1.2 m, prior skating 0.07-0.24; widening only the
root features x5-x10 in std: ~0.8-0.9 m, skating 0.22-0.52); see benchmarks/motion_inbetween.py.

Sharing the covariance makes the exact epsilon cheap: all components share one eigenbasis, so
one rotation of ``x`` serves every component (:class:`longgen.priors.SharedBasisGMM`), and K = 128 costs about
what four separate components cost.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from longgen.builtin import fit_separable_gmm
from longgen.priors import SharedBasisGMM

from .features import Normalizer, joints_to_features, to_abs_root
from .procedural import generate_motions


def motion_features(joints: np.ndarray) -> np.ndarray:
    """(T+1, 22, 3) joints -> (T, 263) absolute-root features."""
    return np.asarray(to_abs_root(joints_to_features(joints)))


def smooth_stationary(cov: torch.Tensor, cutoff: float, jitter: float = 1e-4) -> torch.Tensor:
    """A Toeplitz covariance (n, n) with its spectrum damped by exp(-f^2 / (2 cutoff^2)), f in
    cycles per position: the covariance of the process low-passed by a Gaussian filter."""
    n = cov.shape[0]
    row = torch.stack([torch.diagonal(cov, d).mean() for d in range(n)])   # autocovariance
    full = torch.cat([row, row[1:-1].flip(0)])                             # circular, even
    spec = torch.fft.rfft(full).real.clamp_min(0)
    f = torch.fft.rfftfreq(full.numel(), dtype=cov.dtype)
    acf = torch.fft.irfft(spec * torch.exp(-0.5 * (f / cutoff) ** 2), n=full.numel())[:n]
    i = torch.arange(n)
    return acf[(i[:, None] - i[None, :]).abs()] + jitter * acf[0] * torch.eye(n, dtype=cov.dtype)


@lru_cache(maxsize=4)
def builtin_motion_prior(length: int = 196, n: int = 128, bandwidth: float = 0.02,
                         cutoff: float = 0.01, seed: int = 0) -> tuple[SharedBasisGMM, Normalizer]:
    """(prior over normalised (263, length) features, the normaliser). A few seconds to fit.

    ``n`` walks, one component each; ``bandwidth``: the shared covariance (fitted to all walks)
    times this; ``cutoff``: its time spectrum damped above this many cycles per frame (0.01 = 0.2 Hz:
    bends vary over about a second; 0.05 let in-betweened feet skate on ~40% of frames, 0.01 on ~2%).
    """
    joints = generate_motions(n, length + 1, seed=seed)
    feats = np.stack([motion_features(j) for j in joints])            # (n, length, 263)
    norm = Normalizer.fit(feats)
    data = norm.normalize(torch.from_numpy(feats)).transpose(1, 2)   # (n, 263, length)
    whole = fit_separable_gmm(data, k=1, stationary_axes=(1,), seed=seed)
    feat_cov = bandwidth * whole.factors[0][0]
    time_cov = smooth_stationary(whole.factors[1][0], cutoff)
    return SharedBasisGMM(data.double(), [feat_cov, time_cov]), norm


def ddpm_scheduler():
    """CondMDI's diffusion: 1000 steps, cosine schedule, x0 prediction, fixed-small variance."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=False, variance_type="fixed_small")
