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

Why the keyframes are missed (measured on unseen walks, keyframes every 10, 100 steps): the
miss is the root (1.29 of 1.30 m; joints relative to the root: 0.11 m). The prior's EXACT
posterior given those keyframes (closed form: all 263 features observed at the keyframe frames
make the mask separable) meets them exactly but skates on 24-49% of frames (jitter 155-245
m/s^3): an unseen walk's gait and path are not any walk here, and bending the nearest one through
its keyframes slides the feet. ALM stays near one walk instead (skating low, keyframes missed):
it commits to a walk the exact posterior does not favour, and even with only the favoured walk
in the prior it closes about a quarter of the 0.8 m gap (0.59 m; w1 = 3: 0.48 m). More steps
(300), w1 = 3, wider root features (x5, x20 in std), 512 walks, walks shifted in gait phase or
a faster time cutoff (0.02, 0.03) left it at 0.9-2.6 m (2 walks each); most raised skating.
What the engine does about it (``--impute spline``, the motion default, ``longgen.impute``): the
guided clean prediction the base step uses is moved onto the keyframes every step, so the last
step meets them (196 frames: 0.75 m -> 0.0 m), without a forward more.

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


def motion_features(joints: np.ndarray, *, dataset: bool = True) -> np.ndarray:
    """(T+1, 22, 3) joints -> (T, 263) absolute-root features.

    ``dataset=True``: HumanML3D's own features (what CondMDI was trained on). ``dataset=False``:
    the same, but every heading measured from frame 0's own smoothed heading, without the
    dataset's identity rotation on frame 0 (a jump of up to ~20 degrees between rows 0 and 1).
    The builtin prior is fitted, and its keyframes are encoded, with ``dataset=False``: it is our
    own prior, and that jump is an artefact it would have to learn; with it the builtin
    in-betweening missed its keyframes by 2.28 m instead of 1.63 m (test_motion_cli, 3 seeds).
    """
    return np.asarray(to_abs_root(joints_to_features(joints, identity_first_frame=dataset)))


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
    feats = np.stack([motion_features(j, dataset=False) for j in joints])  # (n, length, 263)
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


# --------------------------------------------------------------------------- the backend


class BuiltinMotion:
    """The builtin motion prior as a motion model, behind the contract of
    :func:`longgen.modalities.motion.jobs.motion_job` (shared with :class:`~.jobs.CondMDIMotion`):
    ``denoiser``, ``scheduler``, ``norm`` (features <-> normalised), ``dataset_features`` (the
    feature definition of its keyframes: the prior was fitted to the exact one, not HumanML3D's
    as released), ``conditions(args)`` -> (cond, uncond, guidance), ``run_info(guidance)`` (what
    the run's summary adds), ``engine_dtype``, ``device``. Fitted for windows of ``window``
    frames (a few seconds)."""

    kind = "builtin"
    dataset_features = False
    device = "cpu"

    def __init__(self, window: int, dtype: torch.dtype):
        from longgen.priors import PriorDenoiser

        prior, self.norm = builtin_motion_prior(window)
        self.scheduler = ddpm_scheduler()
        self.denoiser = PriorDenoiser.for_scheduler(prior, self.scheduler)
        self.engine_dtype = dtype

    def conditions(self, args):
        """No text: one unconditional row, guidance 1."""
        return None, None, 1.0

    def run_info(self, guidance: float) -> dict:
        return {}


def load_builtin(model: str = "builtin", *, args) -> BuiltinMotion:
    """The backend's loader: checks ``--dtype`` / ``--device`` (fp32 or fp64 on the CPU)."""
    from ..glue import check_builtin_dtype

    return BuiltinMotion(args.window_frames, check_builtin_dtype(args))
