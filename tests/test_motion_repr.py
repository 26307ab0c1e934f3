"""Motion representation: t2m skeleton, HumanML3D features both ways, keyframes, BVH."""

import numpy as np
import pytest
import torch

from longgen.modalities.motion import bvh, features as F, keyframes as K, procedural, skeleton as S

FPS = 20


def _yaw(v, angle):
    """Rotate (..., 3) about +y by angle (turns +Z toward +X); written out for the tests."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] + s * v[..., 2], v[..., 1], -s * v[..., 0] + c * v[..., 2]], -1)


def _turning_walk(T=80, turn=2 * np.pi):
    """The rest pose gliding forward while its heading sweeps through `turn` radians."""
    pose = S.rest_pose()
    t = np.arange(T) / FPS
    psi = 0.3 + turn * t / t[-1]
    root = np.stack([np.sin(t), 0.02 * np.sin(5 * t), 0.8 * t], -1)
    return np.stack([_yaw(pose - pose[0] * [1, 0, 1], psi[k]) + root[k] for k in range(T)])


@pytest.fixture(scope="module")
def walks():
    return procedural.generate_motions(4, length=120, seed=11)


# ----------------------------------------------------------------------------- skeleton
def test_skeleton_tables_agree():
    # parents from the kinematic chains equal the parents table (paramUtil.py)
    parents = [-1] * S.N_JOINTS
    for chain in S.KINEMATIC_CHAIN:
        for a, b in zip(chain[:-1], chain[1:]):
            parents[b] = a
    assert tuple(parents) == S.PARENTS
    rest = S.rest_pose()
    assert rest.shape == (22, 3) and rest[:, 1].min() == 0.0
    np.testing.assert_allclose(S.bone_lengths(rest), S.TEMPLATE_BONE_LENGTHS, atol=1e-12)
    # left is +X, and the body faces +Z: forward = up x across, across = (r_hip - l_hip) + (r_sdr - l_sdr)
    assert rest[1, 0] > 0 > rest[2, 0]
    across = (rest[2] - rest[1]) + (rest[17] - rest[16])
    fwd = np.cross([0, 1, 0], across)
    np.testing.assert_allclose(fwd / np.linalg.norm(fwd), [0, 0, 1], atol=1e-12)
    assert S.joint_index("root") == 0 and S.joint_index("right_wrist") == 21
    with pytest.raises(ValueError, match="left_toe"):
        S.joint_index("left_toe")


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize("smooth", [20.0, 0.0])
def test_round_trip_relative_and_absolute(walks, smooth):
    # the walks' headings stay inside (-180, 180) degrees, where the dataset's arcsin (feature 0)
    # inverts exactly; the turning walk sweeps 360 degrees, so it takes the consistent difference
    for joints, arcsin in [(walks[0], True), (walks[1], True), (_turning_walk(), False)]:
        canon = F.dataset_joints(joints)
        feats = F.joints_to_features(joints, smooth_sigma=smooth, dataset_arcsin=arcsin)
        assert feats.shape == (len(joints) - 1, 263)
        err_rel = np.abs(F.recover_from_ric(feats) - canon[:-1]).max()
        err_abs = np.abs(F.recover_from_ric_abs(F.to_abs_root(feats)) - canon[:-1]).max()
        assert err_rel <= 1e-5 and err_abs <= 1e-5, (err_rel, err_abs)
        # the 6-D rotations reproduce the joints by forward kinematics too
        err_rot = np.abs(F.recover_from_rot(feats, S.bone_lengths(canon[0])) - canon[:-1]).max()
        assert err_rot <= 1e-5, err_rot


def test_first_frame_identity_and_its_alternative(walks):
    joints = walks[0]
    psi = np.arctan2(*F._ik_forward(F.dataset_joints(joints), 20.0)[:, [0, 2]].T)  # smoothed headings
    f = F.joints_to_features(joints)
    # the dataset gives frame 0 the identity: row 0 holds half of frame 1's absolute heading
    assert f[0, 0] == pytest.approx(-psi[1] / 2, abs=1e-12)
    assert abs(psi[0]) > 0.01  # frame 0's own smoothed heading is not 0, so rows 0 and 1 jump
    g = F.joints_to_features(joints, identity_first_frame=False)
    assert g[0, 0] == pytest.approx(-(psi[1] - psi[0]) / 2, abs=1e-12)
    np.testing.assert_allclose(g[1:, 0], f[1:, 0], atol=1e-12)  # later steps are the same
    assert np.abs(F.recover_from_ric(g) - F.dataset_joints(joints)[:-1]).max() <= 1e-9
    # the other blocks are the same motion seen from a frame turned by psi_0 (rows >= 1)
    assert np.abs(g[1:, 4:67] - f[1:, 4:67]).max() > 1e-3


def test_torch_float64_batched_recovery(walks):
    feats = np.stack([F.joints_to_features(j) for j in walks])  # (4, 119, 263)
    out = F.recover_from_ric(torch.from_numpy(feats))
    assert out.dtype == torch.float64 and out.shape == (4, 119, 22, 3)
    for i, j in enumerate(walks):
        assert np.abs(out[i].numpy() - F.dataset_joints(j)[:-1]).max() <= 1e-5


def test_canonicalize_floor_origin_facing():
    joints = _turning_walk() + np.array([3.0, 0.7, -2.0])
    c = F.canonicalize(joints)
    assert abs(c[..., 1].min()) < 1e-12
    np.testing.assert_allclose(c[0, 0, [0, 2]], 0.0, atol=1e-12)
    across = (c[0, 2] - c[0, 1]) + (c[0, 17] - c[0, 16])
    assert abs(across[2]) < 1e-12 and across[0] < 0  # right is -X: facing +Z
    # a rigid motion: distances between joints are unchanged
    np.testing.assert_allclose(S.bone_lengths(c), S.bone_lengths(joints), atol=1e-12)


def test_features_of_straight_glide_are_closed_form():
    # rest pose facing +Z, moving along +Z at v m/s, no rotation: every feature is known
    T, pose = 30, S.rest_pose()
    for v, contact in ((0.5, 1.0), (1.2, 0.0)):  # contact iff (v / fps)^2 < 0.002
        joints = np.stack([pose + [0, 0, v * k / FPS] for k in range(T)])
        f = F.joints_to_features(joints)
        np.testing.assert_allclose(f[:, 0], 0.0, atol=1e-12)
        np.testing.assert_allclose(f[:, 1:3], np.tile([0.0, v / FPS], (T - 1, 1)), atol=1e-12)
        np.testing.assert_allclose(f[:, 3], pose[0, 1], atol=1e-12)
        np.testing.assert_allclose(f[:, 4:67], np.tile((pose[1:] - pose[0] * [1, 0, 1]).ravel(), (T - 1, 1)), atol=1e-12)
        # the rest pose is HumanML3D's zero-rotation pose: every local rotation is the identity
        np.testing.assert_allclose(f[:, 67:193], np.tile([1, 0, 0, 0, 1, 0], (T - 1, 21)), atol=1e-12)
        np.testing.assert_allclose(f[:, 193:259], np.tile([0, 0, v / FPS], (T - 1, 22)), atol=1e-12)
        np.testing.assert_array_equal(f[:, 259:], contact)


def _qbetween_yaw(forward):
    """HumanML3D's root quaternion: minimal rotation taking forward (xz) to +Z, as (w, x, y, z)."""
    v = np.cross(forward, [0.0, 0.0, 1.0])
    w = np.linalg.norm(forward, axis=-1) + forward[..., 2]
    q = np.concatenate([w[..., None], v], -1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def test_root_rotation_velocity_matches_humanml3d_arcsin():
    # heading stays within (-180, 180) degrees, where HumanML3D's arcsin formula is valid
    joints = _turning_walk(T=40, turn=2.0)
    f = F.joints_to_features(joints, smooth_sigma=0.0)
    c = F.dataset_joints(joints)
    # the root rotation's across vector: left hip - right hip + right shoulder - left shoulder
    across = (c[:, 1] - c[:, 2]) + (c[:, 17] - c[:, 16])
    fwd = np.cross([0, 1, 0], across)
    fwd /= np.linalg.norm(fwd, axis=-1, keepdims=True)
    q = _qbetween_yaw(fwd)  # (T, 4)
    q[0] = [1.0, 0.0, 0.0, 0.0]  # frame 0 is the identity
    # y component of q[t+1] * inv(q[t]) for yaw-only quaternions: w1 (-y0) + y1 w0
    y_rel = -q[1:, 0] * q[:-1, 2] + q[1:, 2] * q[:-1, 0]
    np.testing.assert_allclose(f[:, 0], np.arcsin(y_rel), atol=1e-12)


def test_abs_root_layout_and_inverse(walks):
    f = F.joints_to_features(walks[0])
    canon = F.canonicalize(walks[0])
    fa = F.to_abs_root(f)
    np.testing.assert_allclose(fa[:, 1], canon[:-1, 0, 0], atol=1e-10)  # x
    np.testing.assert_allclose(fa[:, 2], canon[:-1, 0, 2], atol=1e-10)  # z
    np.testing.assert_allclose(fa[:, 3], canon[:-1, 0, 1], atol=1e-12)  # y
    np.testing.assert_allclose(fa[1:, 0], np.cumsum(f[:-1, 0]), atol=1e-12)
    back = F.from_abs_root(fa)
    np.testing.assert_allclose(back[:-1], f[:-1], atol=1e-10)
    np.testing.assert_allclose(back[-1, :3], back[-2, :3])  # last row repeats the one before


def test_joint_feature_indices_partition_263():
    owner = np.full(263, -1)
    for j in range(22):
        idx = F.joint_feature_indices(j)
        assert (owner[idx] == -1).all()
        owner[idx] = j
    assert (owner >= 0).all()
    assert F.joint_feature_indices("root") == [0, 1, 2, 3, 193, 194, 195]
    assert F.joint_feature_indices("left_foot") == [31, 32, 33, 121, 122, 123, 124, 125, 126, 223, 224, 225, 260]


def test_normalizer_fit_load_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 263)) * rng.uniform(0.5, 3, size=263) + rng.normal(size=263)
    norm = F.Normalizer.fit(x, feat_bias=5.0)
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0), atol=1e-12)
    sd = x.std(0)
    for sl, bias in ((slice(0, 1), 5), (slice(1, 3), 5), (slice(3, 4), 5), (slice(4, 67), 1),
                     (slice(67, 193), 1), (slice(193, 259), 1), (slice(259, 263), 5)):
        np.testing.assert_allclose(norm.std.numpy()[sl], sd[sl].mean() / bias, atol=1e-12)
    xt = torch.from_numpy(x).T[None, :, None, :]  # (1, 263, 1, 50), the model's layout
    z = norm.normalize(xt, dim=1)
    np.testing.assert_allclose(z[0, :, 0].T.numpy(), (x - x.mean(0)) / norm.std.numpy(), atol=1e-12)
    np.testing.assert_allclose(norm.denormalize(z, dim=1).numpy(), xt.numpy(), atol=1e-12)

    np.save(tmp_path / "Mean_abs_3d.npy", x.mean(0))
    np.save(tmp_path / "Std_abs_3d.npy", sd)
    loaded = F.Normalizer.from_dir(tmp_path, abs_root=True)
    np.testing.assert_array_equal(loaded.std.numpy(), sd)
    with pytest.raises(FileNotFoundError, match="Mean.npy"):
        F.Normalizer.from_dir(tmp_path, abs_root=False)


