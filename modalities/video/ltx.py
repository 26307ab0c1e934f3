"""LTX-Video text-to-video (diffusers ``LTXPipeline``) behind longgen's engine.

Conventions follow diffusers 0.42 ``pipelines/ltx/pipeline_ltx.py`` (facts in
``../shared/facts/flow-models.md``):

* Latents: ``AutoencoderKLLTXVideo`` compresses 32x in space and 8x in time (``1 + 8k`` frames ->
  ``1 + k`` latent frames; ratios read from the VAE), normalised as the pipeline does,
  ``(z - latents_mean) * scaling_factor / latents_std``. The pipeline packs them to
  ``(B, t * h * w, C)`` for the transformer (patch 1); the engine, ``latents=`` and
  ``output_type="latent"`` use ``(C, t, h, w)``, packed and unpacked inside the velocity here.
* ``LTXVideoTransformer3DModel`` takes the T5 states with their attention mask (128 tokens), the
  scheduler's timestep (``1000 sigma``), the latent grid size and ``rope_interpolation_scale``
  ``(8 / frame_rate, 32, 32)`` at the pipeline's frame rate 25; every window is given its own
  grid, so RoPE positions are window-local.
* Schedule: the pipeline passes sigmas ``linspace(1, 1/N, N)`` and ``mu`` from the window's token
  count (dynamic shifting), as FLUX does (:class:`~longgen.schedule.WindowScheduling`).
* Classifier-free guidance 3.0 with negative prompt "" (the pipeline's defaults; its
  ``guidance_rescale`` 0 is the only value taken).

Decoding. LTX's VAE decoder is not causal in time (``decoder_causal=False``) and has no global
statistics (per-position norms, no attention), so a chunk decoded with a halo of latent frames on
each side and cropped equals the whole decode once the halo covers the decoder's temporal
receptive field (:class:`LTXStreamingDecoder`). Measured against one whole decode of 40 random
latent frames, max-abs in [-1, 1] units: LTX-Video 0.9's VAE config (random weights, 1x1 latents)
halo 4 -> 0.41, 8 -> 0.025, 12 -> 6.0e-4, 16 -> 1.0e-5, 19 -> 7.3e-6; the tiny test VAE 0 -> 1.64,
8 -> 4.5e-3, 12 -> 1.1e-6. The default halo is 16 latent frames each side (an 8-bit level is
7.8e-3 there); each chunk then decodes up to 32 latent frames more than it keeps. Its first latent frame makes 1 frame and every other 8 (the decoder drops the first 7 of
8); each decoded piece is padded in front to a uniform 8 frames per latent for the halo crop, and
the 7 padding frames of the stream's start are dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from longgen.denoiser import FlowDenoiser, expand_cond
from longgen.stitch import StreamingDecoder

from .causal import CausalVideoModel

LTX_GUIDANCE = 3.0
LTX_MAX_TOKENS = 128
LTX_FRAMES = 161
LTX_SIZE = (512, 704)
LTX_FPS = 25.0
LTX_STRIDE_LATENT = 16
LTX_DECODE_HALO = 16     # latent frames each side (see the module docstring)
LTX_PIXEL_MULTIPLE = 32  # LTXPipeline.check_inputs: height and width divisible by 32


class LTXVelocity:
    """``(x_flow (B, C, t, h, w), sigma (B,), cond) -> v``; ``cond`` = ``{"prompt_embeds", "attention_mask"}``."""

    def __init__(self, transformer, rope_scale: tuple[float, float, float], num_train_timesteps: int = 1000):
        self.transformer, self.rope_scale = transformer, rope_scale
        self.num_train_timesteps = int(num_train_timesteps)
        self.timesteps: dict[float, float] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        from diffusers import LTXPipeline

        tr = self.transformer
        dev, dt = tr.device, tr.dtype
        B, C, F, h, w = x.shape
        cond = expand_cond(cond, B)
        sig = torch.as_tensor(t).reshape(-1).expand(B)
        ts = torch.tensor([self.timesteps.get(float(s), self.num_train_timesteps * float(s)) for s in sig],
                          dtype=torch.float32, device=dev)
        hs = LTXPipeline._pack_latents(x.to(device=dev, dtype=dt))                 # (B, F*h*w, C)
        out = tr(hidden_states=hs, encoder_hidden_states=cond["prompt_embeds"].to(device=dev, dtype=dt), timestep=ts,
                 encoder_attention_mask=cond["attention_mask"].to(dev), num_frames=F, height=h, width=w,
                 rope_interpolation_scale=self.rope_scale, return_dict=False)[0]
        return LTXPipeline._unpack_latents(out.float(), F, h, w).to(device=x.device, dtype=x.dtype)


class LTXScheduling:
    """FLUX-style window schedule (``linspace`` sigmas, ``mu`` from the window's tokens) whose
    levels' model timesteps go to the velocity's table."""

    flow = True

    def __init__(self, scheduler, velocity: LTXVelocity, tokens: int):
        from longgen.schedule import WindowScheduling

        self.inner = WindowScheduling(scheduler, tokens)
        self.inner.linear_sigmas = True
        self.velocity, self.config = velocity, scheduler.config

    def longgen_schedule(self, steps: int, kind: str | None = None):
        S = self.inner.longgen_schedule(steps, kind)
        self.velocity.timesteps.update({float(s): float(m) for s, m in zip(S.timesteps, S.model_timesteps)})
        return S


class LTXStreamingDecoder(StreamingDecoder):
    """The halo decoder of :mod:`longgen.stitch` at 8 frames per latent, minus the 7 padding
    frames in front of the stream's first frame (see the module docstring)."""

    def __init__(self, decode, halo: int, ratio: int):
        super().__init__(decode, axis=-3, halo=halo, scale=ratio, positional=True)
        self.ratio = ratio

    def _emit(self, upto: int):
        first = self.emitted == 0
        out = super()._emit(upto)
        if out is not None and first:
            out = out.narrow(-3, self.ratio - 1, out.shape[-3] - self.ratio + 1)
        return out


class LTXModel(CausalVideoModel):
    """A loaded ``LTXPipeline`` in the shapes of the causal video job (:mod:`~.causal`)."""

    family = "ltx"
    kind = "ltx"
    name = "LTX-Video"
    guidance = LTX_GUIDANCE
    native_frames = LTX_FRAMES
    native_size = LTX_SIZE
    default_fps = LTX_FPS
    default_stride_latent = LTX_STRIDE_LATENT
    decode_halo = LTX_DECODE_HALO

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int = LTX_MAX_TOKENS):
        self.pipe, self.source = pipe, source
        self.transformer, self.vae = pipe.transformer.eval(), pipe.vae.eval()
        self.max_sequence_length = int(max_sequence_length)
        cfg = self.transformer.config
        if cfg.patch_size != 1 or cfg.patch_size_t != 1:
            raise ValueError(f"an LTX transformer with patch {cfg.patch_size_t}x{cfg.patch_size} is not supported; "
                             "allowed: patch 1x1 (LTXPipeline's)")
        if cfg.in_channels != self.latent_channels:
            raise ValueError(f"the transformer takes {cfg.in_channels} channels but the VAE has {self.latent_channels}")
        r = (self.temporal_factor / LTX_FPS, self.vae_scale_factor, self.vae_scale_factor)
        self.velocity = LTXVelocity(self.transformer, r, int(pipe.scheduler.config.num_train_timesteps))
        self.denoiser = FlowDenoiser(self.velocity)
        self._scheduler = pipe.scheduler

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.spatial_compression_ratio)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.temporal_compression_ratio)

    @property
    def frame_step(self) -> int:
        return self.temporal_factor

    @property
    def pixel_multiple(self) -> int:
        return math.lcm(LTX_PIXEL_MULTIPLE, self.vae_scale_factor)

    def scheduling(self, window_latent_frames: int, h: int, w: int) -> LTXScheduling:
        """The schedule of windows of that latent size (their token count sets ``mu``)."""
        return LTXScheduling(self._scheduler, self.velocity, window_latent_frames * h * w)

    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt=None):
        """(cond, uncond) ``{"prompt_embeds", "attention_mask"}`` from the pipeline's ``encode_prompt``."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        neg = negative_prompt or ""
        negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
        emb, mask, nemb, nmask = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negs, do_classifier_free_guidance=True, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"prompt_embeds": emb.float(), "attention_mask": mask}, {"prompt_embeds": nemb.float(),
                                                                        "attention_mask": nmask}

    # ------------------------------------------------------------------ VAE
    def _norm(self, device, dtype):
        vae = self.vae
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(device, dtype)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(device, dtype)
        return mean, std, float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = vae.encode(clip[None].to(vae.device, vae.dtype)).latent_dist.mode().float()
        mean, std, s = self._norm(z.device, z.dtype)
        return ((z - mean) * s / std)[0]

    @torch.no_grad()
    def decode_piece(self, piece: torch.Tensor, start: int) -> torch.Tensor:
        """Latents ``(C, n, h, w)`` -> frames ``(3, 8n, H, W)`` in [-1, 1]: the VAE's ``1 + 8(n - 1)``
        frames with 7 copies of its first in front (a uniform 8 frames per latent for the halo crop)."""
        vae = self.vae
        dev, dt = vae.device, vae.dtype
        mean, std, s = self._norm(dev, dt)
        z = piece[None].to(dev, dt) * std / s + mean
        temb = torch.zeros(1, device=dev, dtype=dt) if vae.config.timestep_conditioning else None
        out = vae.decode(z, temb, return_dict=False)[0][0].float().clamp(-1.0, 1.0).cpu()
        pad = self.temporal_factor - 1
        return torch.cat([out[:, :1].expand(-1, pad, -1, -1), out], dim=1)

    def decoder(self, latent_frames: int | None = None, halo: int | None = None):
        return LTXStreamingDecoder(self.decode_piece, self.decode_halo if halo is None else halo,
                                   self.temporal_factor)


def load_ltx(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
             local_files_only: bool = True) -> LTXModel:
    from ..backends import load_pipeline

    return LTXModel(load_pipeline("LTXPipeline", model, dtype, device, local_files_only), source=str(model))


__all__ = ["LTXModel", "LTXVelocity", "LTXStreamingDecoder", "load_ltx", "LTX_GUIDANCE", "LTX_FRAMES"]
