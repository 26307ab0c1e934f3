"""HumanML3D's 263-dim motion features at 20 fps, both directions, and their normalisation.

Definitions follow HumanML3D (``motion_representation.ipynb``: ``process_file``,
``recover_root_rot_pos``, ``recover_from_ric``; the same code is GMD/CondMDI's
``data_loaders/humanml/scripts/motion_process.py``) and the absolute-root variant of GMD/CondMDI
(``abs_3d``; CondMDI ``data_loaders/humanml/data/dataset.py``: ``motion_to_abs_data``,
``dataset/HumanML3D_abs/motion_representation.ipynb``). The code is ours.

Layout of one feature row t (a clip of T frames gives T-1 rows). psi_t is the root heading of
frame t (yaw of its forward vector, 0 along +Z, positive toward +X), wrapped to (-pi, pi], with
psi_0 = 0; a_t = -psi_t / 2 is the half-angle of the root quaternion (cos a_t, 0, sin a_t, 0).

=========  ==========================================================================
0          arcsin(sin(a_{t+1} - a_t)): the y part of the relative root quaternion t -> t+1
1:3        root displacement t -> t+1 (x, z), in the facing frame of t+1
3          root height y at t
4:67       joints 1-21 at t relative to the root's xz, rotated into the facing frame of t
67:193     joints 1-21 local rotations, 6-D (first two columns of the 3x3 matrix)
193:259    22 joints' displacement t -> t+1, in the facing frame of t
259:263    foot contacts of joints 7, 10, 8, 11: 1 where |p_{t+1} - p_t|^2 < 0.002 m^2
=========  ==========================================================================

Absolute-root rows (``abs_3d``) replace 0:3 with the accumulated half-angle a_t and the root's
absolute x, z (so 1:4 = x, z, y, as in CondMDI's ``recover_root_rot_pos(..., abs_3d=True)``).

:func:`joints_to_features` reproduces HumanML3D's ``process_file`` step by step (checked to
< 3e-5 per feature block against the released code, which works in float32;
tests/test_motion_dataset_features.py):

1. Retarget (``uniform_skeleton``): every bone keeps its direction and takes the template
   length; the root trajectory is scaled by the ratio of template to source lower-leg length
   (bones 5 and 8, frame 0).
2. Canonicalise (:func:`canonicalize`): floor at the lowest joint, frame-0 root xz at the
   origin, frame 0 turned to face +Z with across = (r_hip - l_hip) + (r_shoulder - l_shoulder).
3. Root heading per frame (``inverse_kinematics_np(..., smooth_forward=True)``): across =
   (j1 - j2) + (j17 - j16) -- the hip term reversed relative to step 2 --, normalised in 3-D;
   forward = up x across, Gaussian-smoothed over time (sigma 20 frames, mode 'nearest') before
   it is normalised; frame 0's root rotation is the identity whatever its heading, frames >= 1
   keep their own absolute heading. So row 0 of feature 0 is half of frame 1's absolute
   heading, not a one-frame change.
4. Feature 0 is the arcsin of the relative quaternion's y. Where the wrapped heading jumps across
   +-180 degrees the arcsin returns +Delta/2 instead of -Delta/2 (Delta the true heading change),
   so cumulating feature 0 (the recovery, and CondMDI's ``abs_3d`` heading) is off by Delta in
   half-angle, 2 Delta in heading, from there on. That is what the dataset holds;
   ``dataset_arcsin=False`` gives the consistent difference instead, and then the round trip
   is exact.
5. Local rotations: swing-only IK. Along each kinematic chain, starting from the root rotation
   R, a bone's world rotation S is the minimal rotation taking its raw offset to its direction;
   the feature is R^T S (6-D) and R <- S for the next bone.

``canonical=False, retarget_skeleton=False`` skips steps 1-2: that is CondMDI's
``extract_features`` (``data_loaders/humanml/scripts/motion_process.py``), which its
``motion_to_abs_data`` applies to generated joints (agrees to < 1e-6 per block).
:func:`to_abs_root` then matches that function's absolute rows (< 2e-7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from .skeleton import (
    CONTACT_JOINTS, FACE_JOINTS, KINEMATIC_CHAIN, LEG_JOINTS, N_JOINTS, RAW_OFFSETS, TEMPLATE_BONE_LENGTHS,
    bone_lengths, joint_index,
)

N_FEATURES = 263
FPS = 20
FEET_THRESHOLD = 0.002  # squared displacement per frame, m^2 (process_file(..., 0.002))

# Feature slices.
ROOT_ROT = slice(0, 1)
ROOT_VEL = slice(1, 3)
ROOT_Y = slice(3, 4)
RIC = slice(4, 4 + 21 * 3)  # 4:67
ROT = slice(67, 67 + 21 * 6)  # 67:193
VEL = slice(193, 193 + 22 * 3)  # 193:259
CONTACTS = slice(259, 263)
# The 7 groups whose std is averaged (HumanML3D cal_mean_variance.ipynb, std_average).
FEATURE_GROUPS = (ROOT_ROT, ROOT_VEL, ROOT_Y, RIC, ROT, VEL, CONTACTS)


def joint_feature_indices(joint: str | int) -> list[int]:
    """Feature indices that describe one joint (CondMDI ``humanml_utils``: MAT_POS/ROT/VEL/CNT).

    root (0): 0 (rotation), 1:4 (position x, z, y), 193:196 (velocity).
    joint j in 1..21: ric 4+3(j-1) : 4+3j, rotation 67+6(j-1) : 67+6j, velocity 193+3j : 196+3j,
    plus its contact (259 for 7, 260 for 10, 261 for 8, 262 for 11).
    """
    j = joint_index(joint)
    if j == 0:
        idx = [0, 1, 2, 3]
    else:
        idx = list(range(4 + 3 * (j - 1), 4 + 3 * j)) + list(range(67 + 6 * (j - 1), 67 + 6 * j))
    idx += list(range(193 + 3 * j, 196 + 3 * j))
    if j in CONTACT_JOINTS:
        idx.append(259 + CONTACT_JOINTS.index(j))
    return sorted(idx)


# --------------------------------------------------------------------------- rotations about y
def _rot_y_np(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate ``v (..., 3)`` about +y by ``angle (...)`` radians (right-handed)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    x, y, z = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return np.concatenate([c * x + s * z, y, -s * x + c * z], axis=-1)


def _rot_y(v: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`_rot_y_np`."""
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return torch.cat([c * x + s * z, y, -s * x + c * z], dim=-1)


