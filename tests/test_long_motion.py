"""Long motions in windows: each window re-centred on its own start (modalities/motion/recentre.py,
the engine's ``window_transform`` hook), exact round trips, and what the windows see."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longgen.cli import main
from longgen.engine import Engine, EngineConfig, Given
from longgen.planner import plan_windows
from longgen.modalities.motion.builtin import ddpm_scheduler, motion_features
from longgen.modalities.motion.condmdi import CondMDIConfig, CondMDIDenoiser, CondMDIUNet
from longgen.modalities.motion.features import Normalizer, _rot_y, recover_from_ric_abs
from longgen.modalities.motion.keyframes import feature_mask
from longgen.modalities.motion.metrics import keyframe_error
from longgen.modalities.motion.procedural import generate_motions
from longgen.modalities.motion.recentre import RecentreWindows


@pytest.fixture(scope="module")
def norm():
    return Normalizer.fit(np.stack([motion_features(w) for w in generate_motions(4, 60, seed=3)]))


def test_round_trip_is_identity(norm):
    t = RecentreWindows(norm)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(263, 50, generator=g, dtype=torch.float64)
    p = torch.tensor([1.3, -4.2, 7.5], dtype=torch.float64)
    for s in (1.0, 0.37, 0.0):
        y = t.to_window(x, p, s)
        assert (y[3:] == x[3:]).all()                      # only heading and root x, z move
        assert (y[:3] - x[:3]).abs().max() > 0.1
        assert torch.allclose(t.from_window(y, p, s), x, atol=1e-12, rtol=0)
    x32 = x.float()  # float32, as the engine runs: a few ulps of values ~10
    assert (t.from_window(t.to_window(x32, p), p) - x32).abs().max() < 1e-5


def test_affine_with_offset_scaled_by_signal_and_orthogonal_noise(norm):
    t = RecentreWindows(norm)
    assert norm.std[1] == norm.std[2]  # the x, z group shares its std, so the rotation is orthogonal
    g = torch.Generator().manual_seed(1)
    x0, n = (torch.randn(263, 30, generator=g, dtype=torch.float64) for _ in range(2))
    p, s = torch.tensor([-0.8, 2.0, -3.0], dtype=torch.float64), 0.6
    lhs = t.to_window(s * x0 + n, p, s)
    rhs = s * t.to_window(x0, p, 1.0) + t.to_window(n, p, 0.0)
    assert torch.allclose(lhs, rhs, atol=1e-12, rtol=0)
    tn = t.to_window(n, p, 0.0)
    assert torch.allclose(tn[1:3].norm(dim=0), n[1:3].norm(dim=0), atol=1e-12, rtol=0)
    assert torch.allclose(tn[0], n[0], atol=1e-12, rtol=0)  # a pure shift, nothing at signal 0


def test_from_window_is_a_rigid_turn_about_the_anchor(norm):
    """Joints of from_window(features) = R_y(-2 a0) joints + (x0, 0, z0) (recover_from_ric_abs's
    convention: joints = R_y(-2 a_t) ric + root)."""
    t = RecentreWindows(norm)
    f = torch.from_numpy(motion_features(generate_motions(1, 60, seed=9)[0]))   # (59, 263)
    p = torch.tensor([0.9, 3.0, -1.5], dtype=torch.float64)
    z = norm.normalize(f).T
    moved = recover_from_ric_abs(norm.denormalize(t.from_window(z, p).T))
    j = recover_from_ric_abs(f)
    want = _rot_y(j, torch.full(j.shape[:-1], -2 * 0.9, dtype=torch.float64)) + torch.tensor([3.0, 0.0, -1.5])
    assert (moved - want).abs().max() < 1e-9
    # fit: the anchor is the first frame where heading and root x, z are all known
    known = torch.zeros(263, 59)
    known[:, 7] = 1
    a = t.fit(None, z, known)
    phi = t.facing_offset(z, known, 7)   # canonical facing's yaw in frame 7's facing frame
    assert 1e-3 < abs(phi) < 0.5
    assert torch.allclose(a, f[7, :3] - torch.tensor([phi / 2, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    known[4:67] = 0                      # ric unknown: anchored on the root heading itself
    assert torch.allclose(t.fit(None, z, known), f[7, :3], atol=1e-12, rtol=0)
    assert (t.fit(None, z, torch.zeros(263, 59)) == 0).all()


class Identity:
    """A window transform that moves nothing: the hook's plumbing alone must change nothing."""

    def fit(self, window, x0, known):
        return torch.zeros(1)

    def to_window(self, x, params, signal=1.0):
        return x.clone()

    def from_window(self, x, params, signal=1.0):
        return x.clone()


