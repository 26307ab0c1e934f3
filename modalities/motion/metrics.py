"""Motion metrics that need no learned evaluator: foot skating, trajectory and keyframe errors,
jitter.

Definitions follow GMD/CondMDI ``data_loaders/humanml/utils/metrics.py``
(``calculate_skating_ratio``, ``calculate_trajectory_error``, ``calculate_keyframe_error``) and
``sample/gmd/condition.py`` (``compute_kps_error_arbitrary``); jitter is the mean third
difference of positions times fps^3 (as in TransPose), which none of those papers report.
The code is ours. Joints are ``(..., T, 22, 3)``: metres, y up, 20 fps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import uniform_filter1d

SKATE_FEET = (10, 11)  # left foot, right foot
SKATE_HEIGHT = 0.05  # m: a foot below this in two adjacent frames is in contact
SKATE_SPEED = 0.5  # m/s
SKATE_WINDOW = 5  # frames of the uniform filter (mode 'constant': zeros beyond the ends)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _check(joints, name: str) -> np.ndarray:
    arr = _np(joints).astype(np.float64)
    if arr.ndim < 3 or arr.shape[-2:] != (22, 3):
        raise ValueError(f"{name} must have shape (..., T, 22, 3), got {arr.shape}")
    return arr


def foot_skating_ratio(joints, fps: float = 20.0):
    """Fraction of the T-1 frame steps in which a foot skates (``calculate_skating_ratio``).

    A step t -> t+1 skates when, for either foot (joints 10, 11), the foot is below 5 cm at t and
    t+1, its horizontal speed exceeds 0.5 m/s, and that speed averaged over 5 steps (zero padded)
    exceeds 0.5 m/s too. ``(..., T, 22, 3)`` -> ``(...)``.
    """
    j = _check(joints, "joints")
    feet = j[..., :, list(SKATE_FEET), :]  # (..., T, 2, 3)
    speed = np.linalg.norm(np.diff(feet[..., [0, 2]], axis=-3), axis=-1) * fps  # (..., T-1, 2)
    smooth = uniform_filter1d(speed, size=SKATE_WINDOW, axis=-2, mode="constant", origin=0)
    low = feet[..., 1] < SKATE_HEIGHT  # (..., T, 2)
    contact = low[..., :-1, :] & low[..., 1:, :]
    skating = (contact & (speed > SKATE_SPEED) & (smooth > SKATE_SPEED)).any(-1)  # (..., T-1)
    return skating.mean(-1)


def _per_sample_keyframes(keyframes, batch: int, length: int) -> list[np.ndarray]:
    if len(keyframes) and np.ndim(keyframes[0]) == 0:  # one list shared by every sample
        keyframes = [keyframes] * batch
    if len(keyframes) != batch:
        raise ValueError(f"need one keyframe list per sample ({batch}), got {len(keyframes)}")
    out = []
    for ks in keyframes:
        ks = np.asarray(ks, dtype=int)
        bad = ks[(ks < 0) | (ks >= length)]
        if ks.size == 0 or bad.size:
            raise ValueError(f"keyframes must be a non-empty list in [0, {length}); bad: {bad.tolist()}")
        out.append(ks)
    return out


def _batched(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = _check(pred, "pred_joints"), _check(gt, "gt_joints")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p.reshape((-1,) + p.shape[-3:]), g.reshape((-1,) + g.shape[-3:])


def trajectory_errors(pred_joints, gt_joints, keyframes: Sequence) -> dict[str, float]:
    """Root xz error at keyframes (``compute_kps_error_arbitrary(traj_only=True)`` and
    ``calculate_trajectory_error(strict=True)``), with CondMDI's padding of uneven lists.

    ``keyframes``: one list of frame indices, or one list per sample. Returns
    ``mean_error`` (m; mean over samples of each sample's mean keyframe error, real keyframes
    only), ``fail_0.2`` / ``fail_0.5`` (fraction of samples with an error above the threshold)
    and ``kps_fail_0.2`` / ``kps_fail_0.5`` (fraction of errors above it).

    Uneven per-sample lists: CondMDI pads every list to the longest with index -1, so a sample
    with fewer keyframes gets extra entries holding the error of its LAST frame (T-1), keyframe
    or not; the fail and kps-fail rates count those entries (denominator: samples x longest
    list), the mean error does not. We do the same. With lists of one length nothing is padded.
    """
    p, g = _batched(pred_joints, gt_joints)
    ks = _per_sample_keyframes(keyframes, p.shape[0], p.shape[1])
    width = max(len(k) for k in ks)
    padded = [np.concatenate([k, np.full(width - len(k), p.shape[1] - 1, dtype=int)]) for k in ks]
    dist = np.stack([np.linalg.norm(p[i, k, 0][:, [0, 2]] - g[i, k, 0][:, [0, 2]], axis=-1)
                     for i, k in enumerate(padded)])  # (B, width)
    out = {"mean_error": float(np.mean([dist[i, :len(k)].mean() for i, k in enumerate(ks)]))}
    for tau in (0.2, 0.5):
        out[f"fail_{tau}"] = float(1.0 - (dist <= tau).all(axis=1).mean())
        out[f"kps_fail_{tau}"] = float((dist > tau).mean())
    return out


def keyframe_error(pred_joints, gt_joints, keyframes: Sequence) -> float:
    """Mean 3-D joint distance at keyframes (``compute_kps_error_arbitrary(traj_only=False)`` then
    ``calculate_keyframe_error``): mean over joints, then keyframes, then samples; metres.
    Real keyframes only: CondMDI's last-frame padding of uneven lists does not enter this mean."""
    p, g = _batched(pred_joints, gt_joints)
    ks = _per_sample_keyframes(keyframes, p.shape[0], p.shape[1])
    return float(np.mean([np.linalg.norm(p[i, k] - g[i, k], axis=-1).mean() for i, k in enumerate(ks)]))


