"""Video diffusion models behind longgen's denoiser protocol.

:func:`load_video_model` reads a checkpoint from disk and returns a :class:`VideoModel`: the
denoiser ``(x (B, C, F, H, W), t (B,) long, cond (B, 77, D)) -> (B, C, F, H, W)``, the VAE, the
CLIP tokenizer and text encoder, a DDIM scheduler, and helpers to embed prompts and to
decode/encode frames in bounded chunks. Three UNet families:

* ``unet3d`` - ModelScope text-to-video (diffusers ``TextToVideoSDPipeline`` layout: a
  ``UNet3DConditionModel`` in ``unet/``);
* ``animatediff`` - an SD checkpoint's ``UNet2DConditionModel`` plus a ``MotionAdapter``, joined by
  ``UNetMotionModel.from_unet2d`` (or an already saved ``UNetMotionModel``);
* ``lavie`` - LaVie's base model: our :mod:`longgen.modalities.video.lavie` UNet built from SD-1.4's UNet
  config, with ``lavie_base.pt`` loaded strictly; VAE, text encoder, tokenizer and scheduler from
  the SD-1.4 directory. LaVie samples with SD-1.4's scheduler config but linear betas
  1e-4..0.02 (Vchitect/LaVie base/pipelines/sample.py + base/configs/sample.yaml), so that is the
  default scheduler override here; its native window is 16 frames of 320x512 (40x64 latents).

Latents are ``(B, C, F, H, W)`` everywhere (as diffusers' video UNets take them). Decoding and
encoding run frame by frame through the image VAE, ``chunk`` frames per call, so memory stays
bounded for long videos. The VAE treats every image on its own, so chunking changes nothing but
memory (LaVie's ``decode_latents`` and diffusers' video pipelines pass all frames in one call).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange

KINDS = ("auto", "unet3d", "animatediff", "lavie")   # UNet families (Wan: modalities.video.wan)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NATIVE_FRAMES = 16  # ModelScope, AnimateDiff (v1-v3) and LaVie all sample 16-frame windows
LAVIE_SCHEDULER = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}  # LaVie sample.yaml
DEFAULT_GUIDANCE = 7.5  # LaVie base/configs/sample.yaml guidance_scale; diffusers AnimateDiffPipeline default
LAVIE_LATENT_SIZE = (40, 64)  # 320x512 (LaVie sample.yaml image_size) / 8


# --------------------------------------------------------------------------- the denoiser


class VideoUNetDenoiser:
    """Adapts a video UNet to the protocol; ``cond`` is the text embedding ``(B, L, D)``.

    ``cond`` may also be a dict with an ``encoder_hidden_states`` entry. Inputs are cast to the
    UNet's dtype and the output back to ``x``'s dtype. diffusers' ``UNetMotionModel`` takes one
    text embedding per frame (``AnimateDiffPipeline`` repeats the prompt ``num_frames`` times,
    frame-major within each sample); ``per_frame_context`` does that repeat here, so every family
    takes the same ``(B, L, D)`` condition.
    """

    def __init__(self, unet: torch.nn.Module, prediction_type: str = "epsilon",
                 per_frame_context: bool | None = None):
        from longgen.denoiser import check_prediction_type

        self.unet = unet
        self.prediction_type = check_prediction_type(prediction_type)
        if per_frame_context is None:
            per_frame_context = type(unet).__name__ == "UNetMotionModel"
        self.per_frame_context = per_frame_context

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"video latents must be (B, C, F, H, W); got shape {tuple(x.shape)}")
        context = cond.get("encoder_hidden_states") if isinstance(cond, dict) else cond
        if not isinstance(context, torch.Tensor):
            raise ValueError("cond must be a text embedding tensor (B, L, D) or a dict with "
                             f"'encoder_hidden_states'; got {type(cond).__name__}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"cond has batch {context.shape[0]} for latents of batch {x.shape[0]}; "
                             "expand it first (longgen.denoiser.expand_cond)")
        if self.per_frame_context:
            context = context.repeat_interleave(x.shape[2], dim=0)   # (B*F, L, D), frame-major per sample
        dt = self.dtype
        t = torch.as_tensor(t, device=x.device)
        out = self.unet(x.to(dt), t, encoder_hidden_states=context.to(device=x.device, dtype=dt))
        if not isinstance(out, torch.Tensor):  # diffusers output dataclass / tuple
            out = out[0] if isinstance(out, tuple) else out.sample
        return out.to(x.dtype)


# --------------------------------------------------------------------------- the bundle


@dataclass
class VideoModel:
    """A loaded video model: denoiser + VAE + text encoder + scheduler, and its native window."""

    denoiser: VideoUNetDenoiser
    vae: Any
    tokenizer: Any
    text_encoder: Any
    scheduler: Any
    frames: int = NATIVE_FRAMES
    sample_size: tuple[int, int] = (64, 64)  # native latent (H, W)
    kind: str = "unet3d"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    # the video contract of longgen.modalities.video.jobs.video_parts
    temporal_factor = 1          # the image VAE sees each frame on its own
    frame_step = 1
    default_frames = 104         # the paper's LaVie length: 12 windows of 16 at stride 8
    default_fps = 8.0
    engine_dtype = torch.float32
    decode_chunk = 8             # frames per VAE call: memory is bounded by this, not by the length

    @property
    def unet(self) -> torch.nn.Module:
        return self.denoiser.unet

    @property
    def native_frames(self) -> int:
        """The window length the model was trained on: 16, or a motion adapter's shorter
        position table (``motion_max_seq_length``: it has no rows beyond it)."""
        cfg = getattr(self.unet, "config", None)
        limit = getattr(cfg, "motion_max_seq_length", None) if cfg is not None else None
        if limit is None and isinstance(cfg, dict):
            limit = cfg.get("motion_max_seq_length")
        native = self.frames or NATIVE_FRAMES
        return min(native, int(limit)) if limit else native

    @property
    def max_window(self) -> int:
        return self.native_frames

    def default_stride(self, window: int) -> int:
        return window // 2

    def default_guidance(self, prompts=()) -> float:
        """7.5: LaVie base/configs/sample.yaml ``guidance_scale``; diffusers ``AnimateDiffPipeline``."""
        return DEFAULT_GUIDANCE

    def frame_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """Pixel (H, W) of the output: the model's native size unless given, multiples of the VAE
        factor times the UNet's (2 ** its down blocks)."""
        cfg = self.unet.config
        channels = cfg["block_out_channels"] if isinstance(cfg, dict) else cfg.block_out_channels
        s = self.vae_scale_factor
        unit = s * 2 ** (len(channels) - 1)
        out = []
        for name, value, native in (("height", height, self.sample_size[0]), ("width", width, self.sample_size[1])):
            px = native * s if value is None else value
            if not isinstance(px, int) or px <= 0 or px % unit:
                raise ValueError(f"--{name} must be a positive multiple of {unit} pixels for this model "
                                 f"(VAE factor {s} x UNet factor {unit // s}), got {px!r}")
            out.append(px)
        return out[0], out[1]

    def window_model(self, shape: tuple[int, ...]):
        return self.denoiser, self.scheduler

    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """(3, F, H, W) in [-1, 1] -> float32 latents (C, F, h, w), ``decode_chunk`` frames per call."""
        lat = self.encode_frames(rearrange(clip, "c f h w -> 1 f c h w"), chunk=self.decode_chunk)[0]
        return lat.to(torch.float32)

    def decoder(self, latent_frames: int | None = None):
        """Streams latent chunks (C, F, h, w) to frames (3, F, H, W), no halo (the VAE sees each
        frame on its own)."""
        from longgen.stitch import StreamingDecoder

        def decode(z: torch.Tensor) -> torch.Tensor:
            video = self.decode_frames(z[None], chunk=self.decode_chunk)[0]      # (F, 3, H, W)
            return rearrange(video, "f c h w -> c f h w").cpu()
        return StreamingDecoder(decode, axis=-3, halo=0, scale=1)

    @property
    def prediction_type(self) -> str:
        return self.denoiser.prediction_type

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """CLIP last hidden states of ``texts`` padded to the tokenizer's length. (N, 77, D)"""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] = ""):
        """``(cond, uncond)`` text embeddings, each ``(B, 77, D)`` with B = number of prompts."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negs = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if not prompts:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if len(negs) != len(prompts):
            raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts; allowed: one string "
                             "or one per prompt")
        return self.embed_text(prompts), self.embed_text(negs)

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Latents ``(B, C, F, H, W)`` -> frames ``(B, F, 3, H*s, W*s)`` in [-1, 1], ``chunk`` frames per VAE call."""
        if latents.ndim != 5:
            raise ValueError(f"latents must be (B, C, F, H, W); got shape {tuple(latents.shape)}")
        _check_chunk(chunk)
        b, f = latents.shape[0], latents.shape[2]
        z = rearrange(latents, "b c f h w -> (b f) c h w") / self.scaling_factor
        vdt = next(self.vae.parameters()).dtype
        out = [self.vae.decode(z[i:i + chunk].to(self.device, vdt)).sample.float()
               for i in range(0, z.shape[0], chunk)]
        video = rearrange(torch.cat(out), "(b f) c h w -> b f c h w", b=b, f=f)
        return video.clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Frames ``(B, F, 3, H, W)`` in [-1, 1] -> latents ``(B, C, F, H/s, W/s)`` (posterior mode x scaling)."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, F, 3, H, W); got shape {tuple(frames.shape)}")
        _check_chunk(chunk)
        b, f = frames.shape[:2]
        x = rearrange(frames, "b f c h w -> (b f) c h w")
        vdt = next(self.vae.parameters()).dtype
        out = [self.vae.encode(x[i:i + chunk].to(self.device, vdt)).latent_dist.mode().float()
               for i in range(0, x.shape[0], chunk)]
        z = torch.cat(out) * self.scaling_factor
        return rearrange(z, "(b f) c h w -> b c f h w", b=b, f=f)