@pytest.mark.parametrize("observed,group,method", [("trajectory", 1, "alm"), ("invert", 1, "alm"),
                                                   ("noise", 2, "alm"), ("noise", 1, "replace")])
def test_identity_transform_changes_nothing(observed, group, method):
    from longgen.builtin import image_prior
    from longgen.priors import PriorDenoiser

    prior = image_prior(height=8, width=8, class_conditional=False)
    sch = ddpm_scheduler()
    den = PriorDenoiser.for_scheduler(prior, sch)
    plan = plan_windows(20, 8, 4)
    known = torch.zeros(4, 8, 20)
    known[..., ::5] = 1
    given = Given(torch.randn(4, 8, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64), known)
    cfg = EngineConfig(method=method, steps=3, observed=observed, group=group, given_path="noise")
    outs = [torch.cat([c.latent for c in Engine(den, sch, plan, (4, 8, 8), -1, cfg, given=given,
                                                dtype=torch.float64, window_transform=t)], -1)
            for t in (None, Identity())]
    assert outs[0].shape == (4, 8, 20) and torch.equal(outs[0], outs[1])


class Spy(RecentreWindows):
    def __init__(self, norm, realign_overlap=False):
        super().__init__(norm, realign_overlap=realign_overlap)
        self.params = []

    def fit(self, window, x0, known):
        p = super().fit(window, x0, known)
        self.params.append((window.start, p))
        return p


def test_realign_moves_a_rigidly_displaced_neighbour_back_onto_the_keyframes(norm):
    """A finished window that is the true motion turned by 0.7 rad and shifted by metres (the miss
    a window hands on): realign finds that rigid move from the keyframes in the overlap alone, so
    what it hands on meets them (to float64 rounding) at every frame of the overlap; the heading
    turns with it, and the body-relative features do not change."""
    t = RecentreWindows(norm)
    walk = generate_motions(1, 201, seed=11)[0]
    x = norm.normalize(torch.from_numpy(motion_features(walk, dataset=False))).T.double()   # (263, 200)
    W, d = 150, 50
    moved = t.from_window(x[:, :W], torch.tensor([0.35, 2.5, -1.75], dtype=torch.float64))  # output coords
    p_prev = torch.tensor([-0.4, 3.0, 1.0], dtype=torch.float64)
    prev_x0 = t.to_window(moved, p_prev)                               # as the engine keeps it
    known = torch.zeros(263, W, dtype=torch.float64)
    known[:, 0:W:10] = 1                                               # keyframes every 10 frames
    given = x[:, d:d + W] * known
    assert (t.from_window(prev_x0, p_prev)[1:3, d:W] - x[1:3, d:W]).abs().max() > 0.5   # the miss
    p_new = t.realign(prev_x0, p_prev, d, W - d, given, known)
    handed = t.from_window(prev_x0, p_new)[:, d:W]
    assert (handed[:3] - x[:3, d:W]).abs().max() < 1e-9                # every overlap frame, not only keys
    assert (handed[3:] == prev_x0[3:, d:W]).all()
    one = torch.zeros_like(known)
    one[:, 10] = 1                                                     # one keyframe: a shift only
    p_one = t.realign(prev_x0, p_prev, d, W - d, x[:, d:d + W] * one, one)
    assert (t.from_window(prev_x0, p_one)[1:3, d + 10] - x[1:3, d + 10]).abs().max() < 1e-9
    assert float(p_one[0]) == float(p_prev[0])
    assert t.realign(prev_x0, p_prev, d, W - d, given, torch.zeros_like(known)) is p_prev
    assert RecentreWindows(norm, realign_overlap=False).realign(prev_x0, p_prev, d, W - d, given, known) is p_prev


class InputSpy:
    """The denoiser protocol around a CondMDI U-Net, keeping each forward's input."""

    def __init__(self, den):
        self.den, self.prediction_type, self.inputs = den, den.prediction_type, []

    def __call__(self, x, t, cond=None):
        self.inputs.append(x.clone())
        return self.den(x, t, cond)


