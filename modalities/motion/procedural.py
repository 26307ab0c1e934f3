"""Procedural walking on the t2m skeleton: synthetic motion data that needs no dataset.

Each clip is a walk with its own speed, step length, step width, turning, arm swing and pelvis
bob. Feet are planned first: every stance plants the toe joint on the floor beside the path, where
the pelvis passes over the ankle at mid-stance; the heel rises about the planted toe late in the
stance, and the foot flies to its next foothold on a lift arc. Legs reach the ankles by two-bone
IK (knee toward the toes), the pelvis is lowered just enough for every planned ankle to be
reachable, and the upper body twists, leans and swings its arms against the legs.

Positions are built by forward kinematics: every joint is its parent plus its template bone
length (/work/shared/facts/motion.md, HumanML3D clip 000021) times a unit direction, so bone
lengths hold exactly. The pelvis's children (hips, spine1) and spine3's children (neck,
collars) are rigid in their parent's frame, as in SMPL, which lets BVH rotations reproduce the
positions. Output: metres, y up, 20 fps by default; each walk starts by the origin with a
random heading (:func:`.features.canonicalize` turns it to face +Z).
"""

from __future__ import annotations

import numpy as np

from .skeleton import N_JOINTS, TEMPLATE_BONE_LENGTHS as LEN

# Rest directions of bones, in the frame of the body part they hang from (x left, y up, z forward).
_HIP_DIR = np.array([0.55, -0.835, 0.0])  # left; right mirrors x
_SPINE_DIR = np.array([0.0, 1.0, 0.0])
_NECK_DIR = np.array([0.0, 1.0, 0.12])
_COLLAR_DIR = np.array([0.55, 0.835, -0.05])
_SHOULDER_DIR = np.array([1.0, -0.12, -0.05])
_HEAD_DIR = np.array([0.0, 1.0, 0.25])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rot_y(angle: np.ndarray) -> np.ndarray:
    """``(...)`` angles -> ``(..., 3, 3)`` rotations about +y (turns +Z toward +X)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(np.shape(angle) + (3, 3))


def _rot_x(angle: np.ndarray) -> np.ndarray:
    """Rotations about +x; a positive angle tips +Y toward +Z (leans forward)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(np.shape(angle) + (3, 3))


def _rot_z(angle: np.ndarray) -> np.ndarray:
    """Rotations about +z; a positive angle tips +Y toward -X."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(np.shape(angle) + (3, 3))


def _apply(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(T, 3, 3) @ (3,) or (T, 3)`` -> ``(T, 3)``."""
    return np.einsum("tij,tj->ti", rot, np.broadcast_to(v, rot.shape[:-1]))


def _smootherstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (u * (6.0 * u - 15.0) + 10.0)


def _two_bone_knee(hip, ankle, l1, l2, pole):
    """Knee positions ``(T, 3)`` with |knee-hip| = l1, |ankle-knee| = l2 where reachable."""
    d_vec = ankle - hip
    d = np.clip(np.linalg.norm(d_vec, axis=-1, keepdims=True), 1e-6, (l1 + l2) * (1 - 1e-9))
    axis = d_vec / np.linalg.norm(d_vec, axis=-1, keepdims=True)
    along = (l1 * l1 - l2 * l2 + d * d) / (2.0 * d)
    radius = np.sqrt(np.clip(l1 * l1 - along * along, 0.0, None))
    bend = _unit(pole - (pole * axis).sum(-1, keepdims=True) * axis)
    return hip + along * axis + radius * bend


def _walk_params(rng: np.random.Generator, speed_range) -> dict:
    speed = rng.uniform(*speed_range)
    step = float(np.clip(0.33 + 0.27 * speed + rng.normal(0.0, 0.03), 0.35, 0.8))
    return dict(
        speed=speed,
        step=step,
        duty=rng.uniform(0.58, 0.64),
        width=rng.uniform(0.07, 0.12),
        toe_out=rng.uniform(0.0, 0.15),
        clearance=rng.uniform(0.11, 0.16),
        pitch=np.arcsin(0.075 / LEN[10]) + rng.uniform(-0.05, 0.05),  # ankle ~7.5 cm up
        heel_rise=rng.uniform(0.3, 0.6),  # extra foot pitch at toe-off, rad
        turn_bias=rng.uniform(-0.45, 0.45),  # rad/s
        turn_amp=rng.uniform(0.0, 0.6, size=2),
        turn_freq=rng.uniform(0.05, 0.3, size=2),
        turn_phase=rng.uniform(0, 2 * np.pi, size=2),
        heading0=rng.uniform(-np.pi, np.pi),
        phase0=rng.uniform(0.0, 1.0),
        bob=rng.uniform(0.01, 0.03),
        sway=rng.uniform(0.0, 0.025),
        twist=rng.uniform(0.03, 0.12),
        lean=rng.uniform(0.0, 0.12) + 0.05 * speed,
        arm_swing=rng.uniform(0.15, 0.6),
        elbow=rng.uniform(0.15, 0.5),
        arm_out=rng.uniform(0.05, 0.2),
    )


