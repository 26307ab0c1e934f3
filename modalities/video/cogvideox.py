"""CogVideoX (1.0: 2b / 5b text-to-video, diffusers ``CogVideoXPipeline``) behind longgen's engine.

Conventions follow diffusers 0.42 ``pipelines/cogvideo/pipeline_cogvideox.py`` (facts in
``../shared/facts/flow-models.md``):

* A VP model with v-prediction: the scheduler (``CogVideoXDDIMScheduler``, or the 5b's
  ``CogVideoXDPMScheduler``) shifts the SNR (``snr_shift_scale``) before the zero-terminal rescale,
  so :func:`longgen.schedule.make_schedule` reads that class's own ``alphas_cumprod``; the base step
  is DDIM (the 2b's own step; the 5b's DPM solver is replaced by DDIM on the same levels).
* The pipeline's latents are frames-first ``(B, t, C, h, w)``; the engine, the Python API's
  ``latents=`` and ``output_type="latent"`` use ``(C, t, h, w)``; the transformer sees the
  pipeline's layout (converted at this boundary). Latents are the VAE's times ``scaling_factor``.
* ``CogVideoXTransformer3DModel`` takes the T5 states (``encode_prompt``, padded to the
  transformer's ``max_text_seq_length``, 226 as the pipeline's default), the integer
  timestep and, for the 5b, 3-D rotary embeddings built by the pipeline's own
  ``_prepare_rotary_positional_embeddings`` for the window's size (every window has the same, so
  positions are window-local). CogVideoX 1.5 (``patch_size_t``, padded latent frames) is refused.
* Classifier-free guidance 6.0 with negative prompt "" (the pipeline's defaults).

Frames: the VAE compresses time by 4 but decodes an even latent count to ``4n`` frames and an odd
one to ``1 + 4(n - 1)``, so longgen keeps the latent count odd: ``--frames`` is ``1 + 8k`` (the
native 49 = 13 latent frames). Windows: 13 latent frames at a stride of 10 (3 overlap).

Decoding: ``AutoencoderKLCogVideoX`` decodes ``num_latent_frames_batch_size`` (2) latent frames per
decoder call, the first call taking the odd one more, with a causal conv cache handed on; its
GroupNorms see all frames of one call, so the stream makes exactly those calls
(:class:`longgen.stitch.CausalStreamingDecoder` with ``batches``) and equals the whole decode.
Its cache has no finite memory (:meth:`CogVideoXModel.replay_frames`), so a resumed run replays
the decoded latent frames from the start to rebuild it exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longgen.denoiser import check_prediction_type, expand_cond

from .causal import CausalVideoModel

COG_GUIDANCE = 6.0        # CogVideoXPipeline's default guidance_scale
COG_MAX_TOKENS = 226      # its default max_sequence_length
COG_FRAMES = 49           # its default num_frames
COG_SIZE = (480, 720)     # its default height, width
COG_FPS = 8.0             # CogVideoX's export frame rate
COG_STRIDE_LATENT = 10


class CogVideoXDenoiser:
    """``(x (B, C, t, h, w), t (B,) int, cond) -> v`` in longgen's layout; ``cond`` =
    ``{"prompt_embeds": (B, L, D)}``."""

    def __init__(self, transformer, prediction_type: str, rotary=None):
        self.transformer = transformer
        self.prediction_type = check_prediction_type(prediction_type)
        self.rotary = rotary            # (frames, h, w) -> the pipeline's rotary embeddings, or None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        tr = self.transformer
        dev, dt = tr.device, tr.dtype
        B = x.shape[0]
        cond = expand_cond(cond, B)
        emb = cond["prompt_embeds"] if isinstance(cond, dict) else cond
        hs = x.permute(0, 2, 1, 3, 4).to(device=dev, dtype=dt)                 # frames-first
        ts = torch.as_tensor(t).reshape(-1).expand(B).to(dev)
        rope = self.rotary(x.shape[2], x.shape[3], x.shape[4]) if self.rotary is not None else None
        out = tr(hidden_states=hs, encoder_hidden_states=emb.to(device=dev, dtype=dt), timestep=ts,
                 image_rotary_emb=rope, return_dict=False)[0]
        return out.float().permute(0, 2, 1, 3, 4).to(device=x.device, dtype=x.dtype)


class CogVideoXModel(CausalVideoModel):
    """A loaded ``CogVideoXPipeline`` in the shapes longgen's causal video job uses
    (:mod:`~.causal`)."""

    family = "cogvideox"
    kind = "cogvideox"
    name = "CogVideoX"
    guidance = COG_GUIDANCE
    native_frames = COG_FRAMES
    native_size = COG_SIZE
    default_fps = COG_FPS
    default_stride_latent = COG_STRIDE_LATENT

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int | None = None):
        self.pipe, self.source = pipe, source
        self.transformer, self.vae = pipe.transformer.eval(), pipe.vae.eval()
        cfg = self.transformer.config
        # the text length the transformer's position table was made for (226, the pipeline's default)
        self.max_sequence_length = int(max_sequence_length or getattr(cfg, "max_text_seq_length", COG_MAX_TOKENS))
        if getattr(cfg, "patch_size_t", None) is not None:
            raise ValueError("CogVideoX 1.5 (transformer patch_size_t set: padded latent frames) is not supported "
                             "yet; allowed: CogVideoX 1.0 (2b, 5b)")
        if cfg.in_channels != self.latent_channels:
            raise ValueError(f"the transformer takes {cfg.in_channels} channels but the VAE has "
                             f"{self.latent_channels} (an image-to-video CogVideoX is not supported yet)")
        self._rope: dict = {}
        rotary = self._rotary if cfg.use_rotary_positional_embeddings else None
        self.denoiser = CogVideoXDenoiser(self.transformer, pipe.scheduler.config.prediction_type, rotary)
        self.scheduler = pipe.scheduler

    def _rotary(self, frames: int, h: int, w: int):
        key = (frames, h, w)
        if key not in self._rope:
            s = self.vae_scale_factor
            self._rope[key] = self.pipe._prepare_rotary_positional_embeddings(h * s, w * s, frames, self.device)
        return self._rope[key]

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def frame_step(self) -> int:
        return 2 * self.temporal_factor       # odd latent counts (see the module docstring)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * int(self.transformer.config.patch_size)

    # ------------------------------------------------------------------ VAE
    @property
    def scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """Frames ``(3, F, H, W)`` in [-1, 1] -> latents ``(C, t, h, w)``: posterior mode x scaling."""
        vae = self.vae
        z = vae.encode(clip[None].to(vae.device, vae.dtype)).latent_dist.mode()
        return (z * self.scaling)[0].float()

    def batches(self, n: int) -> list[int]:
        """The whole decode's calls for ``n`` latent frames (``AutoencoderKLCogVideoX._decode``): the
        first takes ``b + n % b`` frames, every other ``b`` (b = num_latent_frames_batch_size)."""
        b = int(self.vae.num_latent_frames_batch_size)
        calls = max(n // b, 1)
        r = n % b
        return [0] + [b * (i + 1) + r for i in range(calls - 1)] + [n]

    def decode_step(self, piece: torch.Tensor, cache: Any, start: int):
        """One decoder call of latents ``(C, n, h, w)`` -> (frames ``(3, F, H, W)`` in [-1, 1], cache)."""
        vae = self.vae
        with torch.no_grad():
            z = piece[None].to(vae.device, vae.dtype) / self.scaling
            if vae.post_quant_conv is not None:
                z = vae.post_quant_conv(z)
            out, cache = vae.decoder(z, conv_cache=cache)
            return out.clamp(-1.0, 1.0)[0].float().cpu(), cache

    def replay_frames(self) -> None:
        """None: a resume replays every decoded latent frame. The VAE's cache does not forget the past
        in a finite number of calls: rebuilt from the last K of 16 calls (random latents, 2x2) it
        differs from the true one by 2.8 (K = 1), 5e-4 (K = 8), 2e-6 (K = 12) and still 9e-7 at
        K = 15 for the tiny test VAE, 1e-5 at K = 15 for CogVideoX-2b's VAE config -- a geometric
        decay, never exact. The latents kept are 1/48 of the frames' size (16 channels at 1/8 x
        1/8 of 3 channels), e.g. 86 MB for 1000 frames at 480x720."""
        return None

    def decoder(self, latent_frames: int):
        from longgen.stitch import CausalStreamingDecoder

        return CausalStreamingDecoder(self.decode_step, axis=-3, replay=self.replay_frames(),
                                      batches=self.batches(latent_frames))


def load_cogvideox(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
                   local_files_only: bool = True) -> CogVideoXModel:
    from ..backends import load_pipeline

    return CogVideoXModel(load_pipeline("CogVideoXPipeline", model, dtype, device, local_files_only),
                          source=str(model))


__all__ = ["CogVideoXModel", "CogVideoXDenoiser", "load_cogvideox", "COG_GUIDANCE", "COG_FRAMES"]
