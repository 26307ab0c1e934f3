"""LoRA (``--lora``) and ControlNet (``--controlnet --control``) on the tiny SD checkpoints.

The LoRA is made here with peft on the tiny SD UNet and text encoder (random A and B, so it
changes the output) and saved in the diffusers LoRA format by ``save_lora_weights``, as the
diffusers training scripts save theirs. The references are diffusers' own pipelines from the same
initial latents: ``StableDiffusionPipeline`` after ``load_lora_weights`` / ``set_adapters``, and
``StableDiffusionControlNetPipeline``. Tolerance 1e-4 on images in [0, 1]: both sides run the same
float32 modules; what differs is the order of a few operations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longgen.cli import main
from longgen.engine import NoiseField
from longgen.modalities.image.sd_jobs import load_model, panorama
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

    pipe = getattr(diffusers, cls_name).from_pretrained(str(path), safety_checker=None,
                                                        requires_safety_checker=False, **kw)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
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
    from longgen.modalities.image.sd_jobs import checkpoint_request
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