def _check_chunk(chunk: int) -> None:
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk {chunk!r} must be a positive int")


# --------------------------------------------------------------------------- checks


def resolve_dtype(dtype: str, device: str | torch.device) -> tuple[torch.dtype, torch.device]:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    dev = torch.device(device)
    if dtype == "fp16" and dev.type == "cpu":
        raise ValueError("dtype 'fp16' is not supported on CPU (half-precision convolutions and "
                         "attention are missing or slow there); allowed on CPU: fp32, bf16")
    return DTYPES[dtype], dev


def _read_json(path: str) -> dict:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged or incomplete") from None


def _unet_config(root: str, local_files_only: bool) -> tuple[dict, str | None]:
    """The UNet config of a checkpoint and the subfolder it sits in (``unet`` or the root itself)."""
    if os.path.isfile(root):
        raise ValueError(f"{root!r} is a file; UNet3D and AnimateDiff checkpoints are diffusers directories "
                         "(a single .pt file is read only as LaVie's checkpoint)")
    if os.path.isdir(root):
        for sub in ("unet", None):
            p = os.path.join(root, sub, "config.json") if sub else os.path.join(root, "config.json")
            if os.path.isfile(p):
                return _read_json(p), sub
        raise ValueError(f"{root!r} is not a diffusers checkpoint: found neither unet/config.json nor config.json")
    if local_files_only:
        raise FileNotFoundError(f"model path {root!r} does not exist")
    from diffusers import UNet2DConditionModel  # a hub id: let diffusers fetch the config

    return dict(UNet2DConditionModel.load_config(root, subfolder="unet", local_files_only=False)), "unet"