# ----------------------------------------------------------------------------- keyframes
def test_keyframe_modes():
    assert K.keyframe_frames("every", 20, every=5) == [0, 5, 10, 15]
    assert K.keyframe_frames("first_half", 196) == list(range(98, 196))
    assert K.keyframe_frames("last_half", 196) == list(range(98))
    assert K.keyframe_frames("middle_half", 10) == [0, 1, 7, 8, 9]
    assert K.keyframe_frames("frames", 10, frames=[7, 0, 7]) == [0, 7]
    with pytest.raises(ValueError, match=r"\[12, -1\]"):
        K.keyframe_frames("frames", 10, frames=[3, 12, -1])
    with pytest.raises(ValueError, match="allowed"):
        K.keyframe_frames("random", 10)


def test_feature_mask_all_and_joint_subset():
    m = K.feature_mask([0, 5], 8)
    assert m.shape == (263, 8)
    assert (m[:, [0, 5]] == 0).all() and (m[:, [1, 2, 3, 4, 6, 7]] == 1).all()
    r = K.feature_mask([2], 4, joints=["root"])
    zeros = torch.nonzero(r == 0).tolist()
    assert zeros == [[i, 2] for i in (0, 1, 2, 3, 193, 194, 195)]
    both = K.feature_mask([1], 3, joints=["root", 20])
    assert int((both == 0).sum()) == 7 + 12


