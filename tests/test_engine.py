"""Planner, engine and resume state: coverage, the released wide-image procedure reproduced,
observed sources, bounded memory, finished chunks that never change, bit-identical continuation."""

from __future__ import annotations

import io

import pytest
import torch
from diffusers import DDIMScheduler

from longgen.builtin import LatentRGB, image_prior
from longgen.engine import Engine, EngineConfig, Given
from longgen.planner import keyframe_frames, plan_windows
from longgen.priors import PriorDenoiser
from longgen.stitch import StreamingDecoder
from tests.helpers import f64_scheduler

SD_DDIM = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
               set_alpha_to_one=False, clip_sample=False)


# ----------------------------------------------------------------------------- planner


def test_plan_defaults_match_the_paper():
    pano = plan_windows(2048 // 8, 64, 48)
    assert len(pano) == 5 and [w.start for w in pano.windows] == [0, 48, 96, 144, 192]
    video = plan_windows(104, 16, 8)
    assert len(video) == 12 and video.windows[-1].stop == 104


@pytest.mark.parametrize("length,window,stride", [(256, 64, 48), (104, 16, 8), (100, 16, 8), (77, 20, 7),
                                                  (64, 64, 48), (65, 64, 1), (1000, 196, 98)])
def test_plan_covers_every_position_with_exact_strides(length, window, stride):
    plan = plan_windows(length, window, stride)
    covered = torch.zeros(length, dtype=torch.bool)
    for i, w in enumerate(plan.windows):
        assert w.size == window and 0 <= w.start and w.stop <= length
        covered[w.start:w.stop] = True
        if i > 0:
            prev = plan.windows[i - 1]
            assert w.new_from == prev.stop - w.start  # observed = overlap with what is already there
            if i < len(plan) - 1:
                assert w.start - prev.start == stride
            else:  # the last window is aligned to the end; its overlap may be larger, never smaller
                assert w.stop == length and w.start - prev.start <= stride
    assert covered.all()
    assert plan.windows[0].new_from == 0


def test_plan_errors():
    with pytest.raises(ValueError, match=r"stride \(64\) must be smaller than the window \(64\)"):
        plan_windows(256, 64, 64)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="length must be a positive integer"):
            plan_windows(bad, 64, 48)
    with pytest.raises(ValueError, match="shorter than one window"):
        plan_windows(10, 16, 8)


def test_motion_keyframe_modes_match_released_definitions():
    L = 196
    assert keyframe_frames("first_half", L) == list(range(98, 196))
    assert keyframe_frames("last_half", L) == list(range(0, 98))
    assert keyframe_frames("middle_half", L) == list(range(0, 49)) + list(range(147, 196))
    assert keyframe_frames("every", L, every=10) == list(range(0, 196, 10))
    assert keyframe_frames("middle_half", 10) == [0, 1, 7, 8, 9]
    assert keyframe_frames("frames", 20, frames=[5, 1, 5]) == [1, 5]
    with pytest.raises(ValueError, match=r"keyframes \[20, -1\] are outside the motion"):
        keyframe_frames("frames", 20, frames=[3, 20, -1])


# ----------------------------------------------------------------------------- released procedure


def _setup(h=16, w=16, classes=True):
    sch = DDIMScheduler(**SD_DDIM)
    prior = image_prior(height=h, width=w, class_conditional=classes)
    return sch, PriorDenoiser.for_scheduler(prior, sch)


def released_wide_image(den, sch_cfg, steps, patch_noise, stride, w1, w2, scale, cond, uncond):
    """A straightforward loop of Hleephilip/ALM_public alm/wide_image.py (ALMWideImageGenerator.
    sample): all patches in one batch; the blended evaluations patch by patch, each patch's
    observed content its left neighbour's current (already updated) latent; canvas painted from
    the last patch to the first."""
    ref = f64_scheduler(DDIMScheduler, sch_cfg, steps)
    latents = patch_noise.clone()
    n, P = latents.shape[0], latents.shape[-1]
    mask = torch.zeros_like(latents[:1])
    mask[..., P - stride:] = 1
    ratio = ref.config.num_train_timesteps // steps
    for t in ref.timesteps:
        t = int(t)
        a_t = ref.alphas_cumprod[t]
        a_s = ref.alphas_cumprod[t - ratio] if t - ratio >= 0 else ref.final_alpha_cumprod
        sigma = ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()

        def eps_c(x):
            return den(x, torch.full((x.shape[0],), t), cond.expand(x.shape[0]))

        noise_y = eps_c(latents)
        blended_all = []
        for i in range(1, n):
            previous = torch.zeros_like(latents[i:i + 1])
            previous[..., :P - stride] = latents[i - 1:i, ..., stride:]
            blended = previous * (1 - mask) + latents[i:i + 1] * mask
            blended_all.append(blended)
            noise_e = eps_c(blended)
            latents[i:i + 1] += sigma * mask * (w1 * (noise_y[i:i + 1] - noise_e) - w2 * noise_e)
        before = latents.clone()
        tt = torch.full((n,), t)
        e_u, e_c = den(latents, tt, uncond.expand(n)), den(latents, tt, cond.expand(n))
        latents = ref.step(e_u + scale * (e_c - e_u), t, latents).prev_sample
        for i, blended in enumerate(blended_all, start=1):
            latents[i:i + 1] -= w1 * sigma * (1 - mask) * (before[i:i + 1] - blended)
    canvas = torch.zeros(*latents.shape[1:-1], P + stride * (n - 1), dtype=latents.dtype)
    for i in range(n - 1, -1, -1):
        canvas[..., stride * i: stride * i + P] = latents[i]
    return canvas