def _require_path(path: str | None, what: str, local_files_only: bool) -> str:
    if path is None:
        raise ValueError(f"{what} is required")
    if local_files_only and not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return str(path)


def detect_kind(model: str, *, motion_adapter: str | None = None, ckpt: str | None = None,
                local_files_only: bool = True) -> str:
    """``unet3d`` / ``animatediff`` / ``lavie`` from the arguments and the UNet config's class name."""
    if ckpt is not None or os.path.isfile(model):
        return "lavie"
    if motion_adapter is not None:
        return "animatediff"
    cfg, _ = _unet_config(model, local_files_only)
    name = cfg.get("_class_name")
    if name == "UNet3DConditionModel":
        return "unet3d"
    if name == "UNetMotionModel":
        return "animatediff"
    if name == "UNet2DConditionModel":
        raise ValueError(f"{model!r} holds an image UNet (UNet2DConditionModel); pass motion_adapter=PATH "
                         "for AnimateDiff, or ckpt=lavie_base.pt for LaVie")
    raise ValueError(f"{model!r} has a UNet of class {name!r}; allowed: UNet3DConditionModel, "
                     "UNetMotionModel, UNet2DConditionModel (+ motion_adapter)")


# --------------------------------------------------------------------------- loading


def _load_text_and_vae(root: str, torch_dtype: torch.dtype, local_files_only: bool):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    for sub in ("vae", "text_encoder", "tokenizer"):
        if os.path.isdir(root) and not os.path.isdir(os.path.join(root, sub)):
            raise ValueError(f"{root!r} has no {sub}/ folder; a checkpoint needs vae/, text_encoder/, "
                             "tokenizer/ and scheduler/")
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch_dtype,
                                        local_files_only=local_files_only)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=local_files_only)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype,
                                                 local_files_only=local_files_only)
    return vae, tokenizer, text_encoder


