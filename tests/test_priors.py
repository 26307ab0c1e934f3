"""Builtin priors: exact epsilon against dense closed forms, class conditioning, sampling, fitting,
and the latent<->RGB map."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from longgen.builtin import LatentRGB, fit_separable_gmm, image_prior, se_kernel, video_prior
from longgen.denoiser import Evaluator, Request
from longgen.priors import PriorDenoiser, SeparableGMM
from tests.helpers import random_prior


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6), (2, 3, 2, 4)])
def test_exact_eps_equals_dense_closed_form(shape):
    prior = random_prior(shape, K=3, classes=2, seed=1)
    x = torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for a in (0.999, 0.5, 0.02):
        for cond in (None, torch.tensor([0, 1, -1, 1])):
            fast, dense = prior.eps(x, a, cond), prior.dense_eps(x, a, cond)
            assert (fast - dense).abs().max() <= 1e-8


def test_per_sample_noise_levels():
    prior = random_prior((2, 4, 6), K=2)
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    a = torch.tensor([0.9, 0.4, 0.05], dtype=torch.float64)
    batched = prior.eps(x, a)
    for i in range(3):
        assert (batched[i] - prior.eps(x[i:i + 1], a[i])[0]).abs().max() <= 1e-12


def test_class_condition_changes_eps_and_scale_one_is_conditional():
    prior = random_prior((2, 4, 6), K=3, classes=3, seed=4)
    sch = DDIMScheduler()
    den = PriorDenoiser.for_scheduler(prior, sch)
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 600)
    e0, e1, eu = den(x, t, torch.tensor([0, 0])), den(x, t, torch.tensor([1, 1])), den(x, t, None)
    assert (e0 - e1).abs().max() > 1e-2 and (e0 - eu).abs().max() > 1e-2
    assert (den(x, t, torch.tensor([-1, -1])) - eu).abs().max() == 0
    ev = Evaluator(den, cond=torch.tensor([2]), uncond=torch.tensor([-1]), guidance_scale=1.0)
    (out,) = ev(600, [Request(x, guided=True)])
    assert torch.equal(out, den(x, t, torch.tensor([2, 2])))
    formula = eu + 1.0 * (den(x, t, torch.tensor([2, 2])) - eu)
    assert (formula - out).abs().max() <= 1e-12


def test_responsibilities_and_samples():
    prior = random_prior((2, 3, 4), K=2, seed=5)
    x, comp = prior.sample(4000, torch.Generator().manual_seed(0))
    r = prior.responsibilities(x)
    assert torch.allclose(r.sum(1), torch.ones(4000, dtype=torch.float64))
    # the component that generated a sample is the most probable one almost always (well separated)
    assert (r.argmax(1) == comp).double().mean() > 0.95
    sel = x[comp == 0].reshape(-1, 24)
    emp = torch.cov(sel.T)
    dense = prior.dense_covariance(0)
    rel = (emp - dense).norm() / dense.norm()
    assert rel < 0.1, rel  # sampling error with ~2000 samples in 24 dims is ~0.05


def test_conditional_matches_precision_form():
    prior = random_prior((2, 3, 4), K=1, seed=6)
    x, _ = prior.sample(1, torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 3, 4)
    mask[..., 2:] = 1
    w, mu, cov = prior.conditional(x[0], mask)
    S = prior.dense_covariance(0)
    L = torch.linalg.inv(S)
    m = mask.reshape(-1).bool()
    g, o = m.nonzero().squeeze(1), (~m).nonzero().squeeze(1)
    Lgg, Lgo = L[g][:, g], L[g][:, o]
    mean = prior.means[0].reshape(-1)
    mu_ref = mean[g] - torch.linalg.solve(Lgg, Lgo @ (x[0].reshape(-1)[o] - mean[o]))
    assert (mu[0] - mu_ref).abs().max() <= 1e-9
    assert (cov[0] - torch.linalg.inv(Lgg)).abs().max() <= 1e-9
    assert w.item() == pytest.approx(1.0)


def test_builtin_image_and_video_priors():
    p = image_prior()
    assert p.shape == (4, 64, 64) and p.K == 5 and p.num_classes == 5
    w = p.factors[2][0]
    assert torch.allclose(w[1:, 1:], w[:-1, :-1])  # stationary along the width: windows tile
    v = video_prior(frames=16, height=8, width=8)
    assert v.shape == (4, 16, 8, 8)
    x, comp = v.sample(2, torch.Generator().manual_seed(0))
    # samples are recognised as their own scene (class table puts 0.9 on the diagonal)
    assert torch.equal(v.responsibilities(x).argmax(1), comp)


def test_latent_rgb_map():
    m = LatentRGB()
    z = torch.randn(2, 4, 1, 1, dtype=torch.float64).expand(2, 4, 3, 5).contiguous()
    rgb = m.decode(z)
    assert rgb.shape == (2, 3, 24, 40)
    back = m.encode(rgb)
    proj = torch.einsum("cr,brhw->bchw", m.pinv @ m.A, z)  # pinv(A) A: projection on A's row space
    assert (back - proj).abs().max() <= 1e-12
    vid = torch.randn(1, 4, 3, 2, 2, dtype=torch.float64)
    out = m.decode(vid)
    assert out.shape == (1, 3, 3, 16, 16)
    assert (out[:, :, 1] - m.decode(vid[:, :, 1])).abs().max() <= 1e-12


def test_fit_separable_gmm_recovers_a_known_prior():
    true = SeparableGMM(torch.zeros(1, 3, 16, dtype=torch.float64),
                        [torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64),
                         se_kernel(16, 3.0)])
    x, _ = true.sample(3000, torch.Generator().manual_seed(0))
    fit = fit_separable_gmm(x, k=1, stationary_axes=(1,))
    dense_t, dense_f = true.dense_covariance(0), fit.dense_covariance(0)
    rel = ((dense_f - dense_t).norm() / dense_t.norm()).item()
    assert rel < 0.05, rel
    f = fit.factors[1][0]
    assert torch.allclose(f[1:, 1:], f[:-1, :-1])
