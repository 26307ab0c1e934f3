"""The Stable Diffusion adapter (modalities/image/sd.py) on tiny random checkpoints.

Reference values come from outside the adapter: the in-memory components the checkpoint was saved
from, diffusers' own ``encode_prompt`` / ``_get_add_time_ids`` / ``DDIMScheduler.step``, direct
UNet and VAE calls, and the published scaling factors.
"""

import pytest
import torch

from longgen.denoiser import Evaluator, Request, cat_cond, to_eps, to_x0
from longgen.modalities.image.sd import SDModel, load_sd, resolve_dtype
from tests.fixtures.tiny_sd import (  # noqa: F401  (pytest fixtures)
    SD_SCALING, SDXL_SCALING, tiny_sd_components, tiny_sd_path, tiny_sd_vpred_path,
    tiny_sdxl_path, tiny_taesd_path,
)

PROMPTS = ["a photo of a cat", "a wide mountain lake panorama"]


def _maxabs(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# transformers may pick another attention kernel for a model loaded from disk than for the one built
# in memory (sdpa / eager), which sums the same float32 products in another order. Such a reorder
# moves a result by a few units in the last place of the largest magnitude involved: allow 8 ulps
# (float32 eps = 2**-23 = 1.19e-7) of max|ref|. Seen with transformers 5.24: 1.49e-7 on values ~1.
F32_ULPS = 8


def _f32_close(a, b) -> bool:
    eps = torch.finfo(torch.float32).eps
    return _maxabs(a, b) <= F32_ULPS * eps * max(1.0, b.float().abs().max().item())


def _parts(cond) -> list:
    """The tensors of a condition, in a fixed order."""
    return [cond[k] for k in sorted(cond)] if isinstance(cond, dict) else [cond]


def _raw_unet(unet, x, t, cond):
    """A direct UNet call, written out independently of the adapter."""
    if isinstance(cond, dict):
        return unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"],
                    added_cond_kwargs={"text_embeds": cond["text_embeds"],
                                       "time_ids": cond["time_ids"]}).sample
    return unet(x, t, encoder_hidden_states=cond).sample


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return load_sd(tiny_sd_path)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_path):
    return load_sd(tiny_sdxl_path)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """diffusers pipelines over in-memory components built with the fixture's seed."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("mem")
    p1 = StableDiffusionPipeline(**tiny_sd_components(root / "sd"), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    p2 = StableDiffusionXLPipeline(**tiny_sd_components(root / "xl", sdxl=True),
                                   force_zeros_for_empty_prompt=True, add_watermarker=False)
    return {"sd": p1, "sdxl": p2}


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_loaded_checkpoint_is_bit_identical_to_in_memory(kind, request, pipes):
    """Disk round trip: the same conditions as the components (to float32 rounding, transformers'
    path) and, on the same inputs, the same UNet output (max-abs 0: the weights round-trip exactly)."""
    model = request.getfixturevalue(kind)
    mem = SDModel.from_pipeline(pipes[kind])
    assert model.is_sdxl == (kind == "sdxl") and mem.is_sdxl == model.is_sdxl
    cond, uncond = model.encode_prompt(PROMPTS[0], "")
    mcond, muncond = mem.encode_prompt(PROMPTS[0], "")
    for a, b in zip(_parts(cond) + _parts(uncond), _parts(mcond) + _parts(muncond)):
        assert _f32_close(a, b), _maxabs(a, b)  # transformers' float32 path (see F32_ULPS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([999, 21])
    both = cat_cond([uncond, cond], [1, 1])
    out = model.denoiser(x, t, both)
    with torch.no_grad():
        ref = _raw_unet(pipes[kind].unet, x, t, both)
    assert out.shape == x.shape
    assert _maxabs(out, ref) == 0.0


def test_scheduler_is_ddim_of_the_checkpoint_config(sd, sdxl, pipes):
    from diffusers import DDIMScheduler

    for model, name in [(sd, "sd"), (sdxl, "sdxl")]:
        assert isinstance(model.scheduler, DDIMScheduler)
        ref = pipes[name].scheduler.alphas_cumprod
        assert _maxabs(model.alphas_cumprod, ref) == 0.0
        # SD's published schedule: scaled_linear betas 0.00085..0.012 over 1000 steps
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
        assert _maxabs(model.alphas_cumprod, torch.cumprod(1 - betas, 0)) < 1e-6
        assert model.scheduler.config.steps_offset == 1
        assert model.scheduler.config.set_alpha_to_one is False
        assert model.scheduler.config.clip_sample is False
        assert model.num_train_timesteps == 1000
    assert type(pipes["sdxl"].scheduler).__name__ == "EulerDiscreteScheduler"  # converted


# --------------------------------------------------------------------------- conditions


def test_sd_conditions_match_diffusers_encode_prompt(sd, pipes):
    cond, uncond = sd.encode_prompt(PROMPTS, "blurry")
    ref_c, ref_u = pipes["sd"].encode_prompt(PROMPTS, "cpu", 1, True, ["blurry"] * 2)
    assert cond.shape == uncond.shape == (2, 77, 32)
    assert _maxabs(cond, ref_c) == 0.0 and _maxabs(uncond, ref_u) == 0.0
    # default negative prompt = "" for SD 1/2
    _, u0 = sd.encode_prompt(PROMPTS[0])
    _, ref_u0 = pipes["sd"].encode_prompt(PROMPTS[0], "cpu", 1, True, "")
    assert _maxabs(u0, ref_u0) == 0.0
    # batching through cat_cond: expansion of batch-1 parts, order kept
    c1, u1 = sd.encode_prompt(PROMPTS[0])
    batch = cat_cond([u1, c1, cond], [3, 1, 2])
    assert batch.shape == (6, 77, 32)
    assert _maxabs(batch[2], u1[0]) == 0.0 and _maxabs(batch[3], c1[0]) == 0.0
    assert _maxabs(batch[4:], cond) == 0.0


def test_sdxl_conditions_match_diffusers(sdxl, pipes):
    pipe = pipes["sdxl"]
    size = (128, 192)
    cond, uncond = sdxl.encode_prompt(PROMPTS, size=size)
    pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True)
    assert cond["encoder_hidden_states"].shape == (2, 77, 64)
    assert cond["text_embeds"].shape == (2, 32) and cond["time_ids"].shape == (2, 6)
    assert _maxabs(cond["encoder_hidden_states"], pe) == 0.0
    assert _maxabs(cond["text_embeds"], pooled) == 0.0
    # force_zeros_for_empty_prompt with no negative prompt: zeros, as diffusers does
    assert sdxl.force_zeros_for_empty_prompt is True
    assert _maxabs(uncond["encoder_hidden_states"], npe) == 0.0 == npe.abs().max().item()
    assert _maxabs(uncond["text_embeds"], npooled) == 0.0
    # an explicit "" is encoded, not zeroed
    _, u_empty = sdxl.encode_prompt(PROMPTS, "", size=size)
    _, ref_npe, _, ref_npooled = pipe.encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=True, negative_prompt="")
    assert u_empty["encoder_hidden_states"].abs().max() > 0
    assert _maxabs(u_empty["encoder_hidden_states"], ref_npe) == 0.0
    assert _maxabs(u_empty["text_embeds"], ref_npooled) == 0.0
    # time ids of the WINDOW: original (h, w), crop (0, 0), target (h, w)
    ref_ids = pipe._get_add_time_ids(size, (0, 0), size, torch.float32,
                                     text_encoder_projection_dim=32)
    assert torch.equal(cond["time_ids"], ref_ids.expand(2, 6))
    assert cond["time_ids"][0].tolist() == [128.0, 192.0, 0.0, 0.0, 128.0, 192.0]
    assert torch.equal(uncond["time_ids"], cond["time_ids"])
    # default window: the native size (sample_size * vae_scale_factor = 128)
    native = sdxl.encode_prompt("a cat")[0]["time_ids"][0].tolist()
    assert native == [128.0, 128.0, 0.0, 0.0, 128.0, 128.0]
    # batching dicts through cat_cond
    c1, u1 = sdxl.encode_prompt("a cat", size=size)
    batch = cat_cond([u1, c1, cond], [1, 2, 2])
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "encoder_hidden_states": (5, 77, 64), "text_embeds": (5, 32), "time_ids": (5, 6)}
    assert _maxabs(batch["text_embeds"][1], c1["text_embeds"][0]) == 0.0
    assert _maxabs(batch["text_embeds"][3:], cond["text_embeds"]) == 0.0


# --------------------------------------------------------------------------- one batched forward


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_evaluator_makes_one_unet_forward_of_five_rows(kind, request):
    model = request.getfixturevalue(kind)
    cond, uncond = model.encode_prompt("a photo of a cat", "a dog")
    rows = []
    hook = model.unet.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        g = torch.Generator().manual_seed(1)
        x1, x2, x3 = (torch.randn(1, 4, 16, 16, generator=g) for _ in range(3))
        t = 601
        ev = Evaluator(model.denoiser, cond, uncond, guidance_scale=7.5)
        reqs = [Request(x1, guided=True), Request(x2, guided=True), Request(x3)]
        (e1, e2, e3), conds = ev(t, reqs, return_cond=True)
        assert rows == [5] and ev.calls == 1 and ev.rows == 5
        tt = torch.tensor([t])
        with torch.no_grad():
            for x, e, e_cond, guided in [(x1, e1, conds[0], True), (x2, e2, conds[1], True),
                                         (x3, e3, conds[2], False)]:
                e_c = _raw_unet(model.unet, x, tt, cond)  # separate batch-1 forwards
                e_u = _raw_unet(model.unet, x, tt, uncond)
                # a row of a batch-5 forward differs from a batch-1 forward by fp32 kernel
                # rounding only (measured ~2e-6)
                assert _maxabs(e_cond, e_c) <= 1e-5
                if guided:
                    # u + s (c - u) amplifies a row error d to at most (|1 - s| + s) d = 14 d
                    assert _maxabs(e, e_u + 7.5 * (e_c - e_u)) <= 14 * 1e-5
                else:
                    assert _maxabs(e, e_c) <= 1e-5
    finally:
        hook.remove()


# --------------------------------------------------------------------------- prediction types


@pytest.mark.parametrize("fixture", ["tiny_sd_path", "tiny_sd_vpred_path"])
def test_prediction_type_converts_like_diffusers_ddim(fixture, request):
    """The Evaluator's output, through longgen's to_eps / to_x0, gives diffusers' DDIM x0 and
    previous sample (eta = 0)."""
    model = load_sd(request.getfixturevalue(fixture))
    expected = "v_prediction" if "vpred" in fixture else "epsilon"
    assert model.prediction_type == model.denoiser.prediction_type == expected
    cond, _ = model.encode_prompt("a photo of a cat")
    sched = model.scheduler
    sched.set_timesteps(50)
    t = int(sched.timesteps[10])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = _raw_unet(model.unet, x, torch.tensor([t]), cond)
    ref = sched.step(raw, t, x, eta=0.0)
    a, a_prev = model.alphas_cumprod[t], model.alphas_cumprod[t - 1000 // 50]
    (out,) = Evaluator(model.denoiser, cond)(t, [Request(x)])
    assert _maxabs(out, raw) == 0.0
    eps = to_eps(out, x, a, model.prediction_type)
    x0 = to_x0(out, x, a, model.prediction_type)
    prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM Eq. 12, eta = 0
    assert _maxabs(x0, ref.pred_original_sample) <= 1e-5 * max(1.0, x0.abs().max().item())
    assert _maxabs(prev, ref.prev_sample) <= 1e-5
    if expected == "v_prediction":
        assert _maxabs(eps, raw) > 1e-2  # the conversion did something


# --------------------------------------------------------------------------- VAE


@pytest.mark.parametrize("kind,scale", [("sd", SD_SCALING), ("sdxl", SDXL_SCALING)])
def test_vae_encode_decode_scaling_and_chunks(kind, scale, request):
    model = request.getfixturevalue(kind)
    assert model.vae_scale_factor == 8 and model.latent_channels == 4 and model.sample_size == 16
    img = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = model.vae_encode(img)  # chunk = 1
    assert z.shape == (3, 4, 8, 12) and z.dtype == torch.float32
    with torch.no_grad():
        ref = model.vae.encode(img).latent_dist.mode() * scale
        ref_img = model.vae.decode(z / scale).sample.clamp(-1, 1)
    assert _maxabs(z, ref) <= 1e-5
    assert _maxabs(model.vae_encode(img, chunk=2), z) <= 1e-5
    out = model.vae_decode(z, chunk=2)
    assert out.shape == (3, 3, 64, 96)
    assert _maxabs(out, ref_img) <= 1e-5
    assert out.abs().max() <= 1.0


def test_tiny_autoencoder_as_vae(tiny_sd_path, tiny_taesd_path):
    from diffusers import AutoencoderTiny

    model = load_sd(tiny_sd_path, vae=tiny_taesd_path)
    assert isinstance(model.vae, AutoencoderTiny)
    assert model.vae_scale_factor == 8 and model.latent_channels == 4
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z = model.vae_encode(img)
    with torch.no_grad():  # TAESD latents are already in SD's scaled space (scaling_factor 1)
        ref = model.vae.encode(img).latents
        ref_img = model.vae.decode(ref).sample.clamp(-1, 1)
    assert z.shape == (2, 4, 8, 8) and _maxabs(z, ref) <= 1e-6  # chunks of 1 vs one batch
    assert _maxabs(model.vae_decode(z), ref_img) <= 1e-6


# --------------------------------------------------------------------------- bf16


def test_bf16_runs_close_to_fp32(tiny_sd_path, sd):
    m16 = load_sd(tiny_sd_path, dtype="bf16")
    assert m16.unet.dtype == m16.text_encoder.dtype == torch.bfloat16
    c16, _ = m16.encode_prompt("a photo of a cat")
    c32, _ = sd.encode_prompt("a photo of a cat")
    assert c16.dtype == torch.bfloat16
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([500, 500])
    out16, out32 = m16.denoiser(x, t, c16), sd.denoiser(x, t, c32)
    assert out16.dtype == torch.float32  # cast back to x's dtype
    rel = _maxabs(out16, out32) / out32.abs().max().item()
    assert 0 < rel < 0.05  # bf16 keeps ~3 significant digits
    assert m16.vae_decode(m16.vae_encode(torch.zeros(1, 3, 32, 32))).dtype == torch.float32


# --------------------------------------------------------------------------- bad input


def test_bad_inputs(tmp_path, tiny_sd_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        load_sd(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ValueError, match="missing .*unet"):
        load_sd(tmp_path)
    with pytest.raises(FileNotFoundError, match="local diffusers|checkpoint directory"):
        load_sd(tmp_path / "nowhere" / "model")
    with pytest.raises(FileNotFoundError, match="local_files_only"):
        load_sd("no-such-owner-xyz/no-such-model-xyz")
    with pytest.raises(ValueError, match="'fp16' is not supported on CPU"):
        load_sd(tiny_sd_path, dtype="fp16")
    with pytest.raises(ValueError, match="allowed: fp32, fp16, bf16"):
        load_sd(tiny_sd_path, dtype="fp8")
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda") == torch.float16


def test_from_components_converts_scheduler_and_keeps_sdxl_defaults(sdxl, tmp_path):
    parts = tiny_sd_components(tmp_path, sdxl=True)
    assert type(parts["scheduler"]).__name__ == "EulerDiscreteScheduler"
    model = SDModel.from_components(**parts)
    assert type(model.scheduler).__name__ == "DDIMScheduler"
    assert model.force_zeros_for_empty_prompt is True  # the SDXL pipeline's default
    cond, uncond = model.encode_prompt("a cat", size=(64, 128))
    ref_c, ref_u = sdxl.encode_prompt("a cat", size=(64, 128))
    for a, b in zip(_parts(cond) + _parts(uncond), _parts(ref_c) + _parts(ref_u)):
        assert _f32_close(a, b), _maxabs(a, b)  # transformers' float32 path (see F32_ULPS)


def test_bad_conditions(sd, sdxl):
    with pytest.raises(ValueError, match="negative_prompt has 3"):
        sd.encode_prompt(PROMPTS, ["a", "b", "c"])
    with pytest.raises(ValueError, match="SDXL UNet needs a dict"):
        sdxl.denoiser(torch.zeros(1, 4, 16, 16), torch.tensor([1]), torch.zeros(1, 77, 64))
    with pytest.raises(ValueError, match="SDXL needs"):  # an SDXL UNet without text_encoder_2
        SDModel.from_components(unet=sdxl.unet, vae=sd.vae, text_encoder=sd.text_encoder,
                                tokenizer=sd.tokenizer, scheduler=sd.scheduler)
    with pytest.raises(ValueError, match="size must be"):
        sdxl.encode_prompt("a cat", size=(64, 64, 3))