def _load_scheduler(root: str, overrides: dict | None, local_files_only: bool):
    from diffusers import DDIMScheduler

    cfg = DDIMScheduler.load_config(root, subfolder="scheduler", local_files_only=local_files_only)
    return DDIMScheduler.from_config(cfg, **(overrides or {}))


def _load_unet3d(root: str, sub: str | None, torch_dtype, local_files_only: bool):
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel.from_pretrained(root, subfolder=sub, torch_dtype=torch_dtype,
                                                local_files_only=local_files_only)


def _load_animatediff(root: str, sub: str | None, cfg: dict, motion_adapter: str | None, torch_dtype,
                      local_files_only: bool):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    if cfg.get("_class_name") == "UNetMotionModel":
        return UNetMotionModel.from_pretrained(root, subfolder=sub, torch_dtype=torch_dtype,
                                               local_files_only=local_files_only)
    path = _require_path(motion_adapter, "motion_adapter (a MotionAdapter directory)", local_files_only)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"motion_adapter {path!r} is not a MotionAdapter directory: no config.json")
    adapter = MotionAdapter.from_pretrained(path, local_files_only=local_files_only)
    unet2d = UNet2DConditionModel.from_pretrained(root, subfolder=sub, local_files_only=local_files_only)
    return UNetMotionModel.from_unet2d(unet2d, adapter).to(torch_dtype)