def test_load_motion_npy(tmp_path, walks):
    np.save(tmp_path / "j.npy", walks[0])
    np.save(tmp_path / "f.npy", F.joints_to_features(walks[0]))
    np.save(tmp_path / "flat.npy", walks[0].reshape(len(walks[0]), 66))
    assert K.load_motion(tmp_path / "j.npy").kind == "joints"
    assert K.load_motion(tmp_path / "f.npy").data.shape == (119, 263)
    np.testing.assert_array_equal(K.load_motion(tmp_path / "flat.npy").data, walks[0])
    np.save(tmp_path / "bad.npy", np.zeros((10, 24, 3)))
    with pytest.raises(ValueError, match=r"\(10, 24, 3\).*\(T, 22, 3\)"):
        K.load_motion(tmp_path / "bad.npy")
    nan = walks[0].copy()
    nan[[3, 17], 5, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"frames \[3, 17\]"):
        K.load_motion(tmp_path / "nan.npy")
    with pytest.raises(FileNotFoundError):
        K.load_motion(tmp_path / "missing.npy")


def test_load_motion_resamples_linear_motion_exactly(tmp_path):
    # constant velocity sampled at 30 fps -> 20 fps equals sampling it at 20 fps
    pose, vel = S.rest_pose(), np.array([0.3, 0.0, 1.1])
    at = lambda fps, n: np.stack([pose + vel * k / fps for k in range(n)])  # noqa: E731
    np.save(tmp_path / "m30.npy", at(30, 46))  # 1.5 s
    out = K.load_motion(tmp_path / "m30.npy", fps=30).data
    assert out.shape == (31, 22, 3)
    np.testing.assert_allclose(out, at(20, 31), atol=1e-12)


