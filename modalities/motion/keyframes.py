"""Keyframes for motion inpainting: loading user motion, choosing observed frames, feature masks.

Frame selections follow CondMDI's ``utils/editing_util.py`` (``get_keyframes_mask``: the
``benchmark_sparse`` mode observes ``range(L)[::N]``) and the released ALM motion setup
(first_half / last_half / middle_half, /work/shared/facts/motion.md). An observed frame fixes
all 263 features of that frame, as CondMDI's ``joint_to_full_mask(mode='pos_rot_vel')`` does
(positions, rotations, velocities and contacts); a joint subset fixes only that subset's
features (:func:`.features.joint_feature_indices`). The code is ours.

Mask convention: **1 = generated, 0 = observed** (the opposite of CondMDI's and ALM's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .bvh import load_bvh, resample
from .features import FPS, N_FEATURES, joint_feature_indices
from .skeleton import N_JOINTS

MODES = ("every", "first_half", "last_half", "middle_half", "frames")


@dataclass
class LoadedMotion:
    """A loaded motion at 20 fps: ``kind`` is 'joints' (``data (T, 22, 3)``, metres) or
    'features' (``data (T, 263)``, HumanML3D features, not normalised)."""

    kind: str
    data: np.ndarray


def _check_finite(arr: np.ndarray, path) -> None:
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if bad.any():
        frames = np.nonzero(bad)[0].tolist()
        raise ValueError(f"{path}: frames {frames[:20]}{' ...' if len(frames) > 20 else ''} hold NaN or inf")


def load_motion(path, fps: float | None = None, scale: float | None = None) -> LoadedMotion:
    """Load ``.npy`` joints ``(T, 22, 3)`` / ``(T, 66)`` or features ``(T, 263)``, or ``.bvh``.

    ``fps``: the file's frame rate when it is not 20 (``.npy`` joints are resampled linearly;
    BVH files carry their own rate). Features cannot be resampled and must be 20 fps.
    ``scale``: BVH units to metres (None: auto-detect).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no motion file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        return LoadedMotion("joints", load_bvh(path, scale=scale, fps=FPS))
    if suffix != ".npy":
        raise ValueError(f"{path}: unsupported motion file type {suffix!r}; allowed: .npy, .bvh")
    arr = np.load(path, allow_pickle=False).astype(np.float64)
    if arr.ndim == 2 and arr.shape[1] == N_FEATURES:
        kind = "features"
    elif arr.ndim == 2 and arr.shape[1] == N_JOINTS * 3:
        kind, arr = "joints", arr.reshape(arr.shape[0], N_JOINTS, 3)
    elif arr.ndim == 3 and arr.shape[1:] == (N_JOINTS, 3):
        kind = "joints"
    else:
        raise ValueError(
            f"{path}: array of shape {arr.shape} is neither joints (T, {N_JOINTS}, 3) / "
            f"(T, {N_JOINTS * 3}) nor features (T, {N_FEATURES})"
        )
    _check_finite(arr, path)
    if fps is not None and abs(fps - FPS) > 1e-9:
        if kind == "features":
            raise ValueError(f"{path}: features are defined at {FPS} fps and cannot be resampled from {fps} fps")
        arr = resample(arr, fps, FPS)
    return LoadedMotion(kind, arr)


def keyframe_frames(
    mode: str, length: int, every: int | None = None, frames: Sequence[int] | None = None
) -> list[int]:
    """Sorted observed frame indices of a clip of ``length`` frames.

    ``every``: ``range(length)[::every]`` (CondMDI benchmark_sparse); ``first_half``: frames
    length//2 .. end are observed (the first half is generated); ``last_half``: 0 .. length//2-1;
    ``middle_half``: 0 .. length//4-1 and 3*length//4 .. end; ``frames``: the given list.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if mode == "every":
        if every is None or every < 1:
            raise ValueError(f"mode 'every' needs every >= 1, got {every}")
        return list(range(length))[::every]
    if mode == "first_half":
        return list(range(length // 2, length))
    if mode == "last_half":
        return list(range(length // 2))
    if mode == "middle_half":
        return list(range(length // 4)) + list(range(3 * length // 4, length))
    if mode == "frames":
        if frames is None:
            raise ValueError("mode 'frames' needs frames=[...]")
        frames = [int(f) for f in frames]
        bad = [f for f in frames if not 0 <= f < length]
        if bad:
            raise ValueError(f"frames {bad} are outside [0, {length})")
        return sorted(set(frames))
    raise ValueError(f"unknown keyframe mode {mode!r}; allowed: {list(MODES)}")


def feature_mask(
    observed_frames: Sequence[int],
    length: int,
    joints: Sequence[str | int] | None = None,
    n_features: int = N_FEATURES,
) -> torch.Tensor:
    """``(n_features, length)`` float mask, 1 = generated, 0 = observed.

    Observed frames are 0 in every feature, or, with ``joints`` (t2m names, 'root', or indices),
    only in the features of those joints.
    """
    if n_features != N_FEATURES:
        raise ValueError(f"feature layout is known for {N_FEATURES} features, got n_features={n_features}")
    frames = keyframe_frames("frames", length, frames=observed_frames)
    mask = torch.ones(n_features, length)
    if joints is None:
        rows = list(range(n_features))
    else:
        rows = sorted({i for j in joints for i in joint_feature_indices(j)})
    if frames and rows:
        mask[torch.tensor(rows)[:, None], torch.tensor(frames)[None, :]] = 0.0
    return mask
