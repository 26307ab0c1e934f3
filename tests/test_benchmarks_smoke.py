"""The benchmarks' own pieces checked against independent references (fast; tiny models).

* panorama_speed's plain loop of the released wide-image procedure equals longgen's engine with
  ``live="chained"``, group 0, on the tiny SD UNet (two implementations, one answer);
* its UNet clock counts the forwards and rows that the cost formulas predict;
* quality's marginal prior of a column range is the dense covariance's sub-block.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def speed():
    return _load("panorama_speed")


@pytest.fixture(scope="module")
def tiny(speed):
    sd = speed.build("tiny")
    cond, uncond = sd.encode_prompt(speed.PROMPT)
    return sd, cond, uncond


def test_released_loop_equals_engine_chained(speed, tiny):
    from longgen.engine import Engine, EngineConfig
    from longgen.planner import plan_windows

    sd, cond, uncond = tiny
    P, stride, L = speed.geometry(sd)
    cfg = EngineConfig(method="alm", steps=3, group=0, live="chained", guidance_scale=speed.GUIDANCE,
                       blend="paste", seed=0)
    eng = Engine(sd.denoiser, sd.scheduler, plan_windows(L, P, stride), (4, P, P), -1, cfg,
                 cond=cond, uncond=uncond)
    noise = eng.noise(0, L)[None]  # (1, 4, P, L): every window's initial latent is its slice
    ours = torch.cat([c.latent for c in eng], dim=-1)[None]
    with torch.no_grad():
        loop = speed.run_released_loop(sd, 3, cond, uncond, noise)
    assert ours.shape == loop.shape == (1, 4, 16, 64)
    assert (ours - loop).abs().max().item() <= 1e-4


def test_clock_counts_match_the_cost_formulas(speed, tiny):
    from longgen.modalities.image.jobs import unet_forwards

    sd, cond, uncond = tiny
    P, _, L = speed.geometry(sd)
    lat = torch.randn(1, 4, P, L, generator=torch.Generator().manual_seed(0))
    v = speed.variants()
    wall, unet_s, rows, _ = speed.timed(v["alm/trajectory/g1"], sd, 2, cond, uncond, lat)
    assert len(rows) == unet_forwards("alm", 2, 5, 1) == 18
    assert sum(rows) == 2 * (5 * 4 - 2)            # 4 rows per window, 2 for the first
    assert 0 < unet_s <= wall
    _, _, rows, _ = speed.timed(v["md_diffusers"], sd, 1, cond, uncond, lat)
    assert rows == [2] * 25                          # 25 views of 16 at stride 2, CFG rows
    _, _, rows, _ = speed.timed(v["alm-fused/live/g0"], sd, 1, cond, uncond, lat)
    assert rows == [5 * 2 + 4]                       # one forward: guided rows + 4 blended


def test_marginal_prior_is_the_dense_sub_block():
    q = _load("quality")
    prior = q.make_prior("mixture")
    sub = q.marginal_prior(prior, slice(16, 32))
    full = prior.dense_covariance(0).reshape(8, 32, 8, 32)
    expect = full[:, 16:, :, 16:].reshape(8 * 16, 8 * 16)
    assert (sub.dense_covariance(0) - expect).abs().max().item() <= 1e-12
    assert torch.equal(sub.means, prior.means[..., 16:])


def test_flux_benchmark_counts_rows_as_stated():
    """flux_panorama_time on the tiny size: ALM costs 1 forward for the first window and 2 (3 rows:
    eps_c(Y), eps_c(E), then the base step at Y') for each later one per step, no CFG rows;
    MultiDiffusion one forward of all 25 views."""
    out = _load("flux_panorama_time").main(["--size", "tiny", "--steps", "1"])
    n = out["setup"]["windows"]
    assert n == 5
    assert out["alm"]["forwards_per_step"] == 1 + 2 * (n - 1)
    assert out["alm"]["rows_per_step"] == 1 + 3 * (n - 1)
    assert out["multidiffusion"]["views"] == 25 and out["multidiffusion"]["rows_per_step"] == 25
    assert out["alm"]["finite"] and out["multidiffusion"]["finite"]


def test_seam_figures_of_a_ramp_with_one_jump():
    """seams.py's two figures on a field whose steps are all 1 except a step of 4 at the first
    boundary: seam = 16 there and 38 / 53 at the second (its other 38 pairs hold the jump), near =
    16 and 1 (the pairs far from every overlap are all 1)."""
    from longgen.planner import plan_windows

    seams = _load("seams")
    plan = plan_windows(40, 16, 12)                      # windows at 0, 12, 24; boundaries 16, 28
    x = torch.arange(40, dtype=torch.float64)
    x[16:] += 3
    seam, near = seams.boundary_figures(x.expand(2, 3, 40), plan, -1)
    assert seam == pytest.approx([16.0, 38 / 53], rel=1e-12)
    assert near == pytest.approx([16.0, 1.0], rel=1e-12)


def test_wan_seam_benchmark_runs_each_method_on_the_plan(tmp_path):
    """wan_video's seam part on 161 frames (41 latent frames: windows at 0, 16, 20, new latent
    frames from 21 and 37): every method gives finite scores at those boundaries."""
    from tests.fixtures.tiny_wan import build_wan

    out = _load("wan_video").seams(build_wan(str(tmp_path)), 161, 2, 1)
    assert out["latent_frames"] == 41 and out["windows"] == 3 and out["boundaries_latent"] == [21, 37]
    assert set(out["methods"]) == {"alm", "plain", "averaging"}
    for r in out["methods"].values():
        assert all(0 < v < float("inf") for v in r["per_seed_latent"] + r["per_seed_frame"])
