"""BVH export and import of joint-position motion on the 22-joint t2m skeleton.

Export (:func:`save_bvh`): the rest pose is the first frame, so each OFFSET is that frame's
parent -> joint vector (its bone length along its frame-0 direction), and per frame we solve
global joint rotations that carry the rest bones onto the frame's bones:

* a joint with one child takes the minimal (swing) rotation from its parent's rotated bone to
  the new bone, so twist is inherited from the parent;
* the pelvis and spine3, which carry three children each, take the least-squares rotation
  (Kabsch) of their three bones. Where those three bones move rigidly (SMPL-derived data such as
  HumanML3D, and :mod:`.procedural`), positions are reproduced to float precision; elsewhere the
  children of those two joints carry the fit's residual.

Rotations are written as intrinsic Z, X, Y Euler angles in degrees ("Zrotation Xrotation
Yrotation", R = Rz Rx Ry, the common mocap order); the root also has X/Y/Z position channels.
Units: centimetres by default (``scale=100``).

Import (:func:`load_bvh`): any rig whose joints can be named onto the 22 t2m joints: the t2m and
SMPL names (``left_hip``, ``L_Hip``) or the common mocap names (``Hips``, ``LeftUpLeg``,
``LeftLeg``, ``LeftFoot``, ``LeftToeBase``, ``Spine``/``Spine1``/``Spine2``, ``Neck``, ``Head``,
``LeftShoulder``, ``LeftArm``, ``LeftForeArm``, ``LeftHand``; a ``prefix:`` such as
``mixamorig:`` is dropped). Extra joints (fingers, end sites) are skipped. Forward kinematics in
the file's own channel orders, y up assumed; position channels replace the joint's OFFSET.
Units come from ``scale`` or from the rig's height (over 3 units tall -> centimetres); frames are
linearly resampled to 20 fps.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .skeleton import JOINT_NAMES, N_JOINTS, PARENTS, children

EULER_ORDER = "ZXY"
_LEAF_TIP = 0.3  # end-site length as a fraction of the leaf's own bone


# --------------------------------------------------------------------------- time
def resample(positions: np.ndarray, src_fps: float, dst_fps: float = 20.0) -> np.ndarray:
    """Linear interpolation of ``(T, ...)`` frames from ``src_fps`` to ``dst_fps``; the output
    covers the same time span (frames at k / dst_fps up to the last input time)."""
    positions = np.asarray(positions, dtype=np.float64)
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be positive, got src_fps={src_fps}, dst_fps={dst_fps}")
    if abs(src_fps - dst_fps) < 1e-9:
        return positions.copy()
    duration = (positions.shape[0] - 1) / src_fps
    t_new = np.arange(int(np.floor(duration * dst_fps + 1e-6)) + 1) / dst_fps
    x = t_new * src_fps
    i0 = np.clip(np.floor(x).astype(int), 0, positions.shape[0] - 1)
    i1 = np.clip(i0 + 1, 0, positions.shape[0] - 1)
    w = (x - i0).reshape((-1,) + (1,) * (positions.ndim - 1))
    return (1.0 - w) * positions[i0] + w * positions[i1]


# --------------------------------------------------------------------------- export
def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T, 3)`` vectors -> ``(T, 3, 3)`` minimal rotations taking direction a to direction b."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis, axis=-1)
    angle = np.arctan2(sin, (a * b).sum(-1))
    fallback = np.cross(a, np.where(np.abs(a[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    axis = np.where(sin[:, None] > 1e-12, axis, fallback)
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return Rotation.from_rotvec(axis * angle[:, None]).as_matrix()


def _kabsch(rest: np.ndarray, now: np.ndarray) -> np.ndarray:
    """``rest (K, 3)``, ``now (T, K, 3)`` -> ``(T, 3, 3)`` rotations R minimising |R rest - now|."""
    h = np.einsum("ki,tkj->tij", rest, now)  # (T, 3, 3)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    fix = np.tile(np.eye(3), (len(h), 1, 1))
    fix[:, 2, 2] = d
    return np.swapaxes(vt, -1, -2) @ fix @ np.swapaxes(u, -1, -2)


def joints_to_local_rotations(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T, 22, 3)`` -> (rest offsets ``(22, 3)``, local rotation matrices ``(T, 22, 3, 3)``)."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (N_JOINTS, 3):
        raise ValueError(f"joints must have shape (T, {N_JOINTS}, 3), got {joints.shape}")
    T = joints.shape[0]
    offsets = np.zeros((N_JOINTS, 3))
    for j in range(1, N_JOINTS):
        offsets[j] = joints[0, j] - joints[0, PARENTS[j]]
    world = np.zeros((T, N_JOINTS, 3, 3))
    local = np.zeros((T, N_JOINTS, 3, 3))
    for j in range(N_JOINTS):  # parents precede children
        parent_rot = world[:, PARENTS[j]] if j > 0 else np.tile(np.eye(3), (T, 1, 1))
        kids = children(j)
        bones = joints[:, kids] - joints[:, j : j + 1]  # (T, K, 3)
        if len(kids) > 1:
            world[:, j] = _kabsch(offsets[kids], bones)
        elif len(kids) == 1:
            rotated = np.einsum("tij,j->ti", parent_rot, offsets[kids[0]])
            world[:, j] = _swing(rotated, bones[:, 0]) @ parent_rot
        else:
            world[:, j] = parent_rot
        local[:, j] = np.swapaxes(parent_rot, -1, -2) @ world[:, j]
    return offsets, local


def _write_joint(lines, j, offsets, names, scale, depth):
    pad = "  " * depth
    kind = "ROOT" if j == 0 else "JOINT"
    lines.append(f"{pad}{kind} {names[j]}")
    lines.append(f"{pad}{{")
    lines.append(f"{pad}  OFFSET " + " ".join(f"{v * scale:.6f}" for v in offsets[j]))
    chans = "Xposition Yposition Zposition " if j == 0 else ""
    lines.append(f"{pad}  CHANNELS {6 if j == 0 else 3} {chans}Zrotation Xrotation Yrotation")
    kids = children(j)
    for c in kids:
        _write_joint(lines, c, offsets, names, scale, depth + 1)
    if not kids:
        tip = offsets[j] * _LEAF_TIP * scale
        lines += [f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET " + " ".join(f"{v:.6f}" for v in tip), f"{pad}  }}"]
    lines.append(f"{pad}}}")


def save_bvh(path, joints, fps: float = 20.0, scale: float = 100.0, names=JOINT_NAMES) -> Path:
    """Write ``(T, 22, 3)`` joint positions (m) as a BVH file; ``scale`` converts metres to file
    units (100 = centimetres); ``names`` are the 22 joint names to write."""
    joints = np.asarray(joints, dtype=np.float64)
    if len(names) != N_JOINTS:
        raise ValueError(f"names must list {N_JOINTS} joints, got {len(names)}")
    offsets, local = joints_to_local_rotations(joints)
    with warnings.catch_warnings():  # gimbal lock warnings: the matrix is still reproduced
        warnings.simplefilter("ignore")
        euler = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_euler(EULER_ORDER, degrees=True)
    euler = euler.reshape(joints.shape[0], N_JOINTS, 3)
    lines = ["HIERARCHY"]
    _write_joint(lines, 0, offsets, names, scale, 0)
    lines += ["MOTION", f"Frames: {joints.shape[0]}", f"Frame Time: {1.0 / fps:.12f}"]
    order = [j for j in _dfs(0)]  # channel order follows the hierarchy as written
    for t in range(joints.shape[0]):
        vals = list(joints[t, 0] * scale)
        for j in order:
            vals += list(euler[t, j])
        lines.append(" ".join(f"{v:.6f}" for v in vals))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _dfs(j: int):
    yield j
    for c in children(j):
        yield from _dfs(c)


# --------------------------------------------------------------------------- import
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.split(":")[-1].lower())


def _sided(table: dict[str, int]) -> dict[str, int]:
    """Expand '{s}' names over left/right spellings; right indices are left + 1."""
    out = {}
    for name, idx in table.items():
        if "{s}" not in name:
            out[name] = idx
            continue
        for left in ("left", "l"):
            out[name.format(s=left)] = idx
        for right in ("right", "r"):
            out[name.format(s=right)] = idx + 1
    return out


# t2m / SMPL naming (spine1..3 bottom to top, '*_foot' = toes); left indices
_T2M_ALIASES = _sided({
    "pelvis": 0, "hips": 0, "{s}hip": 1, "spine1": 3, "{s}knee": 4, "spine2": 6, "{s}ankle": 7,
    "spine3": 9, "{s}foot": 10, "neck": 12, "{s}collar": 13, "head": 15, "{s}shoulder": 16,
    "{s}elbow": 18, "{s}wrist": 20,
})
# common mocap naming (Mixamo/CMU style: Spine, Spine1, Spine2; Leg = shin; Foot = ankle)
_MOCAP_ALIASES = _sided({
    "hips": 0, "pelvis": 0, "{s}upleg": 1, "{s}thigh": 1, "{s}upperleg": 1, "spine": 3,
    "{s}leg": 4, "{s}lowerleg": 4, "{s}shin": 4, "{s}calf": 4, "spine1": 6, "{s}foot": 7,
    "{s}ankle": 7, "spine2": 9, "chest": 9, "{s}toebase": 10, "{s}toe": 10, "{s}toes": 10,
    "neck": 12, "{s}shoulder": 13, "{s}clavicle": 13, "{s}collar": 13, "head": 15, "{s}arm": 16,
    "{s}upperarm": 16, "{s}forearm": 18, "{s}lowerarm": 18, "{s}elbow": 18, "{s}hand": 20,
    "{s}wrist": 20,
})


def _parse(text: str):
    """-> joints [(name, parent, offset (3,), channels [str])], frames (F, C), frame_time."""
    tokens = text.split()
    joints, stack, i = [], [], 0
    pending = None
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            pending = (tokens[i + 1], stack[-1] if stack else -1)
            i += 2
        elif tok == "End":  # End Site: skip its block
            depth, i = 0, i + 2
            while True:
                depth += tokens[i] == "{"
                depth -= tokens[i] == "}"
                i += 1
                if depth == 0:
                    break
        elif tok == "{":
            joints.append([pending[0], pending[1], None, []])
            stack.append(len(joints) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            joints[stack[-1]][2] = np.array([float(v) for v in tokens[i + 1 : i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            joints[stack[-1]][3] = tokens[i + 2 : i + 2 + n]
            i += 2 + n
        elif tok == "MOTION":
            break
        else:
            i += 1
    n_frames = int(tokens[tokens.index("Frames:") + 1])
    ft_at = tokens.index("Frame") if "Frame" in tokens else None
    if ft_at is None or tokens[ft_at + 1] != "Time:":
        raise ValueError("BVH file has no 'Frame Time:' line")
    frame_time = float(tokens[ft_at + 2])
    n_chan = sum(len(j[3]) for j in joints)
    values = np.array(tokens[ft_at + 3 :], dtype=np.float64)
    if values.size != n_frames * n_chan:
        raise ValueError(f"BVH motion has {values.size} values, expected {n_frames} frames x {n_chan} channels")
    return joints, values.reshape(n_frames, n_chan), frame_time


def _forward_kinematics(joints, frames) -> np.ndarray:
    """-> world positions ``(F, J, 3)`` of every parsed joint."""
    F = frames.shape[0]
    pos = np.zeros((F, len(joints), 3))
    rot = np.zeros((F, len(joints), 3, 3))
    col = 0
    for k, (_, parent, offset, chans) in enumerate(joints):
        trans = np.tile(offset, (F, 1))
        local = np.tile(np.eye(3), (F, 1, 1))
        axes, angles = "", []
        for c in chans:
            kind = c[1:].lower()
            if kind == "position":
                trans[:, "XYZ".index(c[0].upper())] = frames[:, col]
            elif kind == "rotation":
                axes += c[0].upper()
                angles.append(frames[:, col])
            col += 1
        if axes:
            local = Rotation.from_euler(axes, np.stack(angles, -1), degrees=True).as_matrix()
        if parent < 0:
            pos[:, k], rot[:, k] = trans, local
        else:
            pos[:, k] = pos[:, parent] + np.einsum("fij,fj->fi", rot[:, parent], trans)
            rot[:, k] = rot[:, parent] @ local
    return pos


def _map_names(names: list[str], strict: bool) -> list[int]:
    """Index in the file of each t2m joint, by name."""
    normed = [_norm(n) for n in names]
    mocap = any(n in ("leftupleg", "rightupleg", "lupleg", "rupleg") for n in normed) or (
        "spine" in normed and "spine3" not in normed
    )
    table = _MOCAP_ALIASES if mocap else _T2M_ALIASES
    where: dict[int, int] = {}
    unknown = []
    for k, n in enumerate(normed):
        if n in table and table[n] not in where:
            where[table[n]] = k
        elif n not in table:
            unknown.append(names[k])
    missing = [JOINT_NAMES[j] for j in range(N_JOINTS) if j not in where]
    if missing or (strict and unknown):
        scheme = "mocap (Hips/LeftUpLeg/...)" if mocap else "t2m/SMPL (pelvis/left_hip/...)"
        raise ValueError(
            f"BVH rig read as {scheme} names lacks t2m joints {missing}; names in the file not "
            f"recognised: {unknown}. Accepted names: {sorted(table)}"
        )
    return [where[j] for j in range(N_JOINTS)]


def load_bvh(path, scale: float | None = None, fps: float | None = 20.0, strict: bool = False) -> np.ndarray:
    """Read a 22-joint humanoid BVH -> ``(T, 22, 3)`` t2m joint positions in metres.

    ``scale`` multiplies file units into metres (None: 0.01 if the first frame is over 3 units
    tall, else 1). ``fps``: resample to this rate (None keeps the file's). ``strict`` also rejects
    joints whose names are not recognised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no BVH file at {path}")
    parsed, frames, frame_time = _parse(path.read_text())
    index = _map_names([j[0] for j in parsed], strict)
    pos = _forward_kinematics(parsed, frames)[:, index]  # (F, 22, 3)
    if scale is None:
        height = np.ptp(pos[0, :, 1])
        scale = 0.01 if height > 3.0 else 1.0
    pos = pos * scale
    if fps is not None:
        pos = resample(pos, 1.0 / frame_time, fps)
    return pos
