"""What FLUX and SD3 share: a transformer over the VAE's 16-channel latents, a VAE with a shift
and a scale, the diffusers pipeline's own prompt encoding, flow-matching schedulers -- and with
them the image contract of :mod:`~longgen.modalities.image.jobs` (``engine_parts``, ``guidance``,
``encode_prompt``, ``vae_encode`` / ``vae_decode``, ``vae_scale_factor``, ``pixel_multiple``,
``latent_channels``, ``image_size``, ``decode_halo``, ``device``, ``dtype``), the same names
:class:`~.sd.SDModel` and :class:`~.builtin.BuiltinImage` have.
"""

from __future__ import annotations


import torch

from longgen.schedule import WindowScheduling


class DiTModel:
    """A diffusers transformer pipeline (``pipe.transformer``, ``pipe.vae``, ``pipe.scheduler``)."""

    family = "dit"
    patch = 1             # extra spatial factor of the transformer's tokens (FLUX: 2x2 packing)

    def __init__(self, pipe, source: str | None = None):
        self.pipe = pipe
        self.transformer, self.vae = pipe.transformer.eval(), pipe.vae.eval()
        self.source = source

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Sizes must be multiples of this: the VAE factor times the transformer's patch."""
        return self.patch * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def image_size(self) -> int:
        """The pipeline's default size: default_sample_size x the VAE factor."""
        return int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale_factor

    @property
    def scheduler(self):
        return self.pipe.scheduler

    scheduling_class = WindowScheduling
    decode_halo = 8       # latents of context each side of a streamed VAE decode (as SD)

    def guidance(self, given: float | None) -> float:
        """The run's guidance: ``given``, else the family's default (FLUX.1-dev 3.5, embedded;
        SD3 7.0; 1 where there is none)."""
        return (self.default_guidance() or 1.0) if given is None else given

    def engine_parts(self, config, height: int, width: int, control: tuple | None = None):
        """(denoiser, scheduling, engine config, pixel multiple) of ``height`` x ``width`` px
        windows: the flow denoiser (the guidance embedded where the model takes it, in the
        engine's CFG rows where not), the pipeline's schedule for that window size;
        ``control``: (ControlNet, scale), run by the denoiser."""
        from dataclasses import replace

        g = config.guidance_scale if getattr(self, "guidance_embedded", False) else None
        if control is not None:
            den = self.denoiser_for(g, controlnet=control[0], control_scale=control[1])
        else:
            den = self.denoiser_for(g)
        cfg = replace(config, guidance_scale=self.engine_guidance(config.guidance_scale))
        return den, self.scheduling(height, width), cfg, self.pixel_multiple

    def scheduling(self, height: int, width: int) -> WindowScheduling:
        """The schedule of ``height`` x ``width`` px windows (their token count sets ``mu``)."""
        f = self.pixel_multiple
        return self.scheduling_class(self.pipe.scheduler, (height // f) * (width // f))

    def _scale_shift(self) -> tuple[float, float]:
        c = self.vae.config
        return float(c.scaling_factor), float(getattr(c, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def vae_encode(self, images: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f): ``(mode - shift) * scaling``."""
        s, sh = self._scale_shift()
        out = []
        for i in range(0, images.shape[0], chunk):
            z = self.vae.encode(images[i:i + chunk].to(self.vae.device, self.vae.dtype)).latent_dist.mode()
            out.append(((z - sh) * s).float())
        return torch.cat(out)

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor, chunk: int = 1, clamp: bool = True) -> torch.Tensor:
        """(B, C, h, w) -> (B, 3, h*f, w*f) in [-1, 1]: ``decode(z / scaling + shift)`` as the pipelines."""
        s, sh = self._scale_shift()
        out = []
        for i in range(0, latents.shape[0], chunk):
            z = latents[i:i + chunk].to(self.vae.device, self.vae.dtype) / s + sh
            img = self.vae.decode(z, return_dict=False)[0].float()
            out.append(img.clamp(-1, 1) if clamp else img)
        return torch.cat(out)