def _swing(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Minimal rotation matrices taking unit ``u (3,)`` to unit ``v (T, 3)`` -> ``(T, 3, 3)``."""
    w = np.cross(u[None], v)  # (T, 3)
    c = v @ u  # (T,)
    k = np.zeros(v.shape[:-1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    opposite = 1.0 + c < 1e-9
    denom = np.where(opposite, 1.0, 1.0 + c)
    out = np.eye(3) + k + (k @ k) / denom[:, None, None]
    if opposite.any():  # half turn about an axis perpendicular to u
        axis = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        out[opposite] = 2.0 * np.outer(axis, axis) - np.eye(3)
    return out


# --------------------------------------------------------------------------- joints -> features
def _facing(joints: np.ndarray) -> np.ndarray:
    """Unit forward vectors ``(T, 3)`` for turning a clip to +Z (``process_file``): up x across,
    across = (right_hip - left_hip) + (right_shoulder - left_shoulder)."""
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, r_sdr] - joints[:, l_sdr])
    forward = np.stack([across[:, 2], np.zeros(len(across)), -across[:, 0]], axis=-1)
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def _ik_forward(joints: np.ndarray, smooth_sigma: float) -> np.ndarray:
    """Forward vectors ``(T, 3)`` of the per-frame root rotation (``inverse_kinematics_np``):
    across = (left_hip - right_hip) + (right_shoulder - left_shoulder), unit in 3-D; forward =
    up x across, smoothed over time, then made unit."""
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    across = (joints[:, l_hip] - joints[:, r_hip]) + (joints[:, r_sdr] - joints[:, l_sdr])
    across = across / np.linalg.norm(across, axis=-1, keepdims=True)
    forward = np.stack([across[:, 2], np.zeros(len(across)), -across[:, 0]], axis=-1)
    if smooth_sigma > 0:
        forward = gaussian_filter1d(forward, smooth_sigma, axis=0, mode="nearest")
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def _heading(forward: np.ndarray) -> np.ndarray:
    """Yaw of forward vectors, 0 along +Z, positive toward +X, in (-pi, pi]."""
    return np.arctan2(forward[:, 0], forward[:, 2])


def retarget(joints, lengths=None) -> np.ndarray:
    """HumanML3D ``uniform_skeleton``: give every bone the template length, keep its direction.

    The root trajectory is scaled about the world origin by (template / source) length of the
    lower legs (bones 5 + 8, source measured at frame 0). ``lengths (22,)`` defaults to
    :data:`.skeleton.TEMPLATE_BONE_LENGTHS`. ``(T, 22, 3)`` -> ``(T, 22, 3)`` float64.
    """
    p = _check_joints(joints)
    target = TEMPLATE_BONE_LENGTHS if lengths is None else np.asarray(lengths, dtype=np.float64)
    if target.shape != (N_JOINTS,):
        raise ValueError(f"lengths must have shape ({N_JOINTS},), got {target.shape}")
    source = bone_lengths(p[0])
    scale = target[list(LEG_JOINTS)].sum() / source[list(LEG_JOINTS)].sum()
    out = np.empty_like(p)
    out[:, 0] = p[:, 0] * scale
    for chain in KINEMATIC_CHAIN:
        for j, child in zip(chain[:-1], chain[1:]):
            bone = p[:, child] - p[:, j]
            out[:, child] = out[:, j] + bone / np.linalg.norm(bone, axis=-1, keepdims=True) * target[child]
    return out


def canonicalize(joints: np.ndarray) -> np.ndarray:
    """HumanML3D ``process_file``: floor at the lowest joint, frame-0 root xz at the origin,
    frame-0 facing +Z. ``(T, 22, 3)`` -> ``(T, 22, 3)`` float64."""
    joints = _check_joints(joints).copy()
    joints[..., 1] -= joints[..., 1].min()
    joints[..., [0, 2]] -= joints[0, 0, [0, 2]]
    psi0 = _heading(_facing(joints[:1]))[0]
    return _rot_y_np(joints, np.full(joints.shape[:-1], -psi0))


def _check_joints(joints) -> np.ndarray:
    arr = joints.detach().cpu().numpy() if isinstance(joints, torch.Tensor) else np.asarray(joints)
    if arr.ndim != 3 or arr.shape[1:] != (N_JOINTS, 3) or arr.shape[0] < 2:
        raise ValueError(f"joints must have shape (T >= 2, {N_JOINTS}, 3), got {arr.shape}")
    return arr.astype(np.float64)


def dataset_joints(joints, *, retarget_skeleton: bool = True, canonical: bool = True) -> np.ndarray:
    """The joints HumanML3D computes its features from (and :func:`recover_from_ric` returns):
    :func:`retarget` then :func:`canonicalize`, each optional. ``(T, 22, 3)`` float64."""
    p = retarget(joints) if retarget_skeleton else _check_joints(joints)
    return canonicalize(p) if canonical else p


def joints_to_features(
    joints,
    *,
    canonical: bool = True,
    retarget_skeleton: bool = True,
    smooth_sigma: float = 20.0,
    feet_threshold: float = FEET_THRESHOLD,
    dataset_arcsin: bool = True,
    identity_first_frame: bool = True,
):
    """``(T, 22, 3)`` joint positions (m, y up, 20 fps) -> ``(T-1, 263)`` HumanML3D features.

    With the defaults this is HumanML3D's ``process_file(joints, 0.002)`` (module docstring).
    ``retarget_skeleton`` applies :func:`retarget`, ``canonical`` :func:`canonicalize`;
    ``smooth_sigma`` (frames, 0 = off) smooths the root heading; ``dataset_arcsin=False``
    replaces feature 0's arcsin by the heading change that the recovery inverts exactly, also
    across +-180 degrees. ``identity_first_frame=False`` measures every heading from frame 0's
    own smoothed heading instead of giving frame 0 the identity (the dataset's step 3), which
    removes the jump of up to ~20 degrees between rows 0 and 1 (not what the dataset holds).
    Returns float64, numpy for numpy input, torch for torch input.
    """
    is_torch = isinstance(joints, torch.Tensor)
    p = dataset_joints(joints, retarget_skeleton=retarget_skeleton, canonical=canonical)
    T = p.shape[0]

    psi = _heading(_ik_forward(p, smooth_sigma))
    if identity_first_frame:
        psi[0] = 0.0  # HumanML3D: root_quat[0] = identity
    else:
        psi = np.arctan2(np.sin(psi - psi[0]), np.cos(psi - psi[0]))
    to_facing = -psi  # (T,) angle of the world -> facing rotation R_y(-psi)

    # 0: relative root rotation; recovery uses q_t = (cos a_t, 0, sin a_t, 0), a_t = -psi_t/2
    if dataset_arcsin:
        r_vel = np.arcsin(np.sin(-(psi[1:] - psi[:-1]) / 2.0))  # (T-1,)
    else:
        r_vel = -np.diff(np.unwrap(psi)) / 2.0
    # 1:3: root displacement rotated into the facing frame of t+1
    root_disp = _rot_y_np(p[1:, 0] - p[:-1, 0], to_facing[1:])  # (T-1, 3)
    root_y = p[:-1, 0, 1]  # (T-1,)

    # 4:67: root-relative (xz) positions in the facing frame
    rel = p.copy()
    rel[..., [0, 2]] -= p[:, :1, [0, 2]]
    ric = _rot_y_np(rel, np.repeat(to_facing[:, None], N_JOINTS, axis=1))[:, 1:]  # (T, 21, 3)

    # 67:193: swing IK along each chain, starting from the root rotation
    c, s = np.cos(to_facing), np.sin(to_facing)
    facing_mat = np.zeros((T, 3, 3))
    facing_mat[:, 0, 0], facing_mat[:, 0, 2], facing_mat[:, 1, 1] = c, s, 1.0
    facing_mat[:, 2, 0], facing_mat[:, 2, 2] = -s, c
    local = np.zeros((T, N_JOINTS, 3, 3))
    for chain in KINEMATIC_CHAIN:
        parent_rot = facing_mat
        for j, child in zip(chain[:-1], chain[1:]):
            bone = p[:, child] - p[:, j]
            world = _swing(RAW_OFFSETS[child], bone / np.linalg.norm(bone, axis=-1, keepdims=True))
            local[:, child] = np.swapaxes(parent_rot, -1, -2) @ world
            parent_rot = world
    rot6d = np.concatenate([local[..., :, 0], local[..., :, 1]], axis=-1)[:, 1:]  # (T, 21, 6)

    # 193:259: every joint's displacement in the facing frame of t
    disp = p[1:] - p[:-1]  # (T-1, 22, 3)
    vel = _rot_y_np(disp, np.repeat(to_facing[:-1, None], N_JOINTS, axis=1))

    # 259:263: contacts (left ankle, left foot, right ankle, right foot)
    contacts = ((disp[:, list(CONTACT_JOINTS)] ** 2).sum(-1) < feet_threshold).astype(np.float64)

    feats = np.concatenate(
        [r_vel[:, None], root_disp[:, [0, 2]], root_y[:, None], ric[:-1].reshape(T - 1, -1),
         rot6d[:-1].reshape(T - 1, -1), vel.reshape(T - 1, -1), contacts],
        axis=-1,
    )  # (T-1, 263)
    return torch.from_numpy(feats) if is_torch else feats


# --------------------------------------------------------------------------- features -> joints
def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        t, was_np = x, False
    else:
        t, was_np = torch.as_tensor(np.asarray(x)), True
    if t.shape[-1] != N_FEATURES or t.dim() < 2:
        raise ValueError(f"features must have shape (..., T, {N_FEATURES}), got {tuple(t.shape)}")
    return t, was_np


def _back(t: torch.Tensor, was_np: bool):
    return t.numpy() if was_np else t


def _root_angle_pos(f: torch.Tensor, abs_root: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., T, 263)`` -> half-angles ``a (..., T)`` and root positions ``(..., T, 3)``."""
    if abs_root:
        a = f[..., 0]
        pos = torch.stack([f[..., 1], f[..., 3], f[..., 2]], dim=-1)  # features 1:4 = x, z, y
        return a, pos
    a = torch.cumsum(torch.cat([torch.zeros_like(f[..., :1, 0]), f[..., :-1, 0]], dim=-1), dim=-1)
    step = torch.zeros(f.shape[:-1] + (3,), dtype=f.dtype, device=f.device)
    step[..., 1:, 0], step[..., 1:, 2] = f[..., :-1, 1], f[..., :-1, 2]
    pos = torch.cumsum(_rot_y(step, -2.0 * a), dim=-2)  # q_t^-1 = R_y(-2 a_t)
    pos[..., 1] = f[..., 3]
    return a, pos


def _recover(features, abs_root: bool):
    f, was_np = _as_tensor(features)
    a, root = _root_angle_pos(f, abs_root)
    ric = f[..., RIC].reshape(f.shape[:-1] + (N_JOINTS - 1, 3))
    joints = _rot_y(ric, -2.0 * a[..., None].expand(ric.shape[:-1]))
    joints = joints + torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 2]], -1)[..., None, :]
    return _back(torch.cat([root[..., None, :], joints], dim=-2), was_np)  # (..., T, 22, 3)