def _run(engine):
    return torch.cat([c.latent for c in engine], dim=-1)


def test_engine_reproduces_the_released_wide_image_procedure():
    sch, den = _setup()
    plan = plan_windows(16 + 12 * 4, 16, 12)
    cfg = EngineConfig(method="alm", w1=1.0, w2=0.001, steps=12, group=0, live="chained",
                       guidance_scale=7.5, blend="paste", seed=3)
    cond, uncond = torch.tensor([1]), torch.tensor([-1])
    eng = Engine(den, sch, plan, (4, 16, 16), -1, cfg, cond=cond, uncond=uncond, dtype=torch.float64)
    patch_noise = torch.stack([eng.noise(w.start, w.stop) for w in plan.windows])
    ref = released_wide_image(den, sch.config, 12, patch_noise, 12, 1.0, 0.001, 7.5, cond, uncond)
    out = _run(eng)
    assert out.shape == ref.shape == (4, 16, 64)
    assert (out - ref).abs().max() <= 1e-6
    # forwards per step: eps_c(Y) for all, one blended eval per observing patch, one guided
    assert eng.forwards == 12 * (1 + 4 + 1)
    # the batched order differs from the released one, but only slightly
    cfg.live = "batched"
    batched = _run(Engine(den, sch, plan, (4, 16, 16), -1, cfg, cond=cond, uncond=uncond,
                          dtype=torch.float64))
    diff = (batched - ref).abs().max().item()
    assert 1e-9 < diff < 0.5, diff


def test_windows_with_a_trajectory_equal_live_batched_windows():
    """G = 1 with the previous window's stored trajectory sees exactly the X_t that live batching
    sees (the neighbour's latent at the start of each step): the outputs agree."""
    sch, den = _setup(classes=False)
    plan = plan_windows(40, 16, 12)
    outs = {}
    for name, group, observed in (("traj", 1, "trajectory"), ("live", 0, "trajectory")):
        cfg = EngineConfig(steps=10, group=group, observed=observed, seed=5)
        outs[name] = _run(Engine(den, sch, plan, (4, 16, 16), -1, cfg, dtype=torch.float64))
    assert (outs["traj"] - outs["live"]).abs().max() <= 1e-9


@pytest.mark.parametrize("observed,forwards", [("trajectory", 2), ("matched", 2), ("invert", 3), ("noise", 2)])
def test_observed_sources_cost(observed, forwards):
    sch, den = _setup(classes=False)
    plan = plan_windows(40, 16, 12)
    cfg = EngineConfig(steps=6, group=1, observed=observed, seed=0)
    eng = Engine(den, sch, plan, (4, 16, 16), -1, cfg, dtype=torch.float64)
    out = _run(eng)
    assert out.shape == (4, 16, 40) and torch.isfinite(out).all()
    # window 0 is plain (1 forward/step); later windows 2/step, + 1/step for the inversion
    assert eng.forwards == 6 * 1 + 2 * 6 * forwards


