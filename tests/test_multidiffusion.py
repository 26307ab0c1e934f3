"""The MultiDiffusion baseline (longgen.samplers.multidiffusion) against diffusers'
StableDiffusionPanoramaPipeline on the tiny random SD fixture, and exact equivalences on a builtin
prior.

The pipeline is used as shipped (huggingface/diffusers, pipelines/deprecated/
stable_diffusion_panorama/pipeline_stable_diffusion_panorama.py, ``get_views``: 64-latent views at
a stride of 8 latents, no circular padding; ``__call__``: each view batch takes its own
``scheduler.step`` and the canvas becomes value / count). A 512 x 640 px canvas (64 x 80 latents)
gives views at 0, 8 and 16; the tiny UNet runs on them (it is convolutional and its attention
takes any size).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

import longgen
from longgen.denoiser import Evaluator
from longgen.priors import PriorDenoiser, SeparableGMM
from longgen.samplers import multidiffusion
from longgen.schedule import make_schedule

STEPS = 3
GUIDANCE = 7.5
TOL = 1e-5  # float32 max-abs on latents of size ~1; measured 0.0 (bit-equal) on torch 2.13 CPU


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from longgen.modalities.image.sd import SDModel
    from tests.fixtures.tiny_sd import tiny_sd_components

    parts = tiny_sd_components(tmp_path_factory.mktemp("md"))
    return parts, SDModel.from_components(**parts)


@pytest.mark.parametrize("view_batch", [1, 2])
def test_matches_diffusers_panorama_pipeline(tiny, view_batch):
    from diffusers import StableDiffusionPanoramaPipeline

    parts, sd = tiny
    pipe = StableDiffusionPanoramaPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = sd.encode_prompt("a wide mountain lake panorama")
    latents = torch.randn(1, 4, 64, 80, generator=torch.Generator().manual_seed(0))
    ref = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=512, width=640,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
               view_batch_size=view_batch, output_type="latent").images
    ev = Evaluator(sd.denoiser, cond=cond, uncond=uncond, guidance_scale=GUIDANCE)
    ours = multidiffusion(ev, make_schedule(sd.scheduler, STEPS), latents, [0, 8, 16], 64, -1,
                          view_batch=view_batch)
    assert ours.shape == ref.shape == (1, 4, 64, 80)
    assert (ours - ref).abs().max().item() <= TOL
    # the same views and cost: 3 views x 2 rows per step
    assert ev.rows == STEPS * 3 * 2 and ev.calls == STEPS * -(-3 // view_batch)


def _prior_setup():
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 12)
    a = [torch.randn(n, n, dtype=torch.float64, generator=g) for n in shape]
    factors = [x @ x.T / x.shape[0] + 0.2 * torch.eye(x.shape[0], dtype=torch.float64) for x in a]
    prior = SeparableGMM(torch.randn(2, *shape, dtype=torch.float64, generator=g), factors)
    sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    return prior, sch, PriorDenoiser.for_scheduler(prior, sch)


def test_one_view_over_the_canvas_is_plain_ddim():
    prior, sch, den = _prior_setup()
    y = torch.randn(3, 2, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ev = Evaluator(den)
    md = multidiffusion(ev, make_schedule(sch, 10), y, [0], 12, -1)
    ref = longgen.sample(den, sch, torch.zeros_like(y), torch.ones_like(y), method="ddim",
                         num_inference_steps=10, latents=y)
    assert (md - ref).abs().max().item() <= 1e-12
    # a view repeated is counted twice and averaged: the same result
    md2 = multidiffusion(Evaluator(den), make_schedule(sch, 10), y, [0, 0], 12, -1)
    assert (md2 - ref).abs().max().item() <= 1e-12


def test_disjoint_views_are_independent_ddim_runs():
    """Views that do not overlap are averaged with nothing: each is plain DDIM on its own part."""
    prior, sch, den = _prior_setup()
    y = torch.randn(1, 2, 4, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    md = multidiffusion(Evaluator(den), make_schedule(sch, 6), y, [0, 12], 12, -1, view_batch=1)
    for s in (0, 12):
        part = y[..., s:s + 12]
        ref = longgen.sample(den, sch, torch.zeros_like(part), torch.ones_like(part),
                             method="ddim", num_inference_steps=6, latents=part)
        assert (md[..., s:s + 12] - ref).abs().max().item() <= 1e-12


@pytest.mark.parametrize("starts,size,axis,match", [
    ([0, 10], 8, -1, "in no view"),
    ([0, 20], 8, -1, "do not fit"),
    ([0, 16], 8, -4, "axis"),
    ([], 8, -1, "do not fit"),
])
def test_bad_views_raise(starts, size, axis, match):
    _, sch, den = _prior_setup()
    y = torch.zeros(1, 2, 4, 24, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        multidiffusion(Evaluator(den), make_schedule(sch, 2), y, starts, size, axis)