def recover_from_ric(features):
    """Relative-root features ``(..., T, 263)`` -> joints ``(..., T, 22, 3)`` (frame 0 root xz at 0)."""
    return _recover(features, abs_root=False)


def recover_from_ric_abs(features):
    """Absolute-root (``abs_3d``) features ``(..., T, 263)`` -> joints ``(..., T, 22, 3)``."""
    return _recover(features, abs_root=True)


def _cont6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """``(..., 6)`` first two columns -> ``(..., 3, 3)`` by Gram-Schmidt (columns x, y, z)."""
    c0 = torch.nn.functional.normalize(x[..., 0:3], dim=-1)
    c2 = torch.nn.functional.normalize(torch.cross(c0, x[..., 3:6], dim=-1), dim=-1)
    c1 = torch.cross(c2, c0, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)


def recover_from_rot(features, bone_lengths, abs_root: bool = False):
    """Joints by forward kinematics of the 6-D rotations (HumanML3D ``recover_from_rot``).

    ``features (..., T, 263)``, ``bone_lengths (22,)`` -> ``(..., T, 22, 3)``. A bone's world
    direction is R_facing · L_1 ··· L_j · raw_offset along its chain.
    """
    f, was_np = _as_tensor(features)
    a, root = _root_angle_pos(f, abs_root)
    lengths = torch.as_tensor(np.asarray(bone_lengths), dtype=f.dtype)
    raw = torch.as_tensor(RAW_OFFSETS, dtype=f.dtype)
    local = _cont6d_to_matrix(f[..., ROT].reshape(f.shape[:-1] + (N_JOINTS - 1, 6)))  # (..., T, 21, 3, 3)
    c, s = torch.cos(2.0 * a), torch.sin(2.0 * a)  # R_y(2 a_t), the world -> facing rotation
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    facing = torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).reshape(a.shape + (3, 3))
    joints = [None] * N_JOINTS
    joints[0] = root
    for chain in KINEMATIC_CHAIN:
        rot = facing
        for j, child in zip(chain[:-1], chain[1:]):
            rot = rot @ local[..., child - 1, :, :]
            joints[child] = joints[j] + (rot @ raw[child]) * lengths[child]
    return _back(torch.stack(joints, dim=-2), was_np)