def jitter(joints, fps: float = 20.0):
    """Mean norm of the third finite difference times fps^3 (m/s^3), over joints and frames.

    ``(..., T >= 4, 22, 3)`` -> ``(...)``. Zero for motion with constant acceleration; 6c for
    p(t) = c t^3.
    """
    j = _check(joints, "joints")
    if j.shape[-3] < 4:
        raise ValueError(f"jitter needs at least 4 frames, got {j.shape[-3]}")
    third = np.diff(j, n=3, axis=-3)  # (..., T-3, 22, 3)
    return np.linalg.norm(third, axis=-1).mean(axis=(-1, -2)) * fps**3


def boundary_acceleration_ratio(joints, boundaries: Sequence[int]) -> float:
    """Motion's seam score: mean squared joint acceleration at the frames a window boundary
    touches over the mean at every other frame (1 = no trace; ours).

    A boundary b (window content switches between frames b - 1 and b) enters the second
    differences centred at frames b - 1 and b. ``(T, 22, 3)`` joints; accelerations are
    ``j[t+1] - 2 j[t] + j[t-1]`` for t = 1 .. T-2, averaged over joints and axes.
    """
    j = _check(joints, "joints")
    if j.ndim != 3:
        raise ValueError(f"joints must be one motion (T, 22, 3), got {j.shape}")
    T = j.shape[0]
    acc = ((j[2:] - 2 * j[1:-1] + j[:-2]) ** 2).mean(axis=(1, 2))    # frame t = index + 1
    at = sorted({t for b in boundaries for t in (b - 1, b) if 1 <= t <= T - 2})
    bad = [b for b in boundaries if not 1 <= b < T]
    if bad or not at:
        raise ValueError(f"boundaries {bad or list(boundaries)} are not inside the motion's {T} frames")
    seam = np.zeros(T - 2, dtype=bool)
    seam[[t - 1 for t in at]] = True
    if seam.all():
        raise ValueError("every frame touches a boundary; no interior frames to compare with")
    inside = acc[~seam].mean()
    return float(acc[seam].mean() / inside) if inside > 0 else (1.0 if acc[seam].mean() == 0 else float("inf"))
