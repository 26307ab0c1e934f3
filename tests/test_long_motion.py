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
    def __init__(self, norm):
        super().__init__(norm)
        self.params = []

    def fit(self, window, x0, known):
        p = super().fit(window, x0, known)
        self.params.append((window.start, p))
        return p


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
    spy, wt = InputSpy(CondMDIDenoiser(model, cfg)), Spy(norm)
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


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not reached: on the builtin prior ALM closes only part of the gap to "
                   "each window's keyframes, so the miss compounds window after window (measured "
                   "ratio ~2.6-2.7 with re-centring, ~2.5 without; see the report of issue 10 item 5)")
def test_600_frame_keyframe_error_within_1p5x_of_196(tmp_path):
    """Issue 10 item 5: builtin prior, keyframes every 10, 100 steps, keyframes from the
    procedural walks of seeds 1 and 2 (the CLI without --input), windows re-centred."""
    err = {}
    for frames in (196, 600):
        errs = []
        for seed in (0, 1):
            out = tmp_path / f"m{frames}_{seed}.npy"
            assert main(["motion", "--frames", str(frames), "--out", str(out), "--steps", "100",
                         "--keyframes", "every:10", "--seed", str(seed), "--no-progress"]) == 0
            walk = generate_motions(1, frames + 1, seed=seed + 1)[0]
            ref = recover_from_ric_abs(torch.from_numpy(motion_features(walk, dataset=False))).numpy()
            errs.append(keyframe_error(np.load(out), ref, list(range(0, frames, 10))))
        err[frames] = float(np.mean(errs))
    assert err[600] <= 1.5 * err[196], err