def test_condmdi_windows_see_local_coordinates():
    torch.manual_seed(0)
    cfg = CondMDIConfig(latent_dim=32, dim_mults=(1, 2))
    model = CondMDIUNet(cfg)
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0.0, 0.05)
    L, W, steps = 300, 196, 30
    walk = generate_motions(1, L + 1, seed=4)[0]
    feats = motion_features(walk)
    norm = Normalizer.fit(np.stack([motion_features(w) for w in generate_motions(8, W + 1, seed=5)]))
    given = Given(norm.normalize(torch.from_numpy(feats)).T.float(), 1 - feature_mask(list(range(0, L, 10)), L))
    config = EngineConfig(method="alm", w1=1.0, w2=0.005, steps=steps, observed="noise", given_path="noise")
    plan = plan_windows(L, W, 98)                                     # starts 0, 98, 104
    spy, wt = InputSpy(CondMDIDenoiser(model, cfg)), Spy(norm)  # no realignment: anchors are the canvas
    eng = Engine(spy, ddpm_scheduler(), plan, (263, W), -1, config, given=given, window_transform=wt)
    z = torch.cat([c.latent for c in eng], -1)                         # (263, 300), global
    raw = norm.denormalize(z.T.double())
    assert [s for s, _ in wt.params] == [0, 98, 104]
    # window 1 is anchored on window 0's final frame 98 (where the canvas keeps window 0: paste)
    p1 = wt.params[1][1]
    assert torch.allclose(p1[1:], raw[98, 1:3], atol=1e-4, rtol=0)
    phi = wt.facing_offset(z[:, 98:99], torch.ones(263, 1), 0)
    assert abs(float(p1[0]) - (float(raw[98, 0]) - phi / 2)) < 1e-4
    far = max(float(raw[s, 1:3].norm()) for s in (98, 104))
    # the last step's inputs (alm: Y, E then Y'): window k's first frame, root x, z in metres
    per_window = len(spy.inputs) // len(plan)
    noise_m = float((1 - eng.sch.abar[-1]).sqrt()) * float(norm.std[1])   # X_t's noise std at the last step
    for k in (1, 2):
        e = spy.inputs[(k + 1) * per_window - 2][1]                   # E (rows Y, E) of the last step
        root = norm.denormalize(e[:, :1].T.double())[0, 1:3]           # window k's first frame, metres
        assert float(root.norm()) < 5 * noise_m + 1e-3 < 0.1 * far


def _keyframe_errors(tmp_path, frames: int, seeds, steps: int) -> float:
    """Mean keyframe error (m) of ``longgen motion`` on the builtin prior, keyframes every 10,
    keyframes from the procedural walk the CLI draws without --input (seed + 1)."""
    errs = []
    for seed in seeds:
        out = tmp_path / f"m{frames}_{seed}_{steps}.npy"
        assert main(["motion", "--frames", str(frames), "--out", str(out), "--steps", str(steps),
                     "--keyframes", "every:10", "--seed", str(seed), "--no-progress"]) == 0
        walk = generate_motions(1, frames + 1, seed=seed + 1)[0]
        ref = recover_from_ric_abs(torch.from_numpy(motion_features(walk, dataset=False))).numpy()
        errs.append(keyframe_error(np.load(out), ref, list(range(0, frames, 10))))
    return float(np.mean(errs))


def test_600_frames_do_not_drift_fast(tmp_path):
    """Issue 10 item 5 at 30 steps, one seed (the slow test below is the issue's setting).
    Measured with w1 = 1 (the default until 2026-12-01, now 2): 196 frames 2.36 m, 600 frames
    1.70 m (ratio 0.72); re-centred without realigning
    the overlap onto the keyframes, 600 frames miss by 7.51 m (ratio 3.2): this test fails."""
    e196 = _keyframe_errors(tmp_path, 196, (0,), 30)
    e600 = _keyframe_errors(tmp_path, 600, (0,), 30)
    assert e600 <= 1.5 * e196 + 0.01, (e196, e600)   # + 1 cm: with --impute spline both are ~1e-6 m
    # issue 10 item 5's 0.18 m (what CondMDI users quote): met, the keyframes are imputed
    assert e196 < 1e-3 and e600 < 1e-3, (e196, e600)


