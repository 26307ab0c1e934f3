"""Flow matching in the core (issue 11 items 1-2): flow schedules read from diffusers schedulers,
the velocity parameterisation, and that a flow model runs the same samplers as the VP model it
is equivalent to (``FlowDenoiser`` has the derivation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       UniPCMultistepScheduler)

import longgen
from longgen.builtin import image_prior
from longgen.denoiser import Evaluator, FlowDenoiser, FunctionDenoiser, flow_abar, flow_scale, to_eps, to_x0
from longgen.engine import Engine, EngineConfig, Given
from longgen.observed import ddim_invert
from longgen.planner import plan_windows
from longgen.priors import FlowPriorModel, PriorDenoiser
from longgen.samplers import run
from longgen.schedule import flow_mu, make_schedule, q_sample

F32 = torch.finfo(torch.float32).eps


def _field(seed: int = 0, n: int = 6):
    """A nonlinear velocity field v(x, t) on (B, n) states: a stand-in for a flow network."""
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 3

    def v(x, t, cond=None):
        tt = torch.as_tensor(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return torch.tanh(x @ w.to(x.dtype)) * (1 + tt) + 0.3 * x * tt
    return v


def test_flow_parameterisation_is_the_vp_one_rescaled():
    g = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([1.0, 0.93, 0.5, 0.07, 1e-4], dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = eps - x0
    a, s = flow_abar(t), flow_scale(t)
    z = xt / s[:, None]
    # the engine holds levels as abar; near t = 0, 1 - abar = t^2 / s^2 loses digits to
    # cancellation (t = 1e-4: 1 - abar ~ 1e-8 carries ~1e-8 relative error), hence 1e-12, not ulps
    assert (z - (a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps)).abs().max() < 1e-12
    assert (to_x0(v, z, a, "flow") - x0).abs().max() < 1e-12
    assert (to_eps(v, z, a, "flow") - eps).abs().max() < 1e-12
    assert flow_abar(1.0) == 0 and flow_abar(0.0) == 1 and flow_scale(1.0) == 1 and flow_scale(0.0) == 1


GRIDS = {
    "shift3": (FlowMatchEulerDiscreteScheduler(shift=3.0), {}),
    "dynamic": (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), "mu"),
    "flux-sigmas": (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), "flux"),
    "unipc-flow": (UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                           prediction_type="flow_prediction"), {}),
    "dpm-flow": (DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0,
                                             prediction_type="flow_prediction"), {}),
}


def _kwargs(sch, spec, n):
    if spec == "mu":
        return {"mu": flow_mu(sch.config, 1024)}
    if spec == "flux":   # as FluxPipeline: sigmas linspace(1, 1/N, N) and mu from the token count
        return {"mu": flow_mu(sch.config, 4096), "sigmas": np.linspace(1.0, 1 / n, n)}
    return spec


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_euler_is_the_flow_match_euler_step(name):
    """method "ddim" on a flow schedule = x <- x + (t' - t) v on the scheduler's own levels (float64,
    <= 1e-10), and = FlowMatchEulerDiscreteScheduler.step (which computes in float32)."""
    sch, spec = GRIDS[name]
    n = 6
    kw = _kwargs(sch, spec, n)
    S = make_schedule(sch, n, **kw)
    v = _field()
    x_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for _, y in run(Evaluator(FlowDenoiser(v)), S, S.initial_state(x_T), torch.ones(1), None, "ddim"):
        pass
    ref, sig = x_T.clone(), S.sigmas
    assert sig[-1] == 0 and len(sig) == n + 1
    for i in range(n):
        ref = ref + (sig[i + 1] - sig[i]) * v(ref, sig[i])
    assert (y - ref).abs().max() < 1e-10
    if isinstance(sch, FlowMatchEulerDiscreteScheduler):
        p = FlowMatchEulerDiscreteScheduler.from_config(sch.config)
        if "sigmas" in kw:
            p.set_timesteps(sigmas=list(kw["sigmas"]), mu=kw["mu"])
        else:
            p.set_timesteps(n, **kw)
        assert torch.equal(torch.tensor(S.model_timesteps), p.timesteps.double())
        r = x_T.float()
        for t in p.timesteps:
            r = p.step(v(r.double(), t.double() / 1000).float(), t, r).prev_sample
        # float32 steps: a few ulps of |x| per step
        tol = 4 * n * F32 * float(ref.abs().max())
        assert (y - r.double()).abs().max() < tol


def test_flow_mu_is_the_pipelines_calculate_shift():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                          base_image_seq_len=256, max_image_seq_len=4096).config
    for n in (256, 1024, 4096, 8192):
        assert abs(flow_mu(cfg, n) - calculate_shift(n, 256, 4096, 0.5, 1.15)) < 1e-12
    ltx = {"base_image_seq_len": 1024, "max_image_seq_len": 4096, "base_shift": 0.95, "max_shift": 2.05}
    assert abs(flow_mu(ltx, 2048) - calculate_shift(2048, 1024, 4096, 0.95, 2.05)) < 1e-12


def test_q_sample_on_flow_levels():
    S = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 5)
    g = torch.Generator().manual_seed(3)
    x0, e = (torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    for i, t in enumerate(S.timesteps):
        flow_state = flow_scale(t) * q_sample(S, i, x0, e)
        assert (flow_state - ((1 - t) * x0 + t * e)).abs().max() < 1e-14


def _vp_twin(S):
    """The same levels as a VP run (an x0 model: epsilon models are singular at abar = 0)."""
    return dataclasses.replace(S, prediction_type="sample", kind="ddim")


def _vp_model(prior):
    """The prior as an x0-predicting VP model at the VP level of flow level t: no flow scaling,
    no velocity, only the prior's exact posterior mean."""
    m = FlowPriorModel(prior)
    return FunctionDenoiser(lambda x, t, c: m.eps_x0(x, flow_abar(t), c)[1], "sample")


@pytest.fixture(scope="module")
def small_prior():
    return image_prior(height=8, width=8, class_conditional=False)


@pytest.mark.parametrize("method", ["alm", "alm-fused", "syncsde", "replace", "ddim"])
@pytest.mark.parametrize("observed_path", ["invert", "noise"])
def test_flow_wrapped_prior_samples_as_the_vp_prior(small_prior, method, observed_path):
    """The exact prior as a velocity model through FlowDenoiser gives the VP run's samples
    (float64, <= 1e-8): every sampler, DDIM inversion and q(x_t | x_0) included."""
    prior = small_prior
    S = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 12)
    flow = PriorDenoiser.for_scheduler(prior, FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert isinstance(flow, FlowDenoiser) and flow.prediction_type == "flow"
    vp = _vp_model(prior)
    g = torch.Generator().manual_seed(4)
    obs, _ = prior.sample(2, generator=g)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :, :3] = 0
    latents = torch.randn(obs.shape, generator=g, dtype=torch.float64)
    outs = []
    for den, sch in ((flow, S), (vp, _vp_twin(S))):
        outs.append(longgen.sample(den, sch, obs, mask, method=method, observed_path=observed_path,
                                   num_inference_steps=12, latents=latents, w2=0.005,
                                   generator=torch.Generator().manual_seed(5)))
    assert (outs[0] - outs[1]).abs().max() < 1e-8
    assert outs[0].abs().max() > 0.1


