"""``longgen motion`` end to end: a CondMDI checkpoint through the CLI, in-betweening on the
builtin prior (ALM against its baselines), the extra outputs (mp4, BVH, GLB, SMPL fit) and
bad input refused with exit code 2. Tiny random models and synthetic SMPL files only."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from longgen.cli import main
from longgen.engine import Engine, EngineConfig
from longgen.planner import plan_windows
from longgen.priors import SharedBasisGMM
from longgen.modalities.motion.builtin import builtin_motion_prior, motion_features
from longgen.modalities.motion.bvh import load_bvh, save_bvh
from longgen.modalities.motion.condmdi import CondMDIConfig, CondMDIDenoiser, CondMDIUNet, load_condmdi, save_condmdi
from longgen.modalities.motion.export import SMPL_PARENTS, export_smpl
from longgen.modalities.motion.features import Normalizer, recover_from_ric_abs
from longgen.modalities.motion.keyframes import feature_mask
from longgen.modalities.motion.metrics import foot_skating_ratio, jitter, keyframe_error
from longgen.modalities.motion.procedural import generate_motions
from longgen.modalities.motion.skeleton import PARENTS, bone_lengths, rest_pose

FRAMES = 196


def run_cli(argv, capsys):
    code = main(argv + ["--no-progress"])
    out, err = capsys.readouterr()
    info = json.loads(out.strip().splitlines()[-1]) if code == 0 else None
    return code, info, err


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def walk_file(tmp_path_factory):
    """A 197-frame procedural walk the prior was not fitted to (seed 1000): 196 feature rows."""
    path = tmp_path_factory.mktemp("walk") / "walk.npy"
    np.save(path, generate_motions(1, FRAMES + 1, seed=1000)[0])
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A CondMDI U-Net with a tiny card and random weights, in the released format, with
    Mean_abs_3d/Std_abs_3d (the builtin prior's statistics) beside it."""
    d = tmp_path_factory.mktemp("condmdi")
    cfg = CondMDIConfig(latent_dim=32, dim_mults=(1, 2))
    torch.manual_seed(0)
    model = CondMDIUNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    path = save_condmdi(model, cfg, d, step=500000)
    norm = Normalizer.fit(np.stack([motion_features(w) for w in generate_motions(8, FRAMES + 1, seed=5)]))
    np.save(d / "Mean_abs_3d.npy", norm.mean.numpy())
    np.save(d / "Std_abs_3d.npy", norm.std.numpy())
    return path


def synthetic_smpl(root, n_per_joint: int = 8, seed: int = 0):
    """A well-formed SMPL pickle: a little cube of vertices at each of the 24 joints of the t2m
    rest pose (plus hands), each skinned to its joint; J_regressor averages each cube, so the
    rest joints are exactly the t2m rest pose. Random shape and pose directions."""
    rng = np.random.default_rng(seed)
    joints = np.concatenate([rest_pose(), np.zeros((2, 3))])
    joints[22] = joints[20] + [0, -0.08, 0]
    joints[23] = joints[21] + [0, -0.08, 0]
    corners = 0.02 * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    v = (joints[:, None] + corners[None]).reshape(-1, 3)                     # (192, 3)
    V = v.shape[0]
    owner = np.repeat(np.arange(24), n_per_joint)
    cube_faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                           [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    data = {
        "v_template": v,
        "shapedirs": 0.01 * rng.standard_normal((V, 3, 10)),
        "posedirs": 0.001 * rng.standard_normal((V, 3, 207)),
        "J_regressor": np.eye(24)[owner].T / n_per_joint,                     # (24, V)
        "weights": np.eye(24)[owner],                                         # (V, 24)
        "kintree_table": np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(24))]),
        "f": (cube_faces[None] + 8 * np.arange(24)[:, None, None]).reshape(-1, 3),
    }
    (root / "smpl").mkdir(parents=True, exist_ok=True)
    with open(root / "smpl" / "SMPL_NEUTRAL.pkl", "wb") as f:
        pickle.dump(data, f)
    return data


# --------------------------------------------------------------------------- CondMDI checkpoint