def recover_root(features, abs_root: bool = False):
    """``(..., T, 263)`` -> (half-angles ``(..., T)``, root positions ``(..., T, 3)``)."""
    f, was_np = _as_tensor(features)
    a, pos = _root_angle_pos(f, abs_root)
    return _back(a, was_np), _back(pos, was_np)


def to_abs_root(features):
    """Relative -> absolute root (CondMDI ``motion_to_abs_data``): 0 <- a_t, 1:3 <- root x, z."""
    f, was_np = _as_tensor(features)
    a, pos = _root_angle_pos(f, abs_root=False)
    out = f.clone()
    out[..., 0], out[..., 1], out[..., 2] = a, pos[..., 0], pos[..., 2]
    return _back(out, was_np)


def from_abs_root(features):
    """Absolute -> relative root. The last row has no successor: it repeats the row before
    (CondMDI pads its abs clips the same way, duplicating the last step)."""
    f, was_np = _as_tensor(features)
    out = f.clone()
    a = f[..., 0]
    if f.shape[-2] > 1:
        step = torch.zeros(f.shape[:-2] + (f.shape[-2] - 1, 3), dtype=f.dtype, device=f.device)
        step[..., 0] = f[..., 1:, 1] - f[..., :-1, 1]
        step[..., 2] = f[..., 1:, 2] - f[..., :-1, 2]
        local = _rot_y(step, 2.0 * a[..., 1:])  # into the facing frame of t+1
        out[..., :-1, 0] = a[..., 1:] - a[..., :-1]
        out[..., :-1, 1], out[..., :-1, 2] = local[..., 0], local[..., 2]
        out[..., -1, 0:3] = out[..., -2, 0:3]
    else:
        out[..., 0:3] = 0.0
    return _back(out, was_np)


