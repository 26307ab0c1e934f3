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

from longgen.planner import KEYFRAME_MODES as MODES, keyframe_frames  # noqa: F401 (re-exported)

from .bvh import load_bvh, resample
from .features import FPS, N_FEATURES, joint_feature_indices
from .skeleton import N_JOINTS



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


# --------------------------------------------------------------------------- CLI keyframe setup
# Shared by the builtin path (plugin.py) and the CondMDI path (jobs.py).


def parse_keyframes(spec: str, length: int) -> list[int]:
    """``every:N`` | ``first_half`` | ``last_half`` | ``middle_half`` | ``frames:0,10,20``."""
    mode, _, arg = spec.partition(":")
    if mode == "every":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"--keyframes every:N needs an integer N, got {arg!r}") from None
        return keyframe_frames("every", length, every=n)
    if mode == "frames":
        try:
            frames = [int(f) for f in arg.split(",") if f.strip()]
        except ValueError:
            raise ValueError(f"--keyframes frames:... needs integers, got {arg!r}") from None
        return keyframe_frames("frames", length, frames=frames)
    if mode in MODES:
        return keyframe_frames(mode, length)
    raise ValueError(f"unknown --keyframes {spec!r}; allowed: every:N, first_half, last_half, middle_half, frames:a,b,c")


def parse_joints(spec: str | None) -> list[str | int] | None:
    """``--joints``: None (all features), ``root``, or comma-separated t2m indices / names."""
    if not spec:
        return None
    out: list[str | int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        out.append(int(part) if part.lstrip("-").isdigit() else part)
    for j in out:  # validates names and ranges, naming the bad one
        joint_feature_indices(j)
    return out


@dataclass
class KeyframeSetup:
    """What a motion job observes: the clip keyframes come from and where they sit."""

    reference: np.ndarray       # (L, 22, 3) joints of the clip (canonical frame), for metrics
    features: np.ndarray        # (L, 263) absolute-root features, not normalised
    frames: list[int]           # observed frames
    gen_mask: torch.Tensor      # (263, L), 1 = generated

    @property
    def length(self) -> int:
        return self.features.shape[0]


def reference_motion(path, frames: int | None, seed: int, *,
                     dataset_features: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(reference joints (L, 22, 3), absolute-root features (L, 263)) from ``path``, or, when
    ``path`` is None, from a procedural walk of ``frames`` frames (so a run has ground truth).
    ``dataset_features``: joints are encoded as HumanML3D does (real checkpoints) or as the
    builtin prior was fitted (False; see :func:`.builtin.motion_features`)."""
    from .builtin import motion_features
    from .features import recover_from_ric_abs, to_abs_root
    from .procedural import generate_motions

    if path is None:
        if frames is None or frames < 1:
            raise ValueError(f"--frames must be a positive integer, got {frames}")
        joints = generate_motions(1, frames + 1, seed=seed + 1)[0]
        feats = motion_features(joints, dataset=dataset_features)
    else:
        m = load_motion(path)
        if m.kind == "joints" and m.data.shape[0] < 2:
            raise ValueError(f"{path}: a motion needs at least 2 frames of joints, got {m.data.shape[0]}")
        feats = (motion_features(m.data, dataset=dataset_features) if m.kind == "joints"
                 else np.asarray(to_abs_root(m.data)))
    ref = recover_from_ric_abs(torch.from_numpy(feats)).numpy()
    return ref, feats


def keyframe_setup(args, default_frames: int, window: int, *,
                   dataset_features: bool = True) -> KeyframeSetup:
    """The keyframes a ``longgen motion`` run observes (``--input --frames --keyframes --joints``)."""
    reference, feats = reference_motion(args.input, args.frames or default_frames, args.seed,
                                        dataset_features=dataset_features)
    length = feats.shape[0]
    if args.input is not None and args.frames is not None and args.frames != length:
        raise ValueError(f"--frames {args.frames} differs from the input's {length} frames")
    if length < window:
        raise ValueError(f"the motion has {length} frames, fewer than the window ({window}); "
                         f"pass --window-frames <= {length}")
    frames = parse_keyframes(args.keyframes, length)
    gen_mask = feature_mask(frames, length, joints=parse_joints(args.joints))
    return KeyframeSetup(reference, feats, frames, gen_mask)


def given_of(setup: KeyframeSetup, norm, dtype=torch.float32):
    """The engine's :class:`longgen.engine.Given` for normalised features (263, L)."""
    from longgen.engine import Given

    values = norm.normalize(torch.from_numpy(setup.features)).T.to(dtype)   # (263, L)
    return Given(values=values, known=(1 - setup.gen_mask.to(dtype)))