def test_flow_inversion_is_the_vp_inversion(small_prior):
    S = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 8)
    flow = FlowDenoiser(FlowPriorModel(small_prior))
    vp = _vp_model(small_prior)
    x0, _ = small_prior.sample(2, generator=torch.Generator().manual_seed(6))
    a = ddim_invert(Evaluator(flow), S, x0)
    b = ddim_invert(Evaluator(vp), _vp_twin(S), x0)
    assert max(float((p - q).abs().max()) for p, q in zip(a, b)) < 1e-10
    assert len(a) == 8 and float(a[-1].sub(x0).abs().max()) > 1e-3   # it moved off x0


def test_engine_three_windows_flow_equals_vp(small_prior):
    """A 3-window ALM panorama through the engine, given content on the left, both ways."""
    S = make_schedule(FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    flow = FlowDenoiser(FlowPriorModel(small_prior))
    vp = _vp_model(small_prior)
    known = torch.zeros(4, 8, 16)
    known[..., :4] = 1
    given = Given(torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64), known)
    res = []
    for den, sch in ((flow, S), (vp, _vp_twin(S))):
        cfg = EngineConfig(method="alm", steps=10, seed=3, given_path="noise")
        eng = Engine(den, sch, plan_windows(16, 8, 4), (4, 8, 8), -1, cfg, given=given, dtype=torch.float64)
        res.append(torch.cat([c.latent for c in eng], -1))
    assert res[0].shape == (4, 8, 16)
    assert (res[0] - res[1]).abs().max() < 1e-8


def test_flow_schedule_refusals():
    dyn = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="needs mu"):
        make_schedule(dyn, 4)
    with pytest.raises(ValueError, match="use_dynamic_shifting=False"):
        make_schedule(FlowMatchEulerDiscreteScheduler(), 4, mu=0.5)
    with pytest.raises(ValueError, match="base step is Euler"):
        make_schedule(FlowMatchEulerDiscreteScheduler(), 4, kind="ddpm")
    with pytest.raises(ValueError, match="stochastic_sampling"):
        make_schedule(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), 4)
    with pytest.raises(ValueError, match="not one"):
        make_schedule(DDIMScheduler(), 4, mu=0.5)
    with pytest.raises(ValueError, match="Euler step is for flow"):
        make_schedule(DDIMScheduler(), 4, kind="euler")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        make_schedule(DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  final_sigmas_type="sigma_min"), 4)
    with pytest.raises(ValueError, match="flow levels"):
        FlowDenoiser(_field())(torch.zeros(1, 6), torch.tensor([999]), None)
    prior = image_prior(height=8, width=8, class_conditional=False)
    with pytest.raises(ValueError, match="predicts 'flow'"):
        PriorDenoiser.for_scheduler(prior, FlowMatchEulerDiscreteScheduler(), prediction_type="epsilon")
    with pytest.raises(ValueError, match="predicts 'epsilon' but the scheduler"):
        longgen.sample(PriorDenoiser.for_scheduler(prior, DDIMScheduler()), FlowMatchEulerDiscreteScheduler(),
                       torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8), num_inference_steps=2)
