"""LoRA (``--lora``) and ControlNet (``--controlnet --control``) on the tiny SD checkpoints.

The LoRA is made here with peft on the tiny SD UNet and text encoder (random A and B, so it
changes the output) and saved in the diffusers LoRA format by ``save_lora_weights``, as the
diffusers training scripts save theirs. The references are diffusers' own pipelines from the same
initial latents: ``StableDiffusionPipeline`` after ``load_lora_weights`` / ``set_adapters``, and
``StableDiffusionControlNetPipeline``. Tolerance 1e-4 on images in [0, 1]: both sides run the same
float32 modules; what differs is the order of a few operations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longgen.cli import main
from longgen.engine import NoiseField
from longgen.modalities.image.jobs import load_model, panorama
from tests.fixtures.tiny_sd import tiny_sd_path, tiny_sdxl_path  # noqa: F401  (pytest fixtures)

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def tiny_lora(tiny_sd_path, tmp_path_factory) -> Path:  # noqa: F811
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    sd = load_model(tiny_sd_path)
    torch.manual_seed(5)
    sd.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    # peft itself (transformers' own add_adapter asks for a newer peft than the lock has)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                            sd.text_encoder)
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(sd.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(sd.text_encoder)),
        safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def _noise(seed: int, w: int = 16) -> torch.Tensor:
    return NoiseField(seed, (4, 16, 16), -1, torch.float32, "cpu")(0, w)[None]


def _pipe(path, cls_name="StableDiffusionPipeline", **kw):
    import diffusers

    from longgen.modalities.image.sd import ddim_from

    extra = dict(safety_checker=None, requires_safety_checker=False) if "XL" not in cls_name else {}
    pipe = getattr(diffusers, cls_name).from_pretrained(str(path), **extra, **kw)
    # DDIM with the checkpoint's betas and SD's clip/alpha settings (the SDXL checkpoint ships Euler)
    pipe.scheduler = ddim_from(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------- LoRA


def test_lora_one_window_equals_diffusers_load_lora_weights(tiny_sd_path, tiny_lora, tmp_path, capsys):  # noqa: F811
    pipe = _pipe(tiny_sd_path)
    pipe.load_lora_weights(str(tiny_lora), adapter_name="ref")
    pipe.set_adapters(["ref"], adapter_weights=[0.7])
    assert sorted(pipe.get_list_adapters()) == ["text_encoder", "unet"]  # the file holds both
    ref = pipe(PROMPT, height=128, width=128, num_inference_steps=4, guidance_scale=7.5,
               latents=_noise(3), output_type="np").images[0]
    sd = load_model(tiny_sd_path, lora=[f"{tiny_lora}:0.7"])
    ours = panorama(sd, PROMPT, 128, 128, steps=4, method="ddim", seed=3, output_type="np")
    assert np.abs(ours - ref).max() <= 1e-4
    plain = panorama(load_model(tiny_sd_path), PROMPT, 128, 128, steps=4, method="ddim", seed=3,
                     output_type="np")
    assert np.abs(plain - ref).max() > 1e-2  # the LoRA changes the picture
    # the CLI gives the same pixels; its resume request records the file's digest
    out = tmp_path / "l.png"
    argv = ["panorama", "--model", str(tiny_sd_path), "--width", "128", "--height", "128", "--steps", "4",
            "--method", "ddim", "--seed", "3", "--prompt", PROMPT, "--lora", f"{tiny_lora}:0.7",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    want = np.asarray(panorama(sd, PROMPT, 128, 128, steps=4, method="ddim", seed=3))
    assert np.array_equal(_png(out), want)


def test_lora_digest_is_part_of_the_resume_request(tiny_sd_path, tiny_lora, tmp_path):  # noqa: F811
    from longgen.cli import build_parser, discover
    from longgen.modalities.image.jobs import checkpoint_request
    from longgen.run import sha256_file

    args = build_parser(discover()).parse_args(
        ["panorama", "--model", str(tiny_sd_path), "--lora", str(tiny_lora), "--out", str(tmp_path / "x.png")])
    assert checkpoint_request(args)["lora_sha256"] == [sha256_file(tiny_lora)]


def _fake_lora(path: Path, keys: list[str], shape=(4, 32)) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k in keys}, str(path))
    return path


def test_lora_for_another_family_is_refused_naming_both(tiny_sd_path, tiny_sdxl_path, tiny_lora, tmp_path, capsys):  # noqa: F811
    flux = _fake_lora(tmp_path / "flux.safetensors",
                      ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"])
    sdxl = _fake_lora(tmp_path / "sdxl.safetensors",
                      ["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"])
    pickled = tmp_path / "old.bin"
    pickled.write_bytes(b"x")
    cases = [
        (tiny_sd_path, f"{flux}:0.5", f"LoRA {flux} is for FLUX.1; the model is SD 1.x/2.x"),
        (tiny_sd_path, str(sdxl), f"LoRA {sdxl} is for SDXL; the model is SD 1.x/2.x"),
        (tiny_sdxl_path, str(tiny_lora), f"LoRA {tiny_lora} is for a UNet with cross-attention width 32 "
                                         "(another model); the model is SDXL with width 64"),
        (tiny_sd_path, str(pickled), "only .safetensors LoRA files are read (got .bin)"),
        (tiny_sd_path, str(tmp_path / "none.safetensors"), "no such file"),
        ("builtin", str(tiny_lora), "--lora needs a checkpoint model (--model DIR)"),
    ]
    for model, spec, msg in cases:
        out = tmp_path / "o.png"
        rc = main(["panorama", "--model", str(model), "--width", "128", "--height", "128", "--steps", "1",
                   "--lora", spec, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        err = [e for e in err if not e.startswith("[transformers]")]
        assert rc == 2 and len(err) == 1 and msg in err[0], (spec, err)
        assert not out.exists()


# --------------------------------------------------------------------------- ControlNet


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_sd_path, tmp_path_factory) -> Path:  # noqa: F811
    """A ControlNetModel from the tiny UNet's config and weights (``from_unet``), its zero-initialised
    output convolutions filled with small random weights so that it changes the UNet's output."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd_path), subfolder="unet")
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            for prm in mod.parameters():
                prm.copy_(0.2 * torch.randn(prm.shape, generator=g))
    folder = tmp_path_factory.mktemp("controlnet")
    cn.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _control_png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_controlnet_one_window_equals_diffusers_pipeline(tiny_sd_path, tiny_controlnet, tmp_path):  # noqa: F811
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    control = Image.open(_control_png(tmp_path / "c.png", 128, 128))
    base = _pipe(tiny_sd_path)
    cn = ControlNetModel.from_pretrained(str(tiny_controlnet))
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=cn, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=control, height=128, width=128, num_inference_steps=4, guidance_scale=7.5,
               controlnet_conditioning_scale=0.8, latents=_noise(3), output_type="np").images[0]
    sd = load_model(tiny_sd_path)
    ours = panorama(sd, PROMPT, 128, 128, steps=4, method="ddim", seed=3, output_type="np",
                    controlnet=str(tiny_controlnet), control_image=control, controlnet_conditioning_scale=0.8)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = panorama(sd, PROMPT, 128, 128, steps=4, method="ddim", seed=3, output_type="np")
    assert np.abs(plain - ref).max() > 1e-2  # the ControlNet changes the picture