# ----------------------------------------------------------------------------- BVH
def test_bvh_round_trip(tmp_path, walks):
    worst = 0.0
    for joints in walks:
        path = bvh.save_bvh(tmp_path / "w.bvh", joints)
        back = bvh.load_bvh(path)
        worst = max(worst, np.abs(back - joints).max())
    assert worst < 1e-6, worst  # measured 2.5e-8 m: 6 decimals of centimetres and degrees


def test_bvh_mocap_names_metres_and_frame_rate(tmp_path):
    names = ["Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot",
             "RightFoot", "Spine2", "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder",
             "Head", "LeftArm", "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand"]
    walk = procedural.generate_motions(1, length=60, seed=2, fps=30)[0]
    path = bvh.save_bvh(tmp_path / "m.bvh", walk, fps=30, scale=1.0, names=["mixamorig:" + n for n in names])
    native = bvh.load_bvh(path, fps=None)  # auto-detects metres (rig under 3 units tall)
    assert np.abs(native - walk).max() < 1e-5
    at20 = bvh.load_bvh(path)
    assert at20.shape == (40, 22, 3)  # 59 / 30 s -> frames 0 .. 39 at 20 fps
    np.testing.assert_allclose(at20[2], native[3], rtol=0, atol=1e-9)  # t = 0.1 s falls on a frame
    np.testing.assert_allclose(at20[1], 0.5 * (native[1] + native[2]), rtol=0, atol=1e-9)  # t = 0.05 s
    # an unknown rig names what it misses
    path.write_text(path.read_text().replace("mixamorig:LeftHand", "mixamorig:LeftPaw"))
    with pytest.raises(ValueError, match=r"left_wrist.*LeftPaw"):
        bvh.load_bvh(path)


def test_bvh_smpl_names_in_centimetres(tmp_path, walks):
    smpl = ["Pelvis", "L_Hip", "R_Hip", "Spine1", "L_Knee", "R_Knee", "Spine2", "L_Ankle", "R_Ankle",
            "Spine3", "L_Foot", "R_Foot", "Neck", "L_Collar", "R_Collar", "Head", "L_Shoulder",
            "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist"]
    path = bvh.save_bvh(tmp_path / "s.bvh", walks[1], scale=100.0, names=smpl)
    assert np.abs(bvh.load_bvh(path) - walks[1]).max() < 1e-6
