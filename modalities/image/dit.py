"""What FLUX and SD3 share: a transformer over the VAE's 16-channel latents, a VAE with a shift
and a scale, the diffusers pipeline's own prompt encoding, flow-matching schedulers. The image jobs
read a model through :func:`~.sd_jobs.engine_model` (``denoiser_for``, ``scheduling``,
``engine_guidance``), ``encode_prompt(prompts, negative, size)``, ``vae_encode`` /
``vae_decode``, ``vae_scale_factor``, ``pixel_multiple``, ``latent_channels``, ``image_size``,
``device``, ``dtype`` -- the same names :class:`~.sd.SDModel` has.
"""

from __future__ import annotations

from pathlib import Path

import torch


class WindowScheduling:
    """A pipeline's schedule for windows of ``tokens`` transformer tokens, read by
    :func:`longgen.schedule.make_schedule` (the checkpoint's scheduler is never changed): the
    scheduler's own grid, or with ``linear_sigmas`` the sigmas ``linspace(1, 1/N, N)`` that the
    FLUX pipeline passes; with dynamic shifting, ``mu`` from the token count (a window has a
    fixed size, so one ``mu`` per run)."""

    flow = True
    linear_sigmas = False

    def __init__(self, scheduler, tokens: int):
        self.scheduler, self.tokens = scheduler, int(tokens)
        self.config = scheduler.config

    def longgen_schedule(self, steps: int, kind: str | None = None):
        import numpy as np

        from longgen.schedule import flow_mu, make_schedule

        mu = flow_mu(self.config, self.tokens) if getattr(self.config, "use_dynamic_shifting", False) else None
        sigmas = np.linspace(1.0, 1.0 / steps, steps) if self.linear_sigmas else None
        return make_schedule(self.scheduler, steps, kind, mu=mu, sigmas=sigmas)


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


def pipeline_class(path: Path) -> str | None:
    """``_class_name`` of a checkpoint directory's model_index.json (None without one)."""
    from .sd import _read_json

    f = Path(path) / "model_index.json"
    return _read_json(f).get("_class_name") if f.is_file() else None


def load_pipeline(cls_name: str, model, dtype: torch.dtype, device, local_files_only: bool):
    import diffusers

    from .sd import _dtype_kwargs

    from .sd import _read_json

    absent = {}   # components saved as [null, null] (an SD3 without T5): diffusers wants them named
    index = Path(model) / "model_index.json"
    if index.is_file():
        absent = {k: None for k, v in _read_json(index).items()
                  if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    pipe = getattr(diffusers, cls_name).from_pretrained(str(model), local_files_only=local_files_only,
                                                        **absent, **_dtype_kwargs("diffusers", dtype))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