@pytest.mark.parametrize("loop", [False, True])
def test_each_window_gets_its_own_crop_of_the_control_image(tiny_sd_path, tiny_controlnet, tmp_path,  # noqa: F811
                                                            capsys, loop):
    """A 384 x 128 canvas of 128-px windows (4 windows, ALM, group 1): a hook on the ControlNet
    sees in every forward, in every row (guided, unguided, blended), exactly the crop of the
    control image under the window being sampled -- resized once to the canvas; around a loop the
    closing window's crop continues at the image's left edge."""
    from diffusers import ControlNetModel

    from longgen.modalities.image.adapters import control_tensor
    from longgen.modalities.image.jobs import panorama_plan

    src = _control_png(tmp_path / "wide.png", 768, 256, seed=1)   # 2x the canvas, same aspect
    full = control_tensor(src, 384, 128)
    plan = panorama_plan(384, 128, 128, 96, 8, loop=loop)
    crops = []
    for w in plan.windows:
        px = torch.arange(w.start * 8, w.stop * 8) % 384
        crops.append(full[..., px])
    seen = []

    def hook(module, args, kwargs):
        cond = kwargs["controlnet_cond"]
        hits = [k for k, c in enumerate(crops) if all(torch.equal(row, c[0]) for row in cond)]
        seen.append(hits[0] if len(hits) == 1 else -1)

    orig = ControlNetModel.forward  # the inputs are keyword arguments: wrap forward itself

    def spy(self, *a, **kw):
        hook(self, a, kw)
        return orig(self, *a, **kw)

    ControlNetModel.forward = spy
    try:
        out = tmp_path / "cn.png"
        argv = ["panorama", "--model", str(tiny_sd_path), "--width", "384", "--height", "128", "--steps", "3",
                "--controlnet", str(tiny_controlnet), "--control", str(src), "--prompt", PROMPT,
                "--out", str(out), "--no-progress"] + (["--loop"] if loop else [])
        assert main(argv) == 0
    finally:
        ControlNetModel.forward = orig
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["windows"] == len(plan) == 4
    assert -1 not in seen                                   # every row is one window's crop
    assert seen == sorted(seen) and sorted(set(seen)) == list(range(len(plan)))
    assert len(seen) == info["unet_forwards"]               # one ControlNet call per UNet forward
    plain = tmp_path / "plain.png"
    argv = ["panorama", "--model", str(tiny_sd_path), "--width", "384", "--height", "128", "--steps", "3",
            "--prompt", PROMPT, "--out", str(plain), "--no-progress"] + (["--loop"] if loop else [])
    assert main(argv) == 0
    capsys.readouterr()
    assert not np.array_equal(_png(out), _png(plain))


