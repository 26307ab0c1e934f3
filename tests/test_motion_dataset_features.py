"""Our HumanML3D features against the numbers the dataset's own code gives, block by block.

Fixture ``tests/fixtures/humanml3d_process_file.npz`` (153 KB) holds two 64-frame turning motions
(float32 joints) and the 63 x 263 feature rows that HumanML3D's ``process_file(joints, 0.002)``
returns for them. How the numbers were made, in /tmp, outside this repository:

* code: github.com/EricGuo5513/HumanML3D at commit 9176e8fb446b71c7d2a725eb5cf6fec1ae3b3c23,
  ``motion_representation.ipynb`` (``uniform_skeleton``, ``process_file``) with its
  ``common/skeleton.py``, ``common/quaternion.py`` and ``paramUtil.py``, globals set as in the
  notebook's main cell (fid_l = [7, 10], fid_r = [8, 11], face_joint_indx = [2, 1, 17, 16],
  l_idx1, l_idx2 = 5, 8). The only edit was ``np.float`` -> ``float`` for numpy 2.
* target skeleton: ``tgt_offsets`` = raw offsets x :data:`TEMPLATE_BONE_LENGTHS` (the bone
  lengths of the repository's sample ``new_joints/012314.npy``, i.e. of template 000021).
* that extraction reproduces the repository's own ``new_joint_vecs/012314.npy`` from
  ``new_joints/012314.npy`` to <= 8e-6 per block (rows 0-99; the last rows differ because the
  released joints lack the clip's final frame, which the heading's smoothing window sees).
* motions: two procedural walks (``generate_motions(2, length=64, seed=5)``) turned about the
  root frame by frame: "steady_turn" by 0.4 + 1.7 pi t / T rad; "sharp_turn_other_body" by a slow
  150-degree turn plus 92 degrees within 6 frames, with every bone rescaled by a factor in
  [0.9, 1.15], the root by 1.08, then rotated and moved off the origin. Both root headings
  cross +-180 degrees (at row 38).

Before the fix, ``joints_to_features`` was off by up to 0.52 (feature 0), 0.024 (root velocity),
0.08 (height, no retargeting), 0.23 (ric), 0.36 (rot6d), 0.14 (local velocity) on these, and on
sample 012314 by 0.18 / 0.038 / 0.47 / 0.67 / 0.15 (root rot, root vel, ric, rot6d, local vel).
"""

from pathlib import Path

import numpy as np
import pytest

from longgen.modalities.motion import features as F, skeleton as S

FIXTURE = Path(__file__).parent / "fixtures" / "humanml3d_process_file.npz"
MOTIONS = ("steady_turn", "sharp_turn_other_body")
BLOCKS = {
    "root_rot": slice(0, 1), "root_vel": slice(1, 3), "height": slice(3, 4), "ric": slice(4, 67),
    "rot6d": slice(67, 193), "local_vel": slice(193, 259), "contacts": slice(259, 263),
}
# HumanML3D does its quaternion algebra in float32 (its *_np helpers call torch .float()) and the
# fixture is stored as float32; measured max |ours - theirs| per block: root_rot 2.2e-6,
# root_vel 9e-7, height 1.1e-7, ric 1.7e-6, rot6d 2.3e-5, local_vel 1.8e-6, contacts 0.
TOL = 1e-4


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURE) as z:
        return {m: (z[m + "_joints"].astype(np.float64), z[m + "_features"].astype(np.float64)) for m in MOTIONS}


@pytest.mark.parametrize("motion", MOTIONS)
def test_features_match_humanml3d_process_file_per_block(data, motion):
    joints, theirs = data[motion]
    ours = F.joints_to_features(joints)
    assert ours.shape == theirs.shape == (63, 263)
    errs = {name: float(np.abs(ours[:, sl] - theirs[:, sl]).max()) for name, sl in BLOCKS.items()}
    assert max(errs.values()) <= TOL, errs
    np.testing.assert_array_equal(ours[:, BLOCKS["contacts"]], theirs[:, BLOCKS["contacts"]])
    assert theirs[:, BLOCKS["contacts"]].sum() > 0  # some contacts are set, so the block is tested


@pytest.mark.parametrize("motion", MOTIONS)
def test_heading_crosses_180_and_the_arcsin_flip_is_kept(data, motion):
    joints, theirs = data[motion]
    consistent = F.joints_to_features(joints, dataset_arcsin=False)
    # only feature 0 of the crossing row differs, by its sign: the dataset's +Delta/2
    differs = np.nonzero(np.abs(consistent - F.joints_to_features(joints)) > 1e-12)
    assert differs[0].tolist() == [38] and differs[1].tolist() == [0]
    np.testing.assert_allclose(theirs[38, 0], -consistent[38, 0], atol=TOL)
    assert abs(theirs[38, 0]) > 0.02  # a real turn step (> 2.3 degrees of heading), not ~0
    # the consistent variant recovers the dataset's joints exactly; the dataset's own rows turn
    # every frame after the crossing by 4 |f0| of heading (the half-angle is off by 2 |f0|)
    target = F.dataset_joints(joints)[:-1]
    assert np.abs(F.recover_from_ric(consistent) - target).max() <= 1e-9
    assert np.abs(F.recover_from_ric(theirs) - target).max() > 0.05


def test_retargeting_gives_template_bones_and_scales_the_root(data):
    joints, _ = data["sharp_turn_other_body"]
    assert np.abs(S.bone_lengths(joints) - S.TEMPLATE_BONE_LENGTHS).max() > 0.01  # another body
    p = F.retarget(joints)
    np.testing.assert_allclose(S.bone_lengths(p), np.broadcast_to(S.TEMPLATE_BONE_LENGTHS, (64, 22)), atol=1e-9)
    leg = lambda lengths: lengths[..., 5] + lengths[..., 8]  # noqa: E731
    scale = leg(S.TEMPLATE_BONE_LENGTHS) / leg(S.bone_lengths(joints[0]))
    np.testing.assert_allclose(p[:, 0], joints[:, 0] * scale, atol=1e-12)
    # bone directions are kept
    d0, d1 = joints[:, 7] - joints[:, 4], p[:, 7] - p[:, 4]
    np.testing.assert_allclose(d1 / np.linalg.norm(d1, axis=-1, keepdims=True),
                               d0 / np.linalg.norm(d0, axis=-1, keepdims=True), atol=1e-12)
    with pytest.raises(ValueError, match=r"lengths must have shape \(22,\)"):
        F.retarget(joints, lengths=np.ones(21))
