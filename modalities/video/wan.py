"""Wan 2.1 / 2.2 text- and image-to-video (diffusers ``WanPipeline``, ``WanImageToVideoPipeline``)
behind longgen's engine.

Conventions follow diffusers 0.42 ``pipelines/wan/pipeline_wan.py`` (facts in
``../shared/facts/flow-models.md``):

* Latents ``(C, t_lat, h, w)``: the causal ``AutoencoderKLWan`` maps ``1 + 4k`` frames to ``1 + k``
  latent frames (temporal factor ``vae.config.scale_factor_temporal``), 8x spatially; the pipeline
  keeps them normalised per channel, ``(z - latents_mean) / latents_std``, and un-normalises before
  decoding. That layout is the engine's (long axis: latent frames, ``-3``) and the Python API's.
* ``WanTransformer3DModel`` takes the flow state, the scheduler's own timestep and the UMT5 text
  states (the pipeline's ``encode_prompt``: padded to ``max_sequence_length``, 512, past the prompt's
  tokens zeroed); it patches (1, 2, 2) itself, so frame sides are multiples of 16 px.
* Schedule: the checkpoint's scheduler config, unchanged. Wan-AI's Diffusers checkpoints ship
  ``UniPCMultistepScheduler`` with ``use_flow_sigmas`` and ``flow_shift``; longgen steps with Euler
  on *that scheduler's* sigma grid and hands the transformer the scheduler's timesteps for those
  sigmas (UniPC's are integers, ``int(1000 sigma)``), looked up per level.
* Classifier-free guidance 5.0 with negative prompt "" (the pipeline's defaults), batched in the
  engine as uncond + cond rows.
* Wan 2.2 A14B: ``transformer`` for the high-noise steps and ``transformer_2`` below
  ``boundary_ratio * num_train_timesteps``, switched per row by its timestep as the pipeline
  switches per step (one guidance scale for both experts: the pipeline's ``guidance_scale_2``
  defaults to it). TI2V-5B's ``expand_timesteps`` (one timestep per token) is passed as the
  pipeline does for a text-only run (every token at the step's timestep).

Image-to-video (``--image first.png``, a ``WanImageToVideoPipeline`` checkpoint): the transformer
takes ``[latents, mask (4 channels: the 4 frames of each latent frame), VAE latent of the clip
condition]`` (36 channels), and with Wan 2.1 I2V the CLIP vision states of the image
(``encoder_hidden_states_image``), built as the pipeline builds them
(:meth:`WanModel.image_conditions`). Every window is given the reference image's CLIP states;
the first window's channel condition marks the image as its first frame, later windows' mark no
frame known (the latent of an all-zero clip, what the model reads where nothing is given): they
start mid-video, continuing from the overlap ALM observes, not restarting at the image. The image's
own latent (the causal VAE encodes frame 0 alone) is pasted as the first latent frame, so the
video's first frame is the image through the VAE. A checkpoint without an image encoder (Wan 2.2
I2V A14B) has only the channel condition: later windows see the image through the overlap alone.
Wan 2.2 TI2V-5B (``expand_timesteps``) image-to-video is refused for now.

Windows over latent frames. The native window is the pipeline's default 81 frames = 21 latent
frames; the default stride is 16 latent frames (64 frames), which leaves 5 latent frames (20 frames)
of overlap. ``--frames N`` must be ``1 + 4k`` (the VAE makes no other count; the error names the
nearest valid ones); ``--window-frames`` likewise, ``--stride-frames`` a multiple of 4. A run of
``N`` frames has ``1 + (N - 1) / 4`` latent frames and the planner aligns the last window to the end.
Note that every window's first latent frame is read by the transformer like any other: Wan was
trained with the image-like first latent frame only at a clip's start, and windows after the first
start mid-video, as ComfyUI's context windows do.

Decoding streams with the VAE's own temporal cache (:class:`longgen.stitch.CausalStreamingDecoder`):
finished latent frames are decoded in order, each causal convolution's cache handed from one chunk
to the next, which is the computation ``AutoencoderKLWan.decode`` does for the whole video, so the
chunked output equals the whole decode (``tests/test_wan.py`` states the measured difference).
A resumed run rebuilds that cache by replaying the last latent frames it depends on (the decoder's
temporal receptive field, :meth:`WanModel.replay_frames`), kept in the resume state instead of the
cache itself (3.6 GiB float32 for Wan 2.1's VAE at 480x832, against 42 latent frames, 17 MiB), so
a resumed run writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longgen.denoiser import FlowDenoiser, expand_cond

from .causal import CausalVideoModel

WAN_GUIDANCE = 5.0          # WanPipeline's default guidance_scale
WAN_MAX_TOKENS = 512        # its default max_sequence_length
WAN_FRAMES = 81             # its default num_frames (5 s at 16 fps)
WAN_SIZE = (480, 832)       # its default height, width
WAN_FPS = 16.0              # the frame rate Wan's examples export at
WAN_STRIDE_LATENT = 16      # default stride in latent frames: 5 of the 21 overlap
PIPELINES = {"WanPipeline": "wan", "WanImageToVideoPipeline": "wan-i2v"}


class WanVelocity:
    """``(x_flow (B, C, t, h, w), sigma (B,), cond) -> v``: the transformer(s) as ``WanPipeline``
    calls them; ``cond`` = ``{"prompt_embeds": (B, L, D)}``. ``timesteps`` maps a flow level to
    the scheduler's timestep for it (filled by :class:`WanScheduling`); a level it lacks is given
    as ``num_train_timesteps * sigma``."""

    def __init__(self, transformer, transformer_2=None, boundary: float | None = None,
                 expand_timesteps: bool = False, num_train_timesteps: int = 1000):
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.boundary = boundary
        self.expand_timesteps = bool(expand_timesteps)
        self.num_train_timesteps = int(num_train_timesteps)
        self.timesteps: dict[float, float] = {}

    def model_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        vals = [self.timesteps.get(float(s), self.num_train_timesteps * float(s)) for s in sigma.reshape(-1)]
        return torch.tensor(vals, dtype=torch.float32)

    def _forward(self, model, x, ts, cond):
        dev, dt = model.device, model.dtype
        if self.expand_timesteps:   # one timestep per (1, 2, 2) patch, as the pipeline's mask * t
            p = model.config.patch_size
            n = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
            ts = ts[:, None].expand(-1, n)
        hs = x.to(device=dev, dtype=dt)
        if "condition" in cond:      # image-to-video: [latents, mask, image latents] along channels
            hs = torch.cat([hs, cond["condition"].to(device=dev, dtype=dt)], dim=1)
        extra = {}
        if "image_embeds" in cond:   # Wan 2.1 I2V: the CLIP image states, cross-attended
            extra["encoder_hidden_states_image"] = cond["image_embeds"].to(device=dev, dtype=dt)
        out = model(hidden_states=hs, timestep=ts.to(dev), encoder_hidden_states=cond["prompt_embeds"].to(
            device=dev, dtype=dt), return_dict=False, **extra)[0]
        return out.to(device=x.device, dtype=x.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        B = x.shape[0]
        cond = expand_cond(cond, B)
        cond = dict(cond) if isinstance(cond, dict) else {"prompt_embeds": cond}
        ts = self.model_timesteps(torch.as_tensor(t).reshape(-1).expand(B))
        if self.transformer_2 is None or self.boundary is None:
            return self._forward(self.transformer, x, ts, cond)
        low = ts < self.boundary          # the pipeline: t >= boundary -> transformer, else transformer_2
        if not bool(low.any()):
            return self._forward(self.transformer, x, ts, cond)
        if bool(low.all()):
            return self._forward(self.transformer_2, x, ts, cond)
        out = torch.empty_like(x)
        for mask, model in ((~low, self.transformer), (low, self.transformer_2)):
            out[mask] = self._forward(model, x[mask], ts[mask], {k: v[mask] for k, v in cond.items()})
        return out


class WanScheduling:
    """The checkpoint's scheduler read by :func:`longgen.schedule.make_schedule` (never changed):
    its sigma grid, Euler-stepped; each level's model timestep goes to the velocity's table."""

    flow = True

    def __init__(self, scheduler, velocity: WanVelocity):
        self.scheduler, self.velocity = scheduler, velocity
        self.config = scheduler.config

    def longgen_schedule(self, steps: int, kind: str | None = None):
        from longgen.schedule import make_schedule

        if getattr(self.config, "use_dynamic_shifting", False):
            raise ValueError(f"{type(self.scheduler).__name__} with use_dynamic_shifting=True: WanPipeline "
                             "passes no mu, so this scheduler cannot run it; allowed: use_dynamic_shifting=False")
        S = make_schedule(self.scheduler, steps, kind)
        self.velocity.timesteps.update({float(s): float(m) for s, m in zip(S.timesteps, S.model_timesteps)})
        return S


class WanModel(CausalVideoModel):
    """A loaded ``WanPipeline`` in the shapes longgen's video jobs use."""

    family = "wan"

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int = WAN_MAX_TOKENS):
        self.pipe, self.source = pipe, source
        self.vae = pipe.vae.eval()
        self.transformer = pipe.transformer.eval()
        self.transformer_2 = getattr(pipe, "transformer_2", None)
        self.max_sequence_length = int(max_sequence_length)
        if self.transformer is None:
            raise ValueError("this Wan checkpoint has no transformer/ (a transformer_2-only Wan 2.2 "
                             "checkpoint is not supported); allowed: transformer, or transformer + transformer_2")
        self.i2v = type(pipe).__name__ == "WanImageToVideoPipeline"
        cin = int(self.transformer.config.in_channels)
        want = 2 * self.latent_channels + self.temporal_factor if self.i2v else self.latent_channels
        if cin != want:
            raise ValueError(f"the transformer takes {cin} input channels; a {type(pipe).__name__} with "
                             f"{self.latent_channels} VAE channels needs {want}")
        if self.i2v and pipe.config.get("expand_timesteps", False):
            raise ValueError("a Wan 2.2 TI2V checkpoint (expand_timesteps=True) is not supported for "
                             "image-to-video yet; allowed: Wan 2.1 I2V, Wan 2.2 I2V A14B, or text-to-video")
        self.image_encoder = getattr(pipe, "image_encoder", None) if self.i2v else None
        if self.i2v and self.transformer.config.image_dim is not None and self.image_encoder is None:
            raise ValueError("this Wan I2V transformer takes CLIP image states (image_dim set) but the "
                             "checkpoint has no image_encoder/")
        ratio = pipe.config.get("boundary_ratio") if hasattr(pipe.config, "get") else None
        n_train = int(pipe.scheduler.config.num_train_timesteps)
        boundary = None if ratio is None or self.transformer_2 is None else float(ratio) * n_train
        self.velocity = WanVelocity(self.transformer, self.transformer_2, boundary,
                                    bool(pipe.config.get("expand_timesteps", False)), n_train)
        self.denoiser = FlowDenoiser(self.velocity)
        self.scheduler = WanScheduling(pipe.scheduler, self.velocity)

    # ------------------------------------------------------------------ shapes
    @property
    def kind(self) -> str:
        return "wan-i2v" if self.i2v else "wan"

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def pixel_multiple(self) -> int:
        p = self.transformer.config.patch_size
        return self.vae_scale_factor * max(int(p[1]), int(p[2]))

    name = "Wan"
    guidance = WAN_GUIDANCE
    native_frames = WAN_FRAMES
    native_size = WAN_SIZE
    default_fps = WAN_FPS
    default_stride_latent = WAN_STRIDE_LATENT

    @property
    def frame_step(self) -> int:
        """Frame counts are 1 + frame_step * k."""
        return self.temporal_factor

    # ------------------------------------------------------------------ image-to-video
    @torch.no_grad()
    def image_conditions(self, image, height: int, width: int, frames: int) -> dict:
        """What an I2V window is given, built as ``WanImageToVideoPipeline.prepare_latents`` and
        ``encode_image`` build it: ``first`` -- the channel condition of the first window (mask 1
        on the first latent frame's 4 sub-frames, then the normalised VAE latent of ``[image, 0,
        ..., 0]``); ``later`` -- the same with no frame known (mask 0, the latent of an all-zero
        clip: what the model reads where nothing is given), for every later window; ``image_latent``
        -- the first latent frame, the image's own (the causal VAE encodes frame 0 alone);
        ``image_embeds`` -- the CLIP vision states (penultimate layer) when the transformer takes
        them (Wan 2.1 I2V), given to every window."""
        pipe, vae = self.pipe, self.vae
        dev, dt = vae.device, vae.dtype
        img = pipe.video_processor.preprocess(image, height=height, width=width).to(dev, torch.float32)  # (1, 3, H, W)
        mean, std = self._stats(dev, torch.float32)
        f, s = self.temporal_factor, self.vae_scale_factor
        lat_frames, h, w = self.latent_frames(frames), height // s, width // s
        out = {}
        for name, first in (("first", True), ("later", False)):
            clip = torch.zeros(1, 3, frames, height, width, device=dev)
            if first:
                clip[:, :, 0] = img
            z = vae.encode(clip.to(dt)).latent_dist.mode().float()
            z = (z - mean) / std
            mask = torch.zeros(1, f, lat_frames, h, w, device=dev)
            if first:
                mask[:, :, 0] = 1
            out[name] = torch.cat([mask, z], dim=1).cpu()                        # (1, 4 + C, t, h, w)
            if first:
                out["image_latent"] = z[0, :, :1].cpu()                          # (C, 1, h, w)
        if self.transformer.config.image_dim is not None:
            out["image_embeds"] = pipe.encode_image(image, self.image_encoder.device).float().cpu()
        return out

    # ------------------------------------------------------------------ VAE
    def _stats(self, device, dtype):
        c = self.vae.config
        shape = (1, int(c.z_dim), 1, 1, 1)
        mean = torch.tensor(c.latents_mean).view(shape).to(device, dtype)
        std = torch.tensor(c.latents_std).view(shape).to(device, dtype)
        return mean, std

    @torch.no_grad()
    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """Frames ``(3, F, H, W)`` in [-1, 1], ``F = 1 + 4k`` -> normalised latents ``(C, 1 + k, h, w)``
        (posterior mode, ``(z - mean) / std`` as ``WanImageToVideoPipeline`` normalises its condition)."""
        vae = self.vae
        dev, dt = vae.device, vae.dtype
        z = vae.encode(clip[None].to(dev, dt)).latent_dist.mode()
        mean, std = self._stats(dev, dt)
        return ((z - mean) / std)[0].float()

    def decode_step(self, chunk: torch.Tensor, cache: Any, start: int):
        """One chunk of normalised latents ``(C, n, h, w)`` at latent frames ``[start, start + n)`` ->
        (frames ``(3, F, H, W)`` in [-1, 1], the decoder's cache after it): the loop of
        ``AutoencoderKLWan._decode``, one latent frame per decoder call, the cache handed on. The
        1x1x1 ``post_quant_conv`` runs per frame too, so a frame's output does not depend on how the
        stream was cut into chunks."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

        vae = self.vae
        dev, dt = vae.device, vae.dtype
        with torch.no_grad():
            if cache is None:
                cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
            mean, std = self._stats(dev, dt)
            z = chunk[None].to(dev, dt) * std + mean
            outs = []
            for i in range(z.shape[2]):
                x = vae.post_quant_conv(z[:, :, i:i + 1])
                outs.append(vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=(start + i == 0)))
            out = torch.cat(outs, 2)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            return out.clamp(-1.0, 1.0)[0].float().cpu(), cache

    def replay_frames(self) -> int:
        """Latent frames whose replay rebuilds the decoder's cache exactly (its temporal receptive
        field, a bound): every causal convolution of temporal kernel k looks back k - 1 frames at
        its rate, i.e. (k - 1) / r latent frames where r doubles after each temporal upsampling;
        their sum, rounded up, plus 4 for the cached frames themselves. Tiny test VAE: bound 34,
        exact from 30 on; Wan 2.1's VAE config: bound 42, exact from 38 on (measured by replaying
        the last K of 50 random latent frames into a fresh cache)."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

        rate, total, double_after = 1, 0.0, None
        for m in self.vae.decoder.modules():
            if isinstance(m, WanResample) and m.mode == "upsample3d":
                double_after = m.time_conv
            if isinstance(m, WanCausalConv3d):
                total += (m.kernel_size[0] - 1) / rate
                if m is double_after:
                    rate, double_after = rate * 2, None
        return int(-(-total // 1)) + 4

    def decoder(self, latent_frames: int | None = None):
        """The streaming decoder (one latent frame per VAE call, so any cut decodes alike)."""
        from longgen.stitch import CausalStreamingDecoder

        return CausalStreamingDecoder(self.decode_step, axis=-3, replay=self.replay_frames())


def load_wan(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
             local_files_only: bool = True) -> WanModel:
    """Load a ``WanPipeline`` or ``WanImageToVideoPipeline`` checkpoint directory (or a cached hub
    id, read as ``WanPipeline``)."""
    from ..backends import load_pipeline, pipeline_class

    cls = pipeline_class(model, local_files_only) or "WanPipeline"
    if cls not in PIPELINES:
        raise ValueError(f"{model} is a {cls} checkpoint; allowed: {', '.join(PIPELINES)}")
    return WanModel(load_pipeline(cls, model, dtype, device, local_files_only), source=str(model))


__all__ = ["WanModel", "WanVelocity", "WanScheduling", "load_wan",
           "WAN_GUIDANCE", "WAN_FRAMES", "WAN_SIZE", "WAN_FPS"]