def test_controlnet_bad_input_is_refused(tiny_sd_path, tiny_controlnet, tmp_path, capsys):  # noqa: F811
    square = _control_png(tmp_path / "sq.png", 128, 128)
    xl = tmp_path / "xl_cn"
    xl.mkdir()
    (xl / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 2048,
                                                "addition_embed_type": "text_time"}))
    base = ["panorama", "--model", str(tiny_sd_path), "--width", "384", "--height", "128", "--steps", "1"]
    cases = [
        ([*base, "--controlnet", str(tiny_controlnet), "--control", str(square)],
         f"--control {square} is 128x128 (aspect 1.000) but the canvas is 384x128 (aspect 3.000)"),
        ([*base, "--controlnet", str(xl), "--control", str(square)],
         f"--controlnet {xl} is for SDXL (cross-attention width 2048); the model is SD (cross-attention width 32)"),
        ([*base, "--controlnet", str(tiny_controlnet)], "--controlnet DIR and --control IMAGE go together"),
        (["panorama", "--controlnet", str(tiny_controlnet), "--control", str(square)],
         "--controlnet needs a checkpoint model (--model DIR)"),
    ]
    for argv, msg in cases:
        out = tmp_path / "o.png"
        rc = main([*argv, "--out", str(out), "--no-progress"])
        err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("[transformers]")]
        assert rc == 2 and len(err) == 1 and msg in err[0], (argv, err)
        assert not out.exists()


# --------------------------------------------------------------------------- LoRA on FLUX


