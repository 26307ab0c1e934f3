"""Motion metrics on motions with known answers, and the procedural walk generator."""

import numpy as np
import pytest
import torch

from longgen.modalities.motion import features as F, metrics as M, procedural, skeleton as S

FPS = 20


def _still(T=40):
    return np.repeat(S.rest_pose()[None], T, axis=0)  # (T, 22, 3)


# ----------------------------------------------------------------------------- foot skating
def test_still_pose_has_no_skating_and_no_jitter():
    j = _still()
    assert M.foot_skating_ratio(j) == 0.0
    assert M.jitter(j) == 0.0


def test_sliding_foot_skating_ratio_is_exact():
    T = 41  # 40 frame steps
    j = _still(T)
    j[:, :, 1] += 0.5  # body in the air ...
    j[:, 10, 1] = 0.01  # ... except the left foot, on the ground
    j[:, 10, 0] += 0.7 * np.arange(T) / FPS  # sliding at 0.7 m/s
    # the 5-step average (zeros beyond the ends) is 0.7 * 3/5 = 0.42 < 0.5 at the first and last
    # steps and 0.7 * 4/5 = 0.56 > 0.5 one step in: 38 of 40 steps skate
    assert M.foot_skating_ratio(j) == pytest.approx(38 / 40, abs=1e-12)
    # the same foot lifted to 5 cm in the second half: contact needs both ends below 5 cm
    j[20:, 10, 1] = 0.05
    assert M.foot_skating_ratio(j) == pytest.approx(18 / 40, abs=1e-12)  # steps 1..18 (step 19 ends lifted)
    # slower than 0.5 m/s never skates; batched input gives one ratio per motion
    slow = _still(T)
    slow[:, 11, 1] = 0.0
    slow[:, 11, 2] += 0.45 * np.arange(T) / FPS
    np.testing.assert_allclose(M.foot_skating_ratio(np.stack([slow, slow])), [0.0, 0.0])