def test_matched_observes_the_finished_overlap_with_the_windows_own_noise(monkeypatch):
    """``observed="matched"``: at step i a window's X_t on its overlap is
    sqrt(abar_i) X_0 + sqrt(1 - abar_i) eps_hat, X_0 = the left neighbour's finished latent there and
    eps_hat = the noise the window's guided evaluation predicted at step i - 1 (its initial latent at
    step 0). Recorded from the step function's own arguments; the same arithmetic, so exact."""
    import longgen.engine as E
    from longgen.denoiser import to_eps

    sch, den = _setup(classes=False)
    plan = plan_windows(28, 16, 12)                            # windows at 0 and 12, overlap 4
    seen, finals = [], []
    real = E.STEPS["alm"]

    def spy(ev, sc, i, y, x_t, m, act, w1, w2, gen):
        seen.append((i, y.clone(), x_t.clone()))
        out = real(ev, sc, i, y, x_t, m, act, w1, w2, gen)
        xg, og = ev.last_guided
        seen[-1] += (to_eps(og, xg, sc.abar[i].to(xg.dtype), den.prediction_type),)
        return out

    monkeypatch.setitem(E.STEPS, "alm", spy)
    eng = Engine(den, sch, plan, (4, 16, 16), -1, EngineConfig(steps=5, observed="matched", seed=2),
                 dtype=torch.float64)
    it = iter(eng)
    next(it)
    finals.append(eng.prev_final.clone())
    list(it)
    second = seen[5:]
    x0 = finals[0][..., 12:16]
    for i, y, x_t, _ in second:
        a = eng.sch.abar[i].to(torch.float64)
        noise = y[0, ..., :4] if i == 0 else second[i - 1][3][0, ..., :4]
        assert torch.equal(x_t[0, ..., :4], a.sqrt() * x0 + (1 - a).sqrt() * noise), i
    assert not torch.equal(second[2][2][0, ..., :4], second[1][2][0, ..., :4])


def test_chunks_are_final_memory_is_bounded_and_state_resumes_bit_identically():
    sch, den = _setup(h=8, w=8, classes=False)
    plan = plan_windows(8 + 6 * 29, 8, 6)  # 30 windows
    cfg = EngineConfig(steps=4, group=2, observed="trajectory", blend="feather", seed=1)

    def engine():
        return Engine(den, sch, plan, (4, 8, 8), -1, cfg, dtype=torch.float64)

    eng = engine()
    chunks, kept, peak = [], [], 0
    for c in eng:
        chunks.append(c)
        kept.append(c.latent.clone())
        peak = max(peak, eng.canvas.buffered)
    full = torch.cat([c.latent for c in chunks], -1)
    assert full.shape[-1] == plan.length
    assert all(torch.equal(a, c.latent) for a, c in zip(kept, chunks))  # nothing changed later
    assert peak <= 2 * plan.window  # the canvas tail, never the output

    # stop after 3 groups, save the state the way the runner does, continue in a new engine
    eng = engine()
    it = iter(eng)
    first = [next(it) for _ in range(3)]
    buf = io.BytesIO()
    torch.save(eng.state_dict(), buf)
    buf.seek(0)
    eng2 = engine()
    eng2.load_state_dict(torch.load(buf, weights_only=True))
    rest = list(eng2)
    resumed = torch.cat([c.latent for c in first + rest], -1)
    assert torch.equal(resumed, full)


def test_given_content_is_observed_and_paste_given_keeps_it():
    sch, den = _setup(classes=False)
    prior = image_prior(height=16, width=16, class_conditional=False)
    x0, _ = prior.sample(1, torch.Generator().manual_seed(0))
    plan = plan_windows(40, 16, 12)
    given = Given(values=x0[0], known=torch.ones_like(x0[0]))  # the first window is given whole
    out = {}
    for paste in (False, True):
        cfg = EngineConfig(steps=10, seed=2, paste_given=paste)
        out[paste] = _run(Engine(den, sch, plan, (4, 16, 16), -1, cfg, given=given, dtype=torch.float64))
    assert torch.equal(out[True][..., :16], x0[0])
    err = (out[False][..., :16] - x0[0]).pow(2).mean().sqrt().item()
    assert err < 0.5 * x0[0].std().item(), err  # ALM alone tracks the given window closely


def test_streamed_decode_of_chunks_equals_whole_decode():
    sch, den = _setup(classes=False)
    plan = plan_windows(40, 16, 12)
    eng = Engine(den, sch, plan, (4, 16, 16), -1, EngineConfig(steps=4), dtype=torch.float64)
    rgb = LatentRGB()
    dec = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-1, halo=1, scale=8)
    parts, latents = [], []
    for c in eng:
        latents.append(c.latent)
        out = dec.push(c.latent)
        if out is not None:
            parts.append(out)
    parts.append(dec.flush())
    streamed = torch.cat(parts, -1)
    whole = rgb.decode(torch.cat(latents, -1)[None])[0]
    assert streamed.shape == whole.shape == (3, 128, 320)
    assert (streamed - whole).abs().max() <= 1e-9


def test_engine_config_errors():
    with pytest.raises(ValueError, match="unknown observed 'live'"):
        EngineConfig(observed="live").validate()
    with pytest.raises(ValueError, match="group must be an integer >= 0"):
        EngineConfig(group=-1).validate()
    with pytest.raises(ValueError, match="live='chained'"):
        EngineConfig(method="syncsde", live="chained").validate()
    sch, den = _setup()
    with pytest.raises(ValueError, match="the plan's window is 16"):
        Engine(den, sch, plan_windows(40, 16, 12), (4, 16, 8), -1, EngineConfig())