def hand_built(ckpt, walk_file, steps: int, text: torch.Tensor, guidance: float) -> np.ndarray:
    """The released ALM motion setup, spelled out independently of the CLI -> joints (196, 22, 3)."""
    from diffusers import DDPMScheduler

    from longgen.engine import Given

    model, cfg = load_condmdi(ckpt)
    norm = Normalizer.from_dir(ckpt.parent, abs_root=True)
    feats = motion_features(np.load(walk_file))
    known = 1 - feature_mask(list(range(0, FRAMES, 10)), FRAMES)
    given = Given(norm.normalize(torch.from_numpy(feats)).T.float(), known)
    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                        prediction_type="sample", variance_type="fixed_small", clip_sample=False)
    config = EngineConfig(method="alm", w1=1.0, w2=0.005, steps=steps, observed="noise",
                          given_path="noise", guidance_scale=guidance, seed=0)
    from longgen.modalities.motion.recentre import RecentreWindows

    engine = Engine(CondMDIDenoiser(model, cfg), sch, plan_windows(FRAMES, 196, 98), (263, 196), -1,
                    config, cond=text, uncond=torch.zeros(1, 512), given=given,
                    window_transform=RecentreWindows(norm))
    z = torch.cat([c.latent for c in engine], dim=-1)                       # (263, 196)
    return recover_from_ric_abs(norm.denormalize(z.T.double())).numpy()


def test_condmdi_checkpoint_through_cli_equals_hand_built_engine(tmp_path, tiny_ckpt, walk_file, capsys):
    out = tmp_path / "m.npy"
    code, info, err = run_cli(["motion", "--model", str(tiny_ckpt), "--input", str(walk_file),
                               "--out", str(out), "--steps", "10", "--prompt", "",
                               "--w1", "1", "--impute", "none"], capsys)   # the released setup (CLI defaults: w1 2, spline)
    assert code == 0, err
    assert info["windows"] == 1 and info["guidance"] == 1.0 and info["keyframes"] == 20
    got = np.load(out)
    assert got.shape == (FRAMES, 22, 3)
    ref = hand_built(tiny_ckpt, walk_file, 10, torch.zeros(1, 512), 1.0)
    assert np.abs(got - ref).max() < 1e-4


def test_condmdi_text_prompt_with_guidance(tmp_path, tiny_ckpt, walk_file, capsys):
    """--prompt through a (tiny, local) CLIP and CondMDI's guidance 2.5 from args.json."""
    from longgen.modalities.motion.text import encode_text, load_text_encoder
    from tests.test_condmdi import _tiny_clip

    _tiny_clip(tmp_path / "clip")
    out = tmp_path / "t.npy"
    code, info, err = run_cli(["motion", "--model", str(tiny_ckpt), "--input", str(walk_file), "--out", str(out),
                               "--steps", "6", "--prompt", "a person walks", "--clip", str(tmp_path / "clip"),
                               "--w1", "1", "--impute", "none"], capsys)
    assert code == 0, err
    assert info["guidance"] == 2.5
    text = encode_text("a person walks", encoder=load_text_encoder(tmp_path / "clip"))
    assert text.abs().sum() > 0
    ref = hand_built(tiny_ckpt, walk_file, 6, text, 2.5)
    assert np.abs(np.load(out) - ref).max() < 1e-4
    plain = hand_built(tiny_ckpt, walk_file, 6, torch.zeros(1, 512), 1.0)
    assert np.abs(ref - plain).max() > 1e-3  # the text and the guidance change the result


def test_condmdi_long_motion_runs_in_windows(tmp_path, tiny_ckpt, capsys):
    # 300 frames, 196-frame windows at stride 98: starts 0, 98, then 104 aligned to the end
    out = tmp_path / "long.npy"
    code, info, err = run_cli(["motion", "--model", str(tiny_ckpt), "--frames", "300", "--out", str(out),
                               "--steps", "4"], capsys)
    assert code == 0, err
    assert info["windows"] == 3 and info["forwards"] > 0
    j = np.load(out)
    assert j.shape == (300, 22, 3) and np.isfinite(j).all()