def _transformer_lora(pipe, folder: Path, seed: int) -> Path:
    """A peft LoRA (random A and B) on ``pipe.transformer``'s attention projections, saved by the
    pipeline class's own ``save_lora_weights``; the file's path."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    tr = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                                 pipe.transformer)
    type(pipe).save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(tr),
                                 safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def test_lora_on_flux_equals_flux_pipeline_load_lora_weights(tmp_path, tiny_lora):
    """A peft LoRA on the tiny FLUX transformer (dev-like), saved with FluxPipeline.save_lora_weights:
    one ``ddim`` (Euler) window through longgen with ``lora=`` equals FluxPipeline after
    load_lora_weights / set_adapters from the same latents (float32; bound 1e-4 of max|ref|, as
    for FLUX without a LoRA), and differs from the run without it; an SD LoRA is refused."""
    from diffusers import FluxPipeline

    from longgen.modalities.image.flux import pack, unpack
    from tests.test_flux import MAX_TOKENS, build_flux

    path = build_flux(str(tmp_path / "f"), guidance_embeds=True)
    lora = _transformer_lora(FluxPipeline.from_pretrained(path), tmp_path / "lora", seed=3)

    ref_pipe = FluxPipeline.from_pretrained(path)
    ref_pipe.set_progress_bar_config(disable=True)
    ref_pipe.load_lora_weights(str(lora), adapter_name="ref")
    ref_pipe.set_adapters(["ref"], adapter_weights=[0.6])
    noise = NoiseField(2, (4, 16, 16), -1, torch.float32, "cpu")(0, 16)   # the tiny VAE is 2x
    ref = ref_pipe("a mountain lake", height=32, width=32, num_inference_steps=4, guidance_scale=3.5,
                   output_type="latent", max_sequence_length=MAX_TOKENS, latents=pack(noise[None])).images
    ref = unpack(ref, 16, 16)[0]

    def ours(**kw):
        model = load_model(path, **kw)
        model.max_sequence_length = MAX_TOKENS
        return panorama(model, "a mountain lake", 32, 32, window=32, steps=4, method="ddim", seed=2,
                        guidance_scale=3.5, output_type="latent")

    got = ours(lora=[f"{lora}:0.6"])
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), float((got - ref).abs().max())
    assert (ours() - ref).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"is for SD 1.x/2.x or SDXL \(UNet keys\); the model is FLUX.1"):
        load_model(path, lora=[str(tiny_lora)])


# --------------------------------------------------------------------------- ControlNet on FLUX


def test_flux_controlnet_one_window_equals_flux_controlnet_pipeline(tmp_path, monkeypatch):
    """A tiny InstantX-style FluxControlNetModel (``from_transformer`` of the tiny FLUX, its zero
    output layers filled with small random weights) saved and loaded back through ``--controlnet``'s
    loader: one window equals FluxControlNetPipeline from the same latents. The pipeline draws a
    sample of the VAE posterior for the control image; longgen takes its mode, so the reference is
    run with the posterior's sample made its mode (everything else as released)."""
    from diffusers import FluxControlNetModel, FluxControlNetPipeline, FluxPipeline
    from diffusers.models.autoencoders import vae as vae_mod

    from longgen.modalities.image.flux import pack, unpack
    from tests.test_flux import MAX_TOKENS, build_flux

    path = build_flux(str(tmp_path / "f"), guidance_embeds=True)
    base = FluxPipeline.from_pretrained(path)
    torch.manual_seed(4)
    cn = FluxControlNetModel.from_transformer(base.transformer, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for mod in [*cn.controlnet_blocks, *cn.controlnet_single_blocks, cn.controlnet_x_embedder]:
            for prm in mod.parameters():
                prm.copy_(0.2 * torch.randn(prm.shape, generator=g))
    cn.save_pretrained(str(tmp_path / "cn"))
    control = Image.open(_control_png(tmp_path / "c.png", 32, 32, seed=2))
    noise = NoiseField(2, (4, 16, 16), -1, torch.float32, "cpu")(0, 16)

    pipe = FluxControlNetPipeline(**base.components, controlnet=FluxControlNetModel.from_pretrained(str(tmp_path / "cn")))
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(vae_mod.DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    ref = pipe("a mountain lake", control_image=control, height=32, width=32, num_inference_steps=4,
               guidance_scale=3.5, controlnet_conditioning_scale=0.7, output_type="latent",
               max_sequence_length=MAX_TOKENS, latents=pack(noise[None])).images
    monkeypatch.undo()
    ref = unpack(ref, 16, 16)[0]

    model = load_model(path)
    model.max_sequence_length = MAX_TOKENS
    kw = dict(window=32, steps=4, method="ddim", seed=2, guidance_scale=3.5, output_type="latent")
    got = panorama(model, "a mountain lake", 32, 32, controlnet=str(tmp_path / "cn"), control_image=control,
                   controlnet_conditioning_scale=0.7, **kw)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), float((got - ref).abs().max())
    assert (panorama(model, "a mountain lake", 32, 32, **kw) - ref).abs().max() > 1e-2
    # an SD ControlNet for a FLUX model is refused naming both
    sd_cn = tmp_path / "sdcn"
    sd_cn.mkdir()
    (sd_cn / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 768}))
    with pytest.raises(ValueError, match="is a ControlNetModel; the model is FLUX.1 and takes a FluxControlNetModel"):
        panorama(model, "a mountain lake", 32, 32, controlnet=str(sd_cn), control_image=control, **kw)