def test_impute_none_gives_back_the_alm_miss(tmp_path):
    """The same run with --impute none --soft-overlap 0 --w1 2 (the previous defaults) misses its
    keyframes as before: the imputation, not something else, meets them."""
    out = tmp_path / "m.npy"
    assert main(["motion", "--frames", "196", "--out", str(out), "--steps", "30", "--keyframes", "every:10",
                 "--impute", "none", "--soft-overlap", "0", "--w1", "2", "--no-progress"]) == 0
    walk = generate_motions(1, 197, seed=1)[0]
    ref = recover_from_ric_abs(torch.from_numpy(motion_features(walk, dataset=False))).numpy()
    assert keyframe_error(np.load(out), ref, list(range(0, 196, 10))) > 0.3


@pytest.mark.slow
def test_default_motion_seams():
    """Issue 15: boundary acceleration ratio at each window's end, 400 frames, 100 steps, builtin
    prior, seeds 0-2 (measured 1.42, 0.77, 0.89: mean 1.03; the previous defaults 1.76)."""
    from longgen.cli import build_parser, discover
    from longgen.modalities.glue import run_in_memory
    from longgen.modalities.motion.metrics import boundary_acceleration_ratio

    plugins = discover()
    ratios = []
    for seed in range(3):
        args = build_parser(plugins).parse_args(["motion", "--frames", "400", "--out", "unused.npy", "--steps",
                                                 "100", "--keyframes", "every:10", "--seed", str(seed)])
        job = plugins["motion"].build_job(args)
        _, joints = run_in_memory(job.engine, job.decoder, None, "np")
        j = joints.T.reshape(joints.shape[-1], 22, 3).double().numpy()
        ratios.append(boundary_acceleration_ratio(j, [w.stop for w in job.engine.plan.windows[:-1]]))
    assert np.mean(ratios) <= 1.2, ratios


@pytest.mark.slow
def test_600_frame_keyframe_error_within_1p5x_of_196(tmp_path):
    """Issue 10 item 5: builtin prior, keyframes every 10, 100 steps, seeds 0 and 1, windows
    re-centred and realigned. With w1 = 2 (the default since 2026-12-01), seed 0: 196 frames
    0.75 m, 600 frames 0.92 m. Measured with w1 = 1: 196 frames 1.30 / 2.24 m (mean 1.77), 600 frames
    1.37 / 1.70 m (mean 1.53): ratio 0.87. Absolute coordinates (--no-recentre): 600 frames
    6.78 / 3.78 m (ratio 3.0); re-centred without realignment the miss per 100 frames of a
    600-frame run grew 0.43, 2.3, 4.7, 8.3, 13.6, 16.4 m (seed 0, 50 steps)."""
    e196 = _keyframe_errors(tmp_path, 196, (0, 1), 100)
    e600 = _keyframe_errors(tmp_path, 600, (0, 1), 100)
    assert e600 <= 1.5 * e196 + 0.01, (e196, e600)   # + 1 cm: with --impute spline both are ~1e-6 m


def test_spline_imputation_meets_observed_content_exactly():
    """EngineConfig(impute='spline'): x0 moved onto the known positions, residual spread by a
    natural cubic spline (linear residuals are reproduced; constant beyond the ends)."""
    from longgen.impute import KnownImputer, spline_matrix

    P = spline_matrix((0, 10, 20, 30), 40)
    assert torch.allclose(P[[0, 10, 20, 30]], torch.eye(4, dtype=torch.float64))
    lin = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    assert torch.allclose(P @ lin, (1 + 0.2 * torch.arange(40.0)).clamp(max=7).double())
    values, known = torch.randn(2, 3, 40), torch.zeros(2, 3, 40)
    known[..., ::7] = 1
    out = KnownImputer(values, known, -1)(torch.zeros(2, 3, 40))
    assert torch.allclose(out[known.bool()], values[known.bool()], atol=1e-6)
    # the model output is rebuilt from the moved x0 in every parameterisation (inverse of to_x0)
    from longgen.denoiser import to_x0
    from longgen.impute import from_x0

    x, o, a = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64),
               torch.tensor(0.37, dtype=torch.float64))
    for pt in ("epsilon", "sample", "v_prediction", "flow"):
        assert (from_x0(to_x0(o, x, a, pt), x, a, pt) - o).abs().max() < 1e-12, pt
