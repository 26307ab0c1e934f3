"""The 22-joint t2m skeleton of HumanML3D: names, tree, template bone lengths, rest pose.

Numbers follow HumanML3D's ``paramUtil.py`` (``t2m_raw_offsets``, ``t2m_kinematic_chain``) and
``motion_process.py`` (``fid_l``, ``fid_r``, ``face_joint_indx``); the same file ships in GMD and
CondMDI as ``data_loaders/humanml/utils/paramUtil.py``. Template bone lengths are those of the
template clip 000021, frame 0, that HumanML3D retargets every clip to, as measured on the
repository's retargeted sample clip 012314. The joints are SMPL joints 0-21.

Conventions: metres, y up, a body at rest faces +Z, its left side is +X.
"""

from __future__ import annotations

import numpy as np

N_JOINTS = 22

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
)

# Five chains from the pelvis (right leg, left leg, spine+head, right arm, left arm).
KINEMATIC_CHAIN: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)

PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)

# Unit direction of each bone (parent -> joint) in HumanML3D's zero-rotation pose.
RAW_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
     [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
     [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
     [0, -1, 0]],
    dtype=np.float64,
)  # (22, 3)

# |joint - parent| of template clip 000021, frame 0, metres; entry 0 (the root) is 0. HumanML3D
# retargets every clip to these (``uniform_skeleton``), so they are also the bone lengths of its
# released sample ``new_joints/012314.npy``: the values are that clip's per-bone means, which vary
# by < 2e-6 over its 170 frames (float32). (facts/motion.md's 4-decimal list is off by up to 2.3e-4.)
TEMPLATE_BONE_LENGTHS = np.array(
    [0.0, 0.103074, 0.109883, 0.131568, 0.393623, 0.390188, 0.143190, 0.432433, 0.425643,
     0.057365, 0.143382, 0.149419, 0.219360, 0.137487, 0.143383, 0.103039, 0.131614, 0.122984,
     0.256840, 0.263092, 0.266012, 0.269876],
    dtype=np.float64,
)  # (22,)

# Foot joints (motion_process.py): left ankle/foot, right ankle/foot.
FID_L: tuple[int, int] = (7, 10)
FID_R: tuple[int, int] = (8, 11)
# The four joints whose contacts are features 259:263, in that order.
CONTACT_JOINTS: tuple[int, ...] = FID_L + FID_R
# Facing joints: right hip, left hip, right shoulder, left shoulder (``face_joint_indx``). HumanML3D
# reads them in this order when it turns a clip to face +Z, but its per-frame root rotation
# (``Skeleton.inverse_kinematics_np``) unpacks the same list as left hip, right hip, ... : there
# across = (j1 - j2) + (j17 - j16), the hip term reversed. See ``features._ik_forward``.
FACE_JOINTS: tuple[int, int, int, int] = (2, 1, 17, 16)
# Lower-leg bones whose summed length sets the root's scale when retargeting (``l_idx1, l_idx2``).
LEG_JOINTS: tuple[int, int] = (5, 8)


def joint_index(name_or_index: str | int) -> int:
    """Index of a joint given its t2m name (``'left_wrist'``, ``'root'`` = pelvis) or index."""
    if isinstance(name_or_index, (int, np.integer)):
        if not 0 <= int(name_or_index) < N_JOINTS:
            raise ValueError(f"joint index {name_or_index} is outside [0, {N_JOINTS})")
        return int(name_or_index)
    name = str(name_or_index).lower()
    if name == "root":
        return 0
    if name not in JOINT_NAMES:
        raise ValueError(f"unknown joint {name_or_index!r}; allowed: 'root', {list(JOINT_NAMES)}")
    return JOINT_NAMES.index(name)


def children(joint: int) -> list[int]:
    """The joints whose parent is ``joint``."""
    return [j for j, p in enumerate(PARENTS) if p == joint]


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """``(..., 22, 3)`` positions -> ``(..., 22)`` distances to the parent (0 for the root)."""
    joints = np.asarray(joints)
    parents = np.array(PARENTS[1:])
    lengths = np.linalg.norm(joints[..., 1:, :] - joints[..., parents, :], axis=-1)
    return np.concatenate([np.zeros(lengths.shape[:-1] + (1,)), lengths], axis=-1)


def rest_pose(bone_lengths: np.ndarray | None = None) -> np.ndarray:
    """HumanML3D's zero-rotation pose: each bone along its raw offset, lowest joint on the floor.

    Returns ``(22, 3)`` positions in metres (y up, facing +Z, pelvis above the origin). Arms
    hang straight down from the collars and the head bone points forward, as the raw offsets say.
    """
    lengths = TEMPLATE_BONE_LENGTHS if bone_lengths is None else np.asarray(bone_lengths, float)
    if lengths.shape != (N_JOINTS,):
        raise ValueError(f"bone_lengths must have shape ({N_JOINTS},), got {lengths.shape}")
    pose = np.zeros((N_JOINTS, 3))
    for j in range(1, N_JOINTS):  # parents come before children in this ordering
        pose[j] = pose[PARENTS[j]] + RAW_OFFSETS[j] * lengths[j]
    pose[:, 1] -= pose[:, 1].min()
    return pose