# ----------------------------------------------------------------------------- trajectory, keyframes
def test_trajectory_errors_with_known_offsets():
    gt = np.repeat(_still(30)[None], 3, axis=0)  # (3, 30, 22, 3)
    pred = gt.copy()
    pred[0, :, :, 0] += 0.1  # 0.1 m off everywhere
    pred[1, 10, :, 2] += 0.3  # 0.3 m off at frame 10 only
    pred[2, :, :, 1] += 1.0  # height is not part of the trajectory error
    keys = [0, 10, 20, 29]
    out = M.trajectory_errors(pred, gt, keys)
    assert out["mean_error"] == pytest.approx((0.1 + 0.3 / 4 + 0.0) / 3, abs=1e-12)
    assert out["fail_0.2"] == pytest.approx(1 / 3)  # sample 1 has one keyframe over 0.2
    assert out["fail_0.5"] == 0.0
    assert out["kps_fail_0.2"] == pytest.approx(1 / 12)
    assert out["kps_fail_0.5"] == 0.0
    # per-sample keyframe lists, torch input
    out2 = M.trajectory_errors(torch.from_numpy(pred), torch.from_numpy(gt), [[0], [10], [5, 6]])
    assert out2["mean_error"] == pytest.approx((0.1 + 0.3 + 0.0) / 3, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[30\]"):
        M.trajectory_errors(pred, gt, [0, 30])


def test_uneven_keyframe_lists_pad_with_the_last_frame_like_condmdi():
    """Expected numbers from CondMDI (github.com/setarehc/diffusion-motion-inbetweening, commit
    0c58473066ef582b9464a66d5542e0d1b6ae66c8): ``sample/gmd/condition.py``
    ``compute_kps_error_arbitrary`` (traj_only True and False) fed to
    ``data_loaders/humanml/utils/metrics.py`` ``calculate_trajectory_error(strict=True)`` and
    ``calculate_keyframe_error``, run on this very case (float32 torch; tolerance 1e-6)."""
    B, T = 3, 30
    gt = np.repeat(_still(T)[None], B, axis=0)
    pred = gt.copy()
    keys = [[0, 10, 20], [5], [3, 7, 12, 29]]
    # root offsets (m) at the keyframes and at the last frame 29, which only sample 2 observes
    for i, (frames, offs, axis) in enumerate([([0, 10, 20, 29], [0.05, 0.1, 0.15, 0.7], 0),
                                              ([5, 29], [0.04, 0.3], 2),
                                              ([3, 7, 12, 29], [0.07, 0.09, 0.25, 0.06], 0)]):
        for k, o in zip(frames, offs):
            pred[i, k, :, axis] += o
    out = M.trajectory_errors(pred, gt, keys)
    # CondMDI's errors per padded slot: [.05 .1 .15 .7], [.04 .3 .3 .3], [.07 .09 .25 .06]
    condmdi = {"fail_0.2": 1.0, "fail_0.5": 0.33333331, "kps_fail_0.2": 0.41666666,
               "kps_fail_0.5": 0.08333334, "mean_error": 0.08583333}
    for k, v in condmdi.items():
        assert out[k] == pytest.approx(v, abs=1e-6), (k, out[k], v)
    assert M.keyframe_error(pred, gt, keys) == pytest.approx(0.08583333343267441, abs=1e-6)
    # judged alone (nothing padded), samples 0 and 1 pass: only their last frames fail them
    alone = [M.trajectory_errors(pred[[i]], gt[[i]], [keys[i]])["fail_0.2"] for i in range(B)]
    assert alone == [0.0, 0.0, 1.0]


def test_keyframe_error_mean_3d_joint_distance():
    gt = _still(20)
    pred = gt.copy()
    pred[5, :11] += [0.3, 0.4, 0.0]  # 0.5 m on half the joints (11 of 22) at frame 5
    pred[7] += [0.0, 0.0, 0.2]  # 0.2 m on every joint at frame 7
    assert M.keyframe_error(pred, gt, [5, 7]) == pytest.approx((0.25 + 0.2) / 2, abs=1e-12)
    assert M.keyframe_error(pred, gt, [0, 1]) == 0.0


# ----------------------------------------------------------------------------- jitter
def test_jitter_zero_for_constant_acceleration_and_6c_for_cubic():
    t = np.arange(30) / FPS
    j = _still(30)
    quad = j + (1.5 * t**2 - 0.7 * t)[:, None, None] * np.array([1.0, 0.2, -0.5])
    assert M.jitter(quad) == pytest.approx(0.0, abs=1e-9)
    c = 0.8
    cubic = j + (c * t**3)[:, None, None] * np.array([0.0, 0.0, 1.0])
    assert M.jitter(cubic, fps=FPS) == pytest.approx(6 * c, rel=1e-9)


# ----------------------------------------------------------------------------- procedural walks
@pytest.fixture(scope="module")
def walks():
    return procedural.generate_motions(16, length=196, seed=0, speed_range=(0.8, 1.4))


def test_walks_keep_template_bone_lengths(walks):
    assert walks.shape == (16, 196, 22, 3)
    err = np.abs(S.bone_lengths(walks) - S.TEMPLATE_BONE_LENGTHS).max()
    assert err < 1e-6, err  # measured ~1e-15


def test_walks_plant_their_feet(walks):
    ratios = M.foot_skating_ratio(walks)
    assert ratios.max() <= 0.01, ratios  # measured 0.0 on 32 walks (seed 0)
    assert walks[..., 1].min() == pytest.approx(0.0, abs=1e-12)  # on the floor
    # stance lasts 58-64 % of a gait cycle; planted feet set HumanML3D's contact flags
    contacts = np.stack([F.joints_to_features(w)[:, 259:] for w in walks[:4]])
    assert 0.5 < contacts.mean() < 0.75


def test_walk_speeds_in_range_and_seeded(walks):
    speed = np.linalg.norm(np.diff(walks[:, :, 0, [0, 2]], axis=1), axis=-1).mean(1) * FPS
    assert speed.min() >= 0.8 * 0.98 and speed.max() <= 1.4 * 1.03, speed
    again = procedural.generate_motions(2, length=196, seed=0, speed_range=(0.8, 1.4))
    np.testing.assert_array_equal(again, walks[:2])
    assert np.abs(procedural.generate_motions(1, length=196, seed=1) - walks[:1]).max() > 0.1
    with pytest.raises(ValueError, match="speed_range"):
        procedural.generate_motions(1, speed_range=(1.0, 0.5))


def test_boundary_acceleration_ratio_of_a_kinked_path():
    """A joint moving at 1 m/frame that turns to 3 m/frame at frame 10: the only nonzero
    acceleration (2 m/frame^2, squared 4, averaged over 22 x 3 values of which one moves) is
    centred at frame 10, which boundary 10 touches; a smooth run scores 1."""
    from longgen.modalities.motion.metrics import boundary_acceleration_ratio

    T = 30
    j = np.zeros((T, 22, 3))
    t = np.arange(T, dtype=np.float64)
    j[:, 0, 0] = np.where(t <= 10, t, 10 + 3 * (t - 10))
    j[:, 0, 1] = 0.5 * t ** 2            # constant acceleration 1 everywhere
    # accelerations: 1 on axis y at every frame, plus 2 on axis x at frame 10
    at_seam = (1 + (1 + 4)) / 2           # frames 9 and 10 (each a mean over 66 values; so is inside)
    assert boundary_acceleration_ratio(j, [10]) == pytest.approx(at_seam / 1.0, rel=1e-12)
    smooth = j.copy()
    smooth[:, 0, 0] = t
    assert boundary_acceleration_ratio(smooth, [10]) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="not inside"):
        boundary_acceleration_ratio(j, [0])