def test_condmdi_wrong_key_and_missing_stats_refused(tmp_path, tiny_ckpt, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = torch.load(tiny_ckpt, weights_only=True)
    sd = dict(raw["model_avg"])
    sd["unet.not_a_layer.weight"] = sd.pop("unet.time_mlp.0.weight")
    torch.save(sd, bad / "model000500000.pt")
    (bad / "args.json").write_text((tiny_ckpt.parent / "args.json").read_text())
    for name in ("Mean_abs_3d.npy", "Std_abs_3d.npy"):
        (bad / name).write_bytes((tiny_ckpt.parent / name).read_bytes())
    code, _, err = run_cli(["motion", "--model", str(bad / "model000500000.pt"),
                            "--out", str(tmp_path / "x.npy"), "--steps", "2"], capsys)
    assert code == 2 and "unet.time_mlp.0.weight" in err and "unet.not_a_layer.weight" in err

    nostats = tmp_path / "nostats"
    nostats.mkdir()
    for name in ("model000500000.pt", "args.json"):
        (nostats / name).write_bytes((tiny_ckpt.parent / name).read_bytes())
    code, _, err = run_cli(["motion", "--model", str(nostats / "model000500000.pt"),
                            "--out", str(tmp_path / "y.npy"), "--steps", "2"], capsys)
    assert code == 2 and "Mean_abs_3d.npy" in err and "--mean-std" in err
    code, _, err = run_cli(["motion", "--model", str(nostats / "model000500000.pt"), "--mean-std",
                            str(tiny_ckpt.parent), "--out", str(tmp_path / "y.npy"), "--steps", "2"], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------- builtin prior


def test_shared_basis_eps_equals_separable_gmm():
    from longgen.priors import SeparableGMM

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(7, 7, generator=g, dtype=torch.float64)
    fa, fb = a @ a.T + torch.eye(5, dtype=torch.float64), b @ b.T + torch.eye(7, dtype=torch.float64)
    mu = torch.randn(6, 5, 7, generator=g, dtype=torch.float64)
    shared, general = SharedBasisGMM(mu, [fa, fb]), SeparableGMM(mu, [fa, fb])
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    for abar in (0.999, 0.5, torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)):
        assert (shared.eps(x, abar) - general.eps(x, abar)).abs().max() < 1e-12


def test_builtin_prior_samples_do_not_skate():
    # The first builtin prior (4 separable components) skated on ~72% of frames with jitter
    # ~750 m/s^3 (measured, see benchmarks/motion_inbetween.py); the walks themselves: 0 and ~55.
    prior, norm = builtin_motion_prior(FRAMES)
    x, _ = prior.sample(16, generator=torch.Generator().manual_seed(0))
    j = recover_from_ric_abs(norm.denormalize(x.transpose(1, 2))).numpy()
    assert foot_skating_ratio(j).mean() < 0.05
    assert jitter(j).mean() < 200.0


@pytest.fixture(scope="module")
def inbetween(tmp_path_factory, walk_file):
    """Keyframes every 10 frames of an unseen walk, 30 DDPM steps: joints per method."""
    d = tmp_path_factory.mktemp("inb")
    out = {}
    for m in ("alm", "syncsde", "replace", "ddpm"):
        assert main(["motion", "--input", str(walk_file), "--out", str(d / f"{m}.npy"), "--steps", "30",
                     "--method", m, "--keyframes", "every:10", "--impute", "none", "--no-progress"]) == 0
        out[m] = np.load(d / f"{m}.npy")
    ref = recover_from_ric_abs(torch.from_numpy(motion_features(np.load(walk_file), dataset=False))).numpy()
    return out, ref


def test_inbetweening_alm_beats_baselines_on_keyframes(inbetween):
    out, ref = inbetween
    keys = list(range(0, FRAMES, 10))
    err = {m: keyframe_error(j, ref, keys) for m, j in out.items()}
    # replacement pastes the given frames: exact up to the feature round trip
    assert err["replace"] < 1e-4
    # ALM's likelihood step pulls the keyframes in: below SyncSDE (same sync term, no
    # likelihood step) and well below unconditional sampling (no keyframes at all)
    assert err["alm"] < err["syncsde"]
    assert err["alm"] < 0.7 * err["ddpm"]


# --------------------------------------------------------------------------- outputs


def test_outputs_mp4_bvh_glb_smpl(tmp_path, walk_file, capsys):
    import av
    import trimesh

    synthetic_smpl(tmp_path / "body")
    out = tmp_path / "m.npy"
    code, info, err = run_cli(
        ["motion", "--input", str(walk_file), "--out", str(out), "--steps", "5", "--keyframes", "every:10",
         "--render", str(tmp_path / "m.mp4"), "--bvh", str(tmp_path / "m.bvh"), "--mesh", str(tmp_path / "m.glb"),
         "--smpl-out", str(tmp_path / "smpl"), "--smpl-dir", str(tmp_path / "body"), "--smpl-iters", "60"], capsys)
    assert code == 0, err
    joints = np.load(out)

    # mp4: one frame per motion frame; keyframe 10 drawn orange, frame 15 blue
    with av.open(str(tmp_path / "m.mp4")) as box:
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    assert len(frames) == FRAMES

    def near(img, rgb):
        return int((np.abs(img.astype(int) - rgb).sum(-1) < 60).sum())

    assert near(frames[10], (255, 127, 14)) > 50 and near(frames[10], (31, 119, 180)) < 5
    assert near(frames[15], (31, 119, 180)) > 50 and near(frames[15], (255, 127, 14)) < 5

    # BVH re-imports to the joints. A BVH's bones are rigid (first frame's lengths) and the
    # generated bones are not, so a joint may move by the summed length change of the bones
    # above it (+ 1 cm for the fitted rotations of the branching pelvis and spine3)
    back = load_bvh(tmp_path / "m.bvh")
    assert back.shape == joints.shape
    lengths = bone_lengths(joints)                                          # (T, 22)
    drift = np.abs(lengths - lengths[:1])
    bound = drift.copy()
    for k in range(1, 22):
        bound[:, k] += bound[:, PARENTS[k]]
    err = np.linalg.norm(back - joints, axis=-1)
    assert np.all(err <= bound + 0.01), float((err - bound).max())

    # GLB: one node per frame; frame t's mesh hugs frame t's joints (within the bone radius)
    scene = trimesh.load(tmp_path / "m.glb")
    assert len(scene.geometry) == FRAMES
    m10 = scene.geometry["frame_0010"]
    lo, hi = m10.bounds
    assert np.all(lo > joints[10].min(0) - 0.04) and np.all(hi < joints[10].max(0) + 0.04)
    assert np.all(lo < joints[10].min(0) + 0.04) and np.all(hi > joints[10].max(0) - 0.04)

    # SMPL: the fit at least halves the error of the rest pose placed at the pelvis (the
    # synthetic body's rest hips/collars point along x, the walk's do not, so no pose is exact;
    # accuracy is checked on targets the body can reach, below)
    assert info["smpl_error_fit_m"] < 0.5 * info["smpl_error_init_m"]
    obj = trimesh.load(tmp_path / "smpl" / "frame_0010.obj", process=False)
    assert obj.vertices.shape == (192, 3)
    params = np.load(tmp_path / "smpl" / "smpl_params.npz")
    assert params["body_pose"].shape == (FRAMES, 69)
    err10 = np.linalg.norm(params["joints"][10] - joints[10], axis=-1).mean()
    assert err10 < 0.5 * info["smpl_error_init_m"]


def test_smpl_fit_recovers_a_posed_synthetic_body(tmp_path):
    """Targets made by the synthetic SMPL itself at known poses: the fit gets them back closely."""
    import smplx

    synthetic_smpl(tmp_path)
    body = smplx.create(str(tmp_path), model_type="smpl", batch_size=4,
                        vertex_ids={k: 0 for k in ("nose", "reye", "leye", "rear", "lear")},
                        use_hands=False, use_feet_keypoints=False)
    g = torch.Generator().manual_seed(0)
    pose = 0.3 * torch.randn(4, 69, generator=g)
    pose[:, 63:] = 0
    with torch.no_grad():
        target = body(body_pose=pose, global_orient=0.2 * torch.randn(4, 3, generator=g),
                      transl=torch.randn(4, 3, generator=g)).joints[:, :22].numpy()
    paths, fit = export_smpl(tmp_path / "out", target, tmp_path, iters=100)
    assert fit["error_fit"] < 0.01 < fit["error_init"]
    assert len(paths) == 5 and paths[-1].name == "smpl_params.npz"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, word", [
    ("outside", "500"), ("joints21", "(50, 21, 3)"), ("bvh_names", "foo_"), ("nan", "[3]"),
    ("smpl_missing", "SMPL_NEUTRAL.pkl"), ("joint_name", "elbowz"),
])
def test_bad_input_is_refused_by_name(tmp_path, case, word, capsys):
    argv = ["motion", "--out", str(tmp_path / "o.npy"), "--steps", "2"]
    walk = generate_motions(1, 60, seed=3)[0]
    if case == "outside":
        argv += ["--keyframes", "frames:0,500"]
    elif case == "joints21":
        np.save(tmp_path / "j.npy", np.zeros((50, 21, 3)))
        argv += ["--input", str(tmp_path / "j.npy")]
    elif case == "bvh_names":
        save_bvh(tmp_path / "w.bvh", walk, names=[f"foo_{i}" for i in range(22)])
        argv += ["--input", str(tmp_path / "w.bvh"), "--window-frames", "40"]
    elif case == "nan":
        walk[3, 5, 1] = np.nan
        np.save(tmp_path / "n.npy", walk)
        argv += ["--input", str(tmp_path / "n.npy"), "--window-frames", "40"]
    elif case == "smpl_missing":
        argv += ["--smpl-out", str(tmp_path / "s"), "--smpl-dir", str(tmp_path / "nobody")]
    elif case == "joint_name":
        argv += ["--joints", "root,left_elbowz"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and word in err, err
    assert not (tmp_path / "o.npy").exists()