@pytest.mark.parametrize("zeros", [True, False], ids=["instantx", "pooled"])
def test_sd3_controlnet_one_window_equals_sd3_controlnet_pipeline(tmp_path, monkeypatch, zeros):
    """A tiny SD3ControlNetModel of the tiny SD3 transformer's shape (its zero layers filled with
    small random weights), with and without forced zero pooled projections: one window with CFG 7
    equals StableDiffusion3ControlNetPipeline from the same latents (the posterior's sample made
    its mode, as for FLUX)."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline, StableDiffusion3Pipeline
    from diffusers.models.autoencoders import vae as vae_mod

    from tests.test_sd3 import MAX_TOKENS, build_sd3

    path = build_sd3(str(tmp_path / "s"), with_t5=True)
    torch.manual_seed(6)
    cn = SD3ControlNetModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                            pooled_projection_dim=64, out_channels=4, pos_embed_max_size=32,
                            force_zeros_for_pooled_projection=zeros)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for mod in [*cn.controlnet_blocks, cn.pos_embed_input]:
            for prm in mod.parameters():
                prm.copy_(0.2 * torch.randn(prm.shape, generator=g))
    cn.save_pretrained(str(tmp_path / "cn"))
    control = Image.open(_control_png(tmp_path / "c.png", 32, 32, seed=3))
    noise = NoiseField(5, (4, 16, 16), -1, torch.float32, "cpu")(0, 16)

    base = StableDiffusion3Pipeline.from_pretrained(path)
    pipe = StableDiffusion3ControlNetPipeline(**base.components,
                                              controlnet=SD3ControlNetModel.from_pretrained(str(tmp_path / "cn")))
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(vae_mod.DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    ref = pipe("a mountain lake", control_image=control, height=32, width=32, num_inference_steps=4,
               guidance_scale=7.0, controlnet_conditioning_scale=0.7, output_type="latent",
               max_sequence_length=MAX_TOKENS, latents=noise[None]).images[0]
    monkeypatch.undo()

    model = load_model(path)
    model.max_sequence_length = MAX_TOKENS
    kw = dict(window=32, steps=4, method="ddim", seed=5, guidance_scale=7.0, output_type="latent")
    got = panorama(model, "a mountain lake", 32, 32, controlnet=str(tmp_path / "cn"), control_image=control,
                   controlnet_conditioning_scale=0.7, **kw)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), float((got - ref).abs().max())
    assert (panorama(model, "a mountain lake", 32, 32, **kw) - ref).abs().max() > 1e-2


def test_lora_on_sd3_equals_sd3_pipeline_load_lora_weights(tmp_path):
    """As for FLUX: a peft LoRA on the tiny SD3 transformer, one window with CFG 7 through longgen
    equals StableDiffusion3Pipeline after load_lora_weights / set_adapters."""
    from diffusers import StableDiffusion3Pipeline

    from tests.test_sd3 import MAX_TOKENS, build_sd3

    path = build_sd3(str(tmp_path / "s"), with_t5=False)
    lora = _transformer_lora(StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None),
                             tmp_path / "lora", seed=8)
    ref_pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)
    ref_pipe.set_progress_bar_config(disable=True)
    ref_pipe.load_lora_weights(str(lora), adapter_name="ref")
    ref_pipe.set_adapters(["ref"], adapter_weights=[0.8])
    noise = NoiseField(4, (4, 16, 16), -1, torch.float32, "cpu")(0, 16)
    ref = ref_pipe("a mountain lake", height=32, width=32, num_inference_steps=4, guidance_scale=7.0,
                   output_type="latent", max_sequence_length=MAX_TOKENS, latents=noise[None]).images[0]

    def ours(**kw):
        model = load_model(path, **kw)
        model.max_sequence_length = MAX_TOKENS
        return panorama(model, "a mountain lake", 32, 32, window=32, steps=4, method="ddim", seed=4,
                        guidance_scale=7.0, output_type="latent")

    got = ours(lora=[f"{lora}:0.8"])
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), float((got - ref).abs().max())
    assert (ours() - ref).abs().max() > 1e-2


def test_sdxl_controlnet_one_window_equals_diffusers_pipeline(tiny_sdxl_path, tmp_path):  # noqa: F811
    """SDXL: a ControlNetModel from the tiny SDXL UNet (``from_unet`` keeps its text-time
    embedding), random output convolutions; one window equals StableDiffusionXLControlNetPipeline."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sdxl_path), subfolder="unet")
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            for prm in mod.parameters():
                prm.copy_(0.2 * torch.randn(prm.shape, generator=g))
    cn.save_pretrained(str(tmp_path / "cn"))
    control = Image.open(_control_png(tmp_path / "c.png", 128, 128, seed=4))
    base = _pipe(tiny_sdxl_path, "StableDiffusionXLPipeline")
    pipe = StableDiffusionXLControlNetPipeline(**{k: v for k, v in base.components.items()
                                                  if k not in ("image_encoder", "feature_extractor")},
                                               controlnet=ControlNetModel.from_pretrained(str(tmp_path / "cn")))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=control, height=128, width=128, num_inference_steps=4, guidance_scale=7.5,
               controlnet_conditioning_scale=0.8, latents=_noise(3), output_type="np").images[0]
    ours = panorama(load_model(tiny_sdxl_path), PROMPT, 128, 128, steps=4, method="ddim", seed=3,
                    output_type="np", controlnet=str(tmp_path / "cn"), control_image=control,
                    controlnet_conditioning_scale=0.8)
    assert np.abs(ours - ref).max() <= 1e-4


def test_lora_applies_to_inpainting_too(tiny_sd_path, tiny_lora, tmp_path, capsys):  # noqa: F811
    """``longgen inpaint --lora``: the LoRA changes the filled hole; the kept pixels of the blended
    output stay the source's."""
    src = _control_png(tmp_path / "src.png", 128, 128, seed=6)
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    outs = {}
    for name, extra in (("plain", []), ("lora", ["--lora", f"{tiny_lora}:0.9"])):
        out = tmp_path / f"{name}.png"
        rc = main(["inpaint", "--model", str(tiny_sd_path), "--image", str(src), "--mask", str(tmp_path / "mask.png"),
                   "--steps", "3", "--prompt", PROMPT, "--out", str(out), "--no-progress", *extra])
        assert rc == 0
        outs[name] = _png(out)
    capsys.readouterr()
    hole = (slice(40, 88), slice(40, 88))
    assert np.abs(outs["plain"][hole].astype(int) - outs["lora"][hole].astype(int)).max() > 10
    blended = _png(tmp_path / "lora-blended.png")
    far = (slice(0, 16), slice(0, 128))   # more than the blend's reach from the hole
    assert np.array_equal(blended[far], _png(src)[far])
