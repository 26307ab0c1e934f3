"""LoRA files and ControlNet models on the image backends (SD 1.x/2.x, SDXL, FLUX.1, SD3).

LoRA (``--lora FILE[:SCALE]``, repeatable). The file is read by diffusers' own LoRA loaders (peft
backend) through the family's pipeline class -- ``StableDiffusionPipeline``,
``StableDiffusionXLPipeline``, ``FluxPipeline``, ``StableDiffusion3Pipeline`` -- wrapped around
the modules longgen already holds, so the UNet / transformer and the text encoders take whatever
the file has for them (diffusers, kohya and the other formats those loaders convert), and each
file becomes one named adapter weighted by its scale (``set_adapters``). Before anything is
loaded the file's keys are read to tell which family it was made for, because diffusers skips a
LoRA whose keys name another family's modules with only a warning; a mismatch is refused naming
both. Only ``.safetensors`` files are read (no pickles).

ControlNet (``--controlnet DIR --control IMAGE``, SD 1.x/2.x, SDXL, FLUX.1 and SD3). The control image
is resized once to the canvas size, as diffusers' ControlNet pipelines do for the whole image
(``VaeImageProcessor(do_normalize=False).preprocess(image, height, width)``: RGB, [0, 1]); each
window then gets its own crop of it, in its condition, so the blended evaluations of ALM see the
same crop and classifier-free guidance gives both rows the crop (the pipelines' ``guess_mode=False``).
The UNet takes the ControlNet's residuals scaled by ``conditioning_scale`` as
``StableDiffusionControlNetPipeline`` passes them. FLUX (``FluxControlNetModel``): the crop goes to
[-1, 1] and, for InstantX-style ControlNets, through the VAE (``(mode - shift) * scaling``, once
per window; ``FluxControlNetPipeline`` draws a sample of the VAE posterior instead, whose spread is
tiny) and is packed; the transformer takes the ControlNet's block samples. SD3
(``SD3ControlNetModel``): the crop's VAE latents likewise (no shift factor for ControlNets that
force zero pooled projections, as the pipeline does). A control image whose aspect ratio differs from
the canvas's by more than :data:`ASPECT_TOLERANCE` is refused rather than stretched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


LORA_FAMILIES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "flux": "FLUX.1", "sd3": "SD3"}
CONTROLNET_CLASSES = {"sd": "ControlNetModel", "sdxl": "ControlNetModel", "flux": "FluxControlNetModel",
                      "sd3": "SD3ControlNetModel"}
ASPECT_TOLERANCE = 0.02   # relative difference of width/height allowed between control image and canvas
_CROSS_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


# --------------------------------------------------------------------------- LoRA


def parse_lora(spec: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:SCALE`` -> (path, scale); the file must be an existing .safetensors."""
    path, scale = str(spec), 1.0
    head, sep, tail = path.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            path = head
    if not math.isfinite(scale):
        raise ValueError(f"--lora {spec}: the scale must be a finite number, got {tail!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"--lora {spec}: no such file {str(p)!r}; give FILE or FILE:SCALE")
    if p.suffix != ".safetensors":
        raise ValueError(f"--lora {spec}: only .safetensors LoRA files are read (got {p.suffix or 'no suffix'}); "
                         "convert a pickled file to safetensors first")
    return p, scale


def _lora_keys(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"LoRA {path} is not a readable safetensors file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None


def lora_family(keys: Sequence[str]) -> str | None:
    """Which family a LoRA's keys were made for: "sdxl", "sd" (or SDXL: UNet keys only),
    "flux", "sd3", "transformer" (FLUX or SD3: only keys they share), or None (unknown)."""
    ks = list(keys)
    has = lambda *parts: any(any(p in k for p in parts) for k in ks)  # noqa: E731
    if has("single_transformer_blocks", "single_blocks", "double_blocks"):
        return "flux"
    if has("joint_blocks", "text_encoder_3", "lora_te3_"):
        return "sd3"
    if has("text_encoder_2.", "lora_te2_"):
        return "sdxl"
    if any(k.startswith(("unet.", "lora_unet_")) for k in ks) or has("down_blocks", "up_blocks", "mid_block"):
        return "sd"
    if any(k.startswith(("transformer.", "diffusion_model.")) for k in ks):
        return "transformer"
    if any(k.startswith(("text_encoder.", "lora_te_", "lora_te1_")) for k in ks):
        return "sd"
    return None


def model_family(model: Any) -> str:
    """"sd", "sdxl", "flux" or "sd3" for a loaded image model."""
    fam = getattr(model, "family", None)
    if fam in ("flux", "sd3"):
        return fam
    return "sdxl" if getattr(model, "is_sdxl", False) else "sd"


def checkpoint_family(path: str | Path) -> str | None:
    """The family a checkpoint directory's model_index.json names (None when there is none)."""
    from .sd import _read_json

    index = Path(path).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    data = _read_json(index)
    name = data.get("_class_name", "")
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    return "sdxl" if (data.get("text_encoder_2") or [None])[0] is not None else "sd"


def check_lora_files(specs: Sequence[tuple[Path, float]], checkpoint: str | Path) -> None:
    """Refuse, before the checkpoint is loaded, LoRA files made for another family."""
    from .sd import _read_json

    family = checkpoint_family(checkpoint)
    if family is None:
        return
    width = None
    unet_config = Path(checkpoint).expanduser() / "unet" / "config.json"
    if family in ("sd", "sdxl") and unet_config.is_file():
        width = _read_json(unet_config).get("cross_attention_dim")
    for p, _ in specs:
        _check_family(p, _lora_keys(p), family, width)


def _check_family(path: Path, keys: dict, want: str, width: int | None) -> None:
    fam = lora_family(keys)
    if fam is None:
        raise ValueError(f"LoRA {path} has no keys of a UNet, transformer or text encoder that longgen "
                         f"knows (first keys: {', '.join(list(keys)[:3])}); the model is {LORA_FAMILIES[want]}")
    fits = {"sd": ("sd", "sdxl"), "sdxl": ("sdxl",), "flux": ("flux",), "sd3": ("sd3",),
            "transformer": ("flux", "sd3")}[fam]
    if want not in fits:
        made = {"sd": "SD 1.x/2.x or SDXL (UNet keys)", "transformer": "FLUX.1 or SD3 (transformer keys)"}
        raise ValueError(f"LoRA {path} is for {made.get(fam, LORA_FAMILIES.get(fam, fam))}; "
                         f"the model is {LORA_FAMILIES[want]}")
    if want in ("sd", "sdxl") and isinstance(width, int):  # SD 1.x vs 2.x vs XL: cross-attention width
        for k, shape in keys.items():
            if "attn2" in k and ("to_k" in k) and ("lora_A" in k or "lora.down" in k or "lora_down" in k):
                if len(shape) == 2 and shape[1] != width:
                    raise ValueError(
                        f"LoRA {path} is for a UNet with cross-attention width {shape[1]} "
                        f"({_CROSS_WIDTHS.get(shape[1], 'another model')}); the model is "
                        f"{LORA_FAMILIES[want]} with width {width}")
                break


def _lora_pipeline(model: Any):
    """The family's diffusers pipeline around the model's own modules (no copies)."""
    if getattr(model, "pipe", None) is not None:   # FLUX, SD3 keep their pipeline
        return model.pipe
    import diffusers

    common = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                  unet=model.unet, scheduler=model.scheduler)
    if model.is_sdxl:
        return diffusers.StableDiffusionXLPipeline(
            **common, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
            force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt, add_watermarker=False)
    return diffusers.StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def apply_loras(model: Any, specs: Sequence[tuple[Path, float] | str]) -> Any:
    """Load LoRA files into ``model`` (in place) with diffusers' loaders; ``specs``: ``FILE[:SCALE]``
    strings or (path, scale) pairs. Returns the model."""
    pairs = [parse_lora(s) if isinstance(s, str) else (Path(s[0]), float(s[1])) for s in specs]
    if not pairs:
        return model
    width = getattr(getattr(getattr(model, "unet", None), "config", None), "cross_attention_dim", None)
    for p, _ in pairs:
        _check_family(p, _lora_keys(p), model_family(model), width)
    pipe = _lora_pipeline(model)
    names = []
    for k, (p, _) in enumerate(pairs):
        name = f"longgen_lora_{k}"
        try:
            pipe.load_lora_weights(str(p), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            text = " ".join(str(e).split())
            raise ValueError(f"LoRA {p} does not fit the {LORA_FAMILIES[model_family(model)]} model "
                             f"({text[:200]})") from None
        loaded = [comp for comp, ads in pipe.get_list_adapters().items() if name in ads]
        if not loaded:
            raise ValueError(f"LoRA {p} holds no weights for this {LORA_FAMILIES[model_family(model)]} "
                             "model's UNet/transformer or text encoders")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[s for _, s in pairs])
    return model


def file_digests(paths: Sequence[Path]) -> list[str]:
    """sha256 of each file: what a resume must find unchanged (LoRA files, a control image)."""
    from longgen.run import sha256_file

    return [sha256_file(Path(p)) for p in paths]


# --------------------------------------------------------------------------- ControlNet


def _controlnet_config(path: str | Path) -> dict:
    from .sd import _read_json

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ValueError(f"--controlnet {path}: not a diffusers ControlNet directory (no config.json)")
    return _read_json(p / "config.json")


def _describe_unet(cross: Any, sdxl: bool) -> str:
    kind = "SDXL" if sdxl else _CROSS_WIDTHS.get(cross, "SD")
    return f"{kind} (cross-attention width {cross})"


def check_controlnet(path: str | Path, family: str | None, cross: int | None) -> None:
    """Refuse a ControlNet that is not for this family (``family``: "sd" / "sdxl" / "flux" /
    "sd3"; ``cross``: the UNet's cross-attention width), before anything heavy is loaded."""
    cfg = _controlnet_config(path)
    cls = cfg.get("_class_name")
    want = CONTROLNET_CLASSES.get(family, "ControlNetModel")
    if family in ("flux", "sd3") or cls in ("FluxControlNetModel", "SD3ControlNetModel"):
        if cls != want:
            raise ValueError(f"--controlnet {path} is a {cls}; the model is "
                             f"{LORA_FAMILIES.get(family, 'SD')} and takes a {want}")
        return
    if cls != "ControlNetModel":
        raise ValueError(f"--controlnet {path} is a {cls}; the model is {LORA_FAMILIES.get(family, 'SD')} "
                         "and takes a ControlNetModel")
    cn_sdxl = cfg.get("addition_embed_type") == "text_time"
    if family is not None and (cn_sdxl != (family == "sdxl") or (cross is not None and cfg.get("cross_attention_dim") != cross)):
        raise ValueError(f"--controlnet {path} is for {_describe_unet(cfg.get('cross_attention_dim'), cn_sdxl)}; "
                         f"the model is {_describe_unet(cross, family == 'sdxl')}")


def load_controlnet(path: str | Path, model: Any):
    """A diffusers ``ControlNetModel`` (SD, SDXL) or ``FluxControlNetModel`` (FLUX) for ``model``,
    in its dtype and on its device."""
    import diffusers

    from .sd import _dtype_kwargs

    family = model_family(model)
    cross = int(model.unet.config.cross_attention_dim) if family in ("sd", "sdxl") else None
    check_controlnet(path, family, cross)
    cls = getattr(diffusers, CONTROLNET_CLASSES[family])
    cn = cls.from_pretrained(str(Path(path).expanduser()), **_dtype_kwargs("diffusers", model.dtype))
    return cn.to(model.device).eval()


def check_control_aspect(size: tuple[int, int], width: int, height: int, what: str = "control image") -> None:
    """Refuse a control image (``size`` = (w, h) px) whose aspect is not the canvas's within
    :data:`ASPECT_TOLERANCE`: resizing it to the canvas would stretch it."""
    w, h = size
    if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
        raise ValueError(f"{what} is {w}x{h} (aspect {w / h:.3f}) but the canvas is {width}x{height} "
                         f"(aspect {width / height:.3f}); it is resized to the canvas, so its aspect "
                         f"must match within {ASPECT_TOLERANCE:.0%}: give a {width}x{height} image or "
                         "one of that shape")


def control_tensor(image: Any, width: int, height: int, vae_scale_factor: int = 8):
    """A control image (path or PIL image) -> ``(1, 3, height, width)`` float32 in [0, 1], resized
    to the canvas as diffusers' ControlNet pipelines prepare theirs (``do_normalize=False``)."""
    from diffusers.image_processor import VaeImageProcessor

    from .inpainting import read_picture

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise ValueError(f"--control {image}: no such file")
        name = f"control image {image}"
        image = read_picture(Path(image), "control image", "RGB")
    else:
        name = "control image"
    check_control_aspect(image.size, width, height, name)
    proc = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    return proc.preprocess(image, height=height, width=width).float()


def window_crop(control, start: int, size: int, length: int, f: int):
    """The control pixels under a window of ``size`` latents at ``start`` (``f`` px per latent);
    a loop's closing window continues at the canvas's left edge."""
    import torch

    stop = min(start + size, length)
    crop = control[..., start * f:stop * f]
    if start + size > length:
        crop = torch.cat([crop, control[..., :(start + size - length) * f]], dim=-1)
    return crop