# --------------------------------------------------------------------------- normalisation
def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


@dataclass
class Normalizer:
    """Per-dimension ``(x - mean) / std`` over the 263 features (HumanML3D Mean.npy/Std.npy)."""

    mean: torch.Tensor  # (263,)
    std: torch.Tensor  # (263,)

    def __post_init__(self):
        self.mean, self.std = _tensor(self.mean), _tensor(self.std)
        if self.mean.shape != (N_FEATURES,) or self.std.shape != (N_FEATURES,):
            raise ValueError(
                f"mean and std must have shape ({N_FEATURES},), got {tuple(self.mean.shape)} "
                f"and {tuple(self.std.shape)}"
            )
        if not bool((self.std > 0).all()):
            bad = torch.nonzero(self.std <= 0).flatten().tolist()
            raise ValueError(f"std must be positive; features {bad[:10]} are not")

    @classmethod
    def from_dir(cls, path: str | Path, abs_root: bool) -> "Normalizer":
        """Load ``Mean.npy``/``Std.npy`` (or ``Mean_abs_3d.npy``/``Std_abs_3d.npy`` when
        ``abs_root``, as CondMDI's dataset does in abs_3d mode)."""
        path = Path(path)
        names = ("Mean_abs_3d.npy", "Std_abs_3d.npy") if abs_root else ("Mean.npy", "Std.npy")
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lacks {missing}; expected {list(names)} there")
        return cls(np.load(path / names[0]), np.load(path / names[1]))

    @classmethod
    def fit(cls, features, feat_bias: float = 1.0) -> "Normalizer":
        """Mean per dimension; std averaged within the 7 groups. ``feat_bias`` divides the std of
        the root and contact groups (HumanML3D uses 5; CondMDI's abs_3d statistics use 1)."""
        x = _tensor(features)
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        if x.shape[-1] != N_FEATURES or x.shape[0] < 2:
            raise ValueError(f"features must have shape (..., {N_FEATURES}) with >= 2 rows, got {tuple(x.shape)}")
        mean, std = x.mean(0), x.std(0, correction=0)  # numpy's std, as in cal_mean_variance
        for group in FEATURE_GROUPS:
            bias = 1.0 if group in (RIC, ROT, VEL) else feat_bias
            std[group] = std[group].mean() / bias
        return cls(mean, std)

    def normalize(self, x, dim: int = -1):
        """``(x - mean) / std`` with the feature axis at ``dim``."""
        mean, std = self._shaped(x, dim)
        return (x - mean) / std

    def denormalize(self, x, dim: int = -1):
        mean, std = self._shaped(x, dim)
        return x * std + mean

    def _shaped(self, x, dim: int):
        if x.shape[dim] != N_FEATURES:
            raise ValueError(f"axis {dim} of x must have {N_FEATURES} features, got shape {tuple(x.shape)}")
        shape = [1] * x.dim() if isinstance(x, torch.Tensor) else [1] * np.ndim(x)
        shape[dim] = N_FEATURES
        if isinstance(x, torch.Tensor):
            return (self.mean.to(x).reshape(shape), self.std.to(x).reshape(shape))
        return self.mean.numpy().reshape(shape), self.std.numpy().reshape(shape)
