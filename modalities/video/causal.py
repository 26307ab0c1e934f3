"""What the video families with a causal VAE share (Wan, CogVideoX, LTX-Video): windows over
latent frames. :func:`longgen.modalities.video.jobs.video_parts` runs them with the other video
families through the contract below (:class:`~.wan.WanModel`, :class:`~.cogvideox.CogVideoXModel`,
:class:`~.ltx.LTXModel` subclass :class:`CausalVideoModel`).

Rules (each family sets its numbers):

* ``--frames N`` must be ``1 + frame_step * k`` (Wan: 4, the VAE's temporal factor; CogVideoX: 8,
  because its VAE decodes an even latent count to 4n frames, not 1 + 4(n - 1); LTX: 8, its VAE's
  factor); the error names the nearest valid counts. A run has ``1 + (N - 1) / temporal_factor``
  latent frames.
* The window is the pipeline's default frame count (Wan 81 = 21 latent frames, CogVideoX 49 = 13,
  LTX 161 = 21), the stride ``default_stride_latent`` latent frames (Wan 16, CogVideoX 10, LTX 16),
  given in frames as
  ``--window-frames`` / ``--stride-frames`` (a multiple of the temporal factor). The planner aligns
  the last window to the end. Default length: three windows' worth.
* ``a|b|c``: one prompt per window. ``--init clip.mp4``: the clip's first window, VAE-encoded, is
  the first window's given content (pasted; its noisy version the DDIM inversion, as for the UNet
  families). ``--image``: image-to-video checkpoints (:meth:`~.wan.WanModel.image_conditions`).
* Frames stream through :class:`longgen.stitch.CausalStreamingDecoder` with the VAE's own cache
  (Wan, CogVideoX) or a halo decoder (LTX, whose VAE decoder is not causal).
"""

from __future__ import annotations

from typing import Any

import torch


class CausalVideoModel:
    """What the causal-VAE families share: a diffusers pipeline (``pipe``, its ``transformer``), the
    pipeline's own prompt encoding, the latent-frame count rule. A family sets ``name``,
    ``guidance``, ``native_frames``, ``native_size``, ``default_fps``, ``default_stride_latent``,
    ``temporal_factor``, ``frame_step`` and its VAE methods (``encode_clip``, ``decoder``)."""

    causal = True
    i2v = False
    guidance = 1.0
    max_sequence_length = 512

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    engine_dtype = torch.float32

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor

    @property
    def max_window(self) -> int:
        return self.native_frames

    @property
    def default_frames(self) -> int:
        """Three windows' worth: the native window and two default strides."""
        return 1 + self.temporal_factor * (self.latent_frames(self.native_frames) - 1 + 2 * self.default_stride_latent)

    def default_stride(self, window_latent: int) -> int:
        return min(self.default_stride_latent, max(1, window_latent - 1))

    def default_guidance(self, prompts=()) -> float:
        return self.guidance

    def frame_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """Pixel (H, W): the pipeline's default size unless given, multiples of ``pixel_multiple``."""
        m = self.pixel_multiple
        H, W = (height or self.native_size[0]), (width or self.native_size[1])
        for name, v in (("height", H), ("width", W)):
            if not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"--{name} must be a positive multiple of {m} pixels for {self.name} (VAE factor "
                                 f"{self.vae_scale_factor} x transformer patch), got {v!r}")
        return H, W

    def window_model(self, shape: tuple[int, ...]):
        """(denoiser, scheduler) of windows of ``shape`` (C, F, h, w); LTX's schedule depends on it."""
        sched = self.scheduling(*shape[1:]) if hasattr(self, "scheduling") else self.scheduler
        return self.denoiser, sched

    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt=None):
        """(cond, uncond): ``{"prompt_embeds": (B, L, D)}`` from the pipeline's own ``encode_prompt``
        (negative prompt "" by default, as the pipelines)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        neg = negative_prompt or ""
        negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
        emb, nemb = self.pipe.encode_prompt(prompt=prompts, negative_prompt=negs, do_classifier_free_guidance=True,
                                            num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length,
                                            device=self.device)
        return {"prompt_embeds": emb.float()}, {"prompt_embeds": nemb.float()}


def check_frame_count(name: str, frames: Any, step: int) -> int:
    """``frames`` must be ``1 + step * k``; the error names the nearest counts the model makes."""
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"--{name} must be a positive integer, got {frames!r}")
    if (frames - 1) % step:
        lo = 1 + (frames - 1) // step * step
        raise ValueError(f"--{name} {frames}: this model's causal VAE makes 1 + {step}k frames; "
                         f"nearest: {lo} or {lo + step}")
    return frames


__all__ = ["CausalVideoModel", "check_frame_count"]