def _path(p: dict, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heading ``(N,)`` and root xz ``(N, 3)`` along the path on a fine, increasing grid ``t``."""
    omega = p["turn_bias"] + sum(
        a * np.sin(2 * np.pi * f * t + ph) for a, f, ph in zip(p["turn_amp"], p["turn_freq"], p["turn_phase"])
    )
    dt = np.diff(t, prepend=t[0])
    heading = p["heading0"] + np.cumsum(omega * dt)
    mid = heading - 0.5 * omega * dt
    step = p["speed"] * dt[:, None] * np.stack([np.sin(mid), np.zeros_like(mid), np.cos(mid)], -1)
    pos = np.cumsum(step, axis=0)
    i0 = np.searchsorted(t, 0.0)
    return heading, pos - pos[i0]


def _foot_track(p, t, side, grid, heading, pos):
    """Toe positions ``(T, 3)``, foot yaw and pitch ``(T,)``, gait phase ``(T,)`` of one foot.

    The toe stays planted for the whole stance; the heel rises over its last 30 % (the foot
    pitches about the toe) and comes back down during the first half of the swing.
    """
    period = 2.0 * p["step"] / p["speed"]
    duty = p["duty"]
    t0 = (-p["phase0"] + (0.0 if side > 0 else 0.5)) * period
    cycle = (t - t0) / period
    k = np.floor(cycle)
    u = cycle - k

    def foothold(kk):
        t_mid = t0 + (kk + 0.5 * duty) * period
        h = np.interp(t_mid, grid, heading)
        xz = np.stack([np.interp(t_mid, grid, pos[:, i]) for i in range(3)], -1)
        left = np.stack([np.cos(h), np.zeros_like(h), -np.sin(h)], -1)
        return xz + side * p["width"] * left + LEN[10] * np.cos(p["pitch"]) * _foot_dir(h, 0.0), h + side * p["toe_out"]

    here, yaw_here = foothold(k)
    there, yaw_there = foothold(k + 1)
    s = np.clip((u - duty) / (1.0 - duty), 0.0, 1.0)  # 0 during stance
    progress = _smootherstep((s - 0.12) / 0.76)[:, None]  # lift first, then travel, then set down
    toe = here + progress * (there - here)
    toe[:, 1] = p["clearance"] * np.sin(np.pi * s)
    yaw = yaw_here + progress[:, 0] * (yaw_there - yaw_here)
    heel_up = np.where(u < duty, _smootherstep((u / duty - 0.7) / 0.3), 1.0 - _smootherstep(s / 0.5))
    pitch = p["pitch"] + p["heel_rise"] * heel_up
    return toe, yaw, pitch, u


def _foot_dir(yaw: np.ndarray, pitch) -> np.ndarray:
    """Unit ankle -> toe directions: heading ``yaw``, tipped down by ``pitch`` (radians)."""
    pitch = np.broadcast_to(pitch, np.shape(yaw))
    return np.stack([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)


def _walk(p: dict, length: int, fps: float) -> np.ndarray:
    t = np.arange(length) / fps
    grid = np.linspace(-4.0, length / fps + 4.0, int((length / fps + 8.0) * 400) + 1)
    heading_g, pos_g = _path(p, grid)
    heading = np.interp(t, grid, heading_g)
    path = np.stack([np.interp(t, grid, pos_g[:, i]) for i in range(3)], -1)

    toe_l, yaw_l, pitch_l, phase_l = _foot_track(p, t, +1, grid, heading_g, pos_g)
    toe_r, yaw_r, pitch_r, _ = _foot_track(p, t, -1, grid, heading_g, pos_g)
    ankle_l = toe_l - LEN[10] * _foot_dir(yaw_l, pitch_l)
    ankle_r = toe_r - LEN[11] * _foot_dir(yaw_r, pitch_r)
    gait = 2 * np.pi * phase_l  # left foot cycle; 0 = left heel strike

    # pelvis frame: heading + twist toward the swinging leg, slight forward tilt
    pelvis_yaw = heading + p["twist"] * np.cos(gait)
    rot_pelvis = _rot_y(pelvis_yaw) @ _rot_x(np.full(length, 0.5 * p["lean"]))
    left_dir = np.stack([np.cos(heading), np.zeros(length), -np.sin(heading)], -1)
    mid_stance = 2 * np.pi * 0.5 * p["duty"]
    bob = p["bob"] * np.cos(2 * (gait - mid_stance))
    sway = p["sway"] * np.cos(gait - mid_stance)

    mirror = np.array([-1.0, 1.0, 1.0])
    hip_off_l = _apply(rot_pelvis, LEN[1] * _unit(_HIP_DIR))
    hip_off_r = _apply(rot_pelvis, LEN[2] * _unit(_HIP_DIR * mirror))
    # highest pelvis such that both legs reach their planned ankles (knees kept a little bent)
    reach_l, reach_r = 0.985 * (LEN[4] + LEN[7]), 0.985 * (LEN[5] + LEN[8])
    base = path + sway[:, None] * left_dir
    bounds = []
    for off, ankle, reach in ((hip_off_l, ankle_l, reach_l), (hip_off_r, ankle_r, reach_r)):
        d_xz = np.linalg.norm((base + off - ankle)[:, [0, 2]], axis=-1)
        room = np.sqrt(np.clip(reach**2 - d_xz**2, 0.0, None))
        bounds.append(ankle[:, 1] - off[:, 1] - bob + room)
    height = min(np.min(bounds), LEN[4] + LEN[7] + LEN[1] * 0.8)

    j = np.zeros((length, N_JOINTS, 3))
    j[:, 0] = base + np.stack([np.zeros(length), height + bob, np.zeros(length)], -1)
    j[:, 1], j[:, 2] = j[:, 0] + hip_off_l, j[:, 0] + hip_off_r

    # legs: knee by two-bone IK toward the toes, then exact lengths down the chain
    legs = ((1, 4, 7, 10, ankle_l, yaw_l, pitch_l), (2, 5, 8, 11, ankle_r, yaw_r, pitch_r))
    for hip, knee_i, ankle_i, toe_i, ankle, yaw, pitch in legs:
        pole = _foot_dir(yaw, 0.0) + np.array([0.0, 0.05, 0.0])
        knee = _two_bone_knee(j[:, hip], ankle, LEN[knee_i], LEN[ankle_i], pole)
        j[:, knee_i] = j[:, hip] + LEN[knee_i] * _unit(knee - j[:, hip])
        j[:, ankle_i] = j[:, knee_i] + LEN[ankle_i] * _unit(ankle - j[:, knee_i])
        j[:, toe_i] = j[:, ankle_i] + LEN[toe_i] * _foot_dir(yaw, pitch)

    # spine bends forward and counter-twists the chest against the pelvis
    j[:, 3] = j[:, 0] + LEN[3] * _apply(rot_pelvis, _SPINE_DIR)
    rot_mid = _rot_y(heading) @ _rot_x(np.full(length, 0.8 * p["lean"]))
    j[:, 6] = j[:, 3] + LEN[6] * _apply(rot_mid, _SPINE_DIR)
    rot_chest = _rot_y(heading - 0.8 * p["twist"] * np.cos(gait)) @ _rot_x(np.full(length, p["lean"]))
    rot_chest = rot_chest @ _rot_z(0.02 * np.sin(gait))
    j[:, 9] = j[:, 6] + LEN[9] * _apply(rot_chest, _SPINE_DIR)
    j[:, 12] = j[:, 9] + LEN[12] * _apply(rot_chest, _unit(_NECK_DIR))
    j[:, 13] = j[:, 9] + LEN[13] * _apply(rot_chest, _unit(_COLLAR_DIR))
    j[:, 14] = j[:, 9] + LEN[14] * _apply(rot_chest, _unit(_COLLAR_DIR * mirror))
    rot_head = _rot_y(heading) @ _rot_x(np.full(length, -0.5 * p["lean"]))
    j[:, 15] = j[:, 12] + LEN[15] * _apply(rot_head, _unit(_HEAD_DIR))

    # arms swing against the same-side leg: the left arm is back at left heel strike
    for side, collar, shoulder, elbow, wrist, shift in ((1.0, 13, 16, 18, 20, 0.0), (-1.0, 14, 17, 19, 21, np.pi)):
        flip = np.array([side, 1.0, 1.0])
        j[:, shoulder] = j[:, collar] + LEN[shoulder] * _apply(rot_chest, _unit(_SHOULDER_DIR * flip))
        swing = -p["arm_swing"] * np.cos(gait + shift)
        out = _rot_z(np.full(length, -side * p["arm_out"]))
        upper = _apply(rot_chest @ out @ _rot_x(-swing), np.array([0.0, -1.0, 0.0]))
        j[:, elbow] = j[:, shoulder] + LEN[elbow] * upper
        fore = _apply(rot_chest @ out @ _rot_x(-(1.3 * swing + p["elbow"])), np.array([0.0, -1.0, 0.0]))
        j[:, wrist] = j[:, elbow] + LEN[wrist] * fore
    return j


def generate_motions(
    n: int,
    length: int = 196,
    seed: int = 0,
    fps: float = 20.0,
    speed_range: tuple[float, float] = (0.5, 1.6),
) -> np.ndarray:
    """``n`` walks -> ``(n, length, 22, 3)`` joint positions (m, y up, ``fps`` frames/s).

    Each walk's pelvis moves along its path at a constant speed drawn from ``speed_range``
    (m/s); seeded, so the same arguments give the same array.
    """
    if n < 0 or length < 2:
        raise ValueError(f"need n >= 0 and length >= 2, got n={n}, length={length}")
    lo, hi = speed_range
    if not 0.0 < lo <= hi <= 2.5:
        raise ValueError(f"speed_range must satisfy 0 < lo <= hi <= 2.5 m/s, got {speed_range}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, length, N_JOINTS, 3))
    for i in range(n):
        out[i] = _walk(_walk_params(rng, speed_range), length, fps)
        out[i, :, :, 1] -= out[i, :, :, 1].min()  # lowest toe on the floor
    return out