def _load_lavie(sd_path: str, ckpt: str):
    from .lavie import LaVieUNet, load_lavie_state_dict, read_lavie_checkpoint

    cfg_path = os.path.join(sd_path, "unet", "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"sd_path {sd_path!r} is not an SD-1.4 directory: no unet/config.json")
    state = read_lavie_checkpoint(ckpt)
    unet = LaVieUNet.from_config(_read_json(cfg_path))
    return load_lavie_state_dict(unet, state)


def load_video_model(model: str, *, kind: str = "auto", dtype: str = "fp32", device: str = "cpu",
                     local_files_only: bool = True, motion_adapter: str | None = None,
                     sd_path: str | None = None, ckpt: str | None = None, frames: int | None = None,
                     scheduler_overrides: dict | None = None) -> VideoModel:
    """Load a video diffusion checkpoint behind the denoiser protocol.

    ``model``: a diffusers directory (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``), or for LaVie the ``lavie_base.pt`` file (then ``sd_path`` is the SD-1.4
    directory) or the SD-1.4 directory (then ``ckpt`` is the ``.pt`` file). ``motion_adapter``:
    a ``MotionAdapter`` directory (AnimateDiff). A bare UNet directory (``config.json`` at the
    top) takes its other components from ``sd_path``. ``frames``: the native window length
    (16 by default). ``scheduler_overrides``: DDIM config overrides (LaVie's linear betas are the
    LaVie default).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    torch_dtype, dev = resolve_dtype(dtype, device)
    if frames is not None and (not isinstance(frames, int) or frames < 1):
        raise ValueError(f"frames {frames!r} must be a positive int")
    model = _require_path(str(model) if model is not None else None, "model path",
                          local_files_only or os.path.isabs(str(model)))
    if kind == "auto":
        kind = detect_kind(model, motion_adapter=motion_adapter, ckpt=ckpt, local_files_only=local_files_only)

    if kind == "lavie":
        if ckpt is None:
            if not os.path.isfile(model):
                raise ValueError("LaVie needs ckpt=lavie_base.pt (or model=lavie_base.pt with sd_path=SD-1.4 dir)")
            ckpt = model
        elif sd_path is None and os.path.isdir(model):
            sd_path = model
        ckpt = _require_path(ckpt, "ckpt (lavie_base.pt)", True)
        sd_path = _require_path(sd_path, "sd_path (the SD-1.4 directory)", True)
        unet = _load_lavie(sd_path, ckpt).to(torch_dtype)
        root = sd_path
        overrides = {**LAVIE_SCHEDULER, **(scheduler_overrides or {})}
        size = LAVIE_LATENT_SIZE
    else:
        cfg, sub = _unet_config(model, local_files_only)
        if sub is None:  # a bare UNet directory: the other parts come from sd_path
            root = _require_path(sd_path, "sd_path (for vae/text_encoder/tokenizer/scheduler of a bare UNet)",
                                 local_files_only)
        else:
            root = model if sd_path is None else _require_path(sd_path, "sd_path", local_files_only)
        if kind == "unet3d":
            if cfg.get("_class_name") != "UNet3DConditionModel":
                raise ValueError(f"kind 'unet3d' needs a UNet3DConditionModel; {model!r} has "
                                 f"{cfg.get('_class_name')!r}")
            unet = _load_unet3d(model, sub, torch_dtype, local_files_only)
        else:
            unet = _load_animatediff(model, sub, cfg, motion_adapter, torch_dtype, local_files_only)
        overrides = scheduler_overrides
        s = int(cfg.get("sample_size") or 64)
        size = (s, s)

    vae, tokenizer, text_encoder = _load_text_and_vae(root, torch_dtype, local_files_only)
    scheduler = _load_scheduler(root, overrides, local_files_only)
    for m in (unet, vae, text_encoder):
        m.to(dev).eval().requires_grad_(False)
    denoiser = VideoUNetDenoiser(unet, scheduler.config.get("prediction_type", "epsilon"))
    return VideoModel(denoiser=denoiser, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder,
                      scheduler=scheduler, frames=frames or NATIVE_FRAMES, sample_size=size, kind=kind,
                      device=dev, dtype=torch_dtype)


__all__ = ["VideoModel", "VideoUNetDenoiser", "load_video_model", "detect_kind", "resolve_dtype",
           "KINDS", "DTYPES", "NATIVE_FRAMES", "LAVIE_SCHEDULER"]
