"""FLUX.1 (dev and schnell) behind the same small contract as :class:`~.sd.SDModel`.

What the image jobs read from a model: ``denoiser_for(config)`` (the denoiser and the engine
settings it needs), ``scheduler`` (something :func:`longgen.schedule.make_schedule` turns into a
schedule), ``encode_prompt(prompts, negative, size)``, ``vae_encode`` / ``vae_decode``,
``vae_scale_factor``, ``latent_channels``, ``image_size``, ``device``, ``dtype``.

Conventions follow diffusers 0.42 ``pipelines/flux/pipeline_flux.py`` (facts in
``../shared/facts/flow-models.md``):

* latents are the VAE's ``(C, h, w)`` (16 channels for FLUX.1), ``(z - shift_factor) *
  scaling_factor``; the 2x2 packing into ``(h/2 * w/2, 4C)`` tokens happens inside
  :class:`FluxVelocity`, so the engine, the stitching and ``latents=`` see the VAE layout;
* the transformer gets ``timestep = t`` (the pipeline's ``sigma * 1000 / 1000``, rounded through
  float32 as there), text ids all zero and image ids ``(0, row, col)`` of the packed grid;
* guidance-distilled checkpoints (``guidance_embeds=True``, FLUX.1-dev) take the guidance value as
  an embedding: one row per window per step, no unconditional row; FLUX.1-schnell has neither;
* the schedule is the pipeline's: sigmas ``linspace(1, 1/N, N)`` with dynamic shifting, ``mu``
  from the window's token count (:func:`longgen.schedule.flow_mu`).

Positions. A window's image ids are its own, from (0, 0), as when the model makes one image of
that size: every window is then the in-distribution input the model was trained on and windows
batch into one forward (their ids are equal). Canvas positions (ids offset by the window's place
in the panorama) are the alternative; with FLUX's RoPE they give every window a different
rotary table, so windows could no longer share a forward. We use local positions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from longgen.denoiser import FlowDenoiser, expand_cond

FLUX_GUIDANCE = 3.5      # FluxPipeline's default guidance_scale (the embedded value for dev)
FLUX_MAX_TOKENS = 512    # FluxPipeline's default max_sequence_length


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FluxPipeline._pack_latents' token order."""
    B, C, h, w = x.shape
    return x.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), C * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    B, _, D = tokens.shape
    C = D // 4
    return tokens.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h/2 * w/2, 3) ids (0, row, col) of the packed grid, as _prepare_latent_image_ids."""
    rows = torch.arange(h // 2, device=device, dtype=dtype)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, device=device, dtype=dtype)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)


class FluxVelocity:
    """``(x_flow (B, C, h, w), t (B,), cond) -> v (B, C, h, w)``: the transformer as FluxPipeline
    calls it. ``cond``: ``{"prompt_embeds": (B, L, D), "pooled": (B, P)}``; ``guidance``: the
    embedded guidance value (dev) or None (schnell)."""

    def __init__(self, transformer, guidance: float | None, num_train_timesteps: int = 1000):
        self.transformer = transformer
        self.guidance = guidance
        self.num_train_timesteps = num_train_timesteps
        self.forwards = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        tr = self.transformer
        dev, dt = tr.device, tr.dtype
        B, C, h, w = x.shape
        cond = expand_cond(cond, B)
        n = self.num_train_timesteps
        # the pipeline's timestep: float32 sigma * 1000, cast to the latents' dtype, / 1000
        ts = (torch.as_tensor(t).reshape(-1).expand(B).to(torch.float32) * n).to(device=dev, dtype=dt) / n
        kwargs = {}
        if tr.config.guidance_embeds:
            kwargs["guidance"] = torch.full((B,), float(self.guidance), device=dev, dtype=torch.float32)
        emb = cond["prompt_embeds"].to(device=dev, dtype=dt)
        out = tr(hidden_states=pack(x.to(device=dev, dtype=dt)), timestep=ts,
                 pooled_projections=cond["pooled"].to(device=dev, dtype=dt), encoder_hidden_states=emb,
                 txt_ids=torch.zeros(emb.shape[1], 3, device=dev, dtype=dt),
                 img_ids=image_ids(h, w, dev, dt), return_dict=False, **kwargs)[0]
        self.forwards += 1
        return unpack(out, h, w).to(device=x.device, dtype=x.dtype)


class FluxScheduling:
    """The FLUX pipeline's schedule for windows of ``tokens`` packed tokens: sigmas
    ``linspace(1, 1/N, N)`` and, with dynamic shifting, ``mu`` from the token count. Read by
    :func:`longgen.schedule.make_schedule`; the checkpoint's scheduler is never changed."""

    flow = True

    def __init__(self, scheduler, tokens: int):
        self.scheduler, self.tokens = scheduler, int(tokens)
        self.config = scheduler.config

    def longgen_schedule(self, steps: int, kind: str | None = None):
        from longgen.schedule import flow_mu, make_schedule

        mu = flow_mu(self.config, self.tokens) if getattr(self.config, "use_dynamic_shifting", False) else None
        return make_schedule(self.scheduler, steps, kind, mu=mu, sigmas=np.linspace(1.0, 1.0 / steps, steps))


class FluxModel:
    """A FLUX.1 checkpoint in the shapes longgen uses (see the module docstring)."""

    family = "flux"

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int = FLUX_MAX_TOKENS):
        self.pipe = pipe
        self.transformer, self.vae = pipe.transformer.eval(), pipe.vae.eval()
        self.source = source
        self.max_sequence_length = int(max_sequence_length)
        want = 4 * self.vae.config.latent_channels
        if self.transformer.config.in_channels != want:
            raise ValueError(f"the transformer takes {self.transformer.config.in_channels} channels but "
                             f"the VAE's {self.vae.config.latent_channels} latent channels pack to {want}")

    # ------------------------------------------------------------------ facts
    @property
    def guidance_embedded(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

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
        """Sizes must be multiples of this: the VAE factor times the 2x2 packing."""
        return 2 * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def image_size(self) -> int:
        """The pipeline's default size: default_sample_size (128) x the VAE factor."""
        return int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale_factor

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def scheduling(self, height: int, width: int) -> FluxScheduling:
        f = self.pixel_multiple
        return FluxScheduling(self.pipe.scheduler, (height // f) * (width // f))

    def default_guidance(self) -> float | None:
        return FLUX_GUIDANCE if self.guidance_embedded else None

    def denoiser_for(self, guidance: float | None) -> FlowDenoiser:
        """The denoiser of a run with ``guidance`` (dev: the embedded value, default 3.5;
        schnell: must be None). The engine's own classifier-free guidance stays off."""
        if self.guidance_embedded:
            g = FLUX_GUIDANCE if guidance is None else float(guidance)
        else:
            if guidance is not None:
                raise ValueError(f"--guidance {guidance}: this FLUX checkpoint has guidance_embeds=False "
                                 "(schnell-like, distilled without guidance); it takes no guidance value")
            g = None
        return FlowDenoiser(FluxVelocity(self.transformer, g, int(self.scheduler.config.num_train_timesteps)))

    # ------------------------------------------------------------------ prompts
    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt: str | None = None,
                      size=None) -> tuple[dict, None]:
        """(cond, None): ``{"prompt_embeds": (B, L, D), "pooled": (B, P)}`` from the pipeline's own
        ``encode_prompt`` (CLIP pooled + T5 sequence). FLUX has no unconditional row."""
        if negative_prompt:
            raise ValueError("FLUX checkpoints take no negative prompt here (no classifier-free guidance)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        emb, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                 max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": emb, "pooled": pooled}, None

    # ------------------------------------------------------------------ VAE
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
        """(B, C, h, w) -> (B, 3, h*f, w*f) in [-1, 1]: ``decode(z / scaling + shift)`` as the pipeline."""
        s, sh = self._scale_shift()
        out = []
        for i in range(0, latents.shape[0], chunk):
            z = latents[i:i + chunk].to(self.vae.device, self.vae.dtype) / s + sh
            img = self.vae.decode(z, return_dict=False)[0].float()
            out.append(img.clamp(-1, 1) if clamp else img)
        return torch.cat(out)


def flux_index(path: Path) -> dict | None:
    """The parsed model_index.json when ``path`` is a FluxPipeline checkpoint, else None."""
    f = Path(path) / "model_index.json"
    if not f.is_file():
        return None
    try:
        index = json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{f}: not readable JSON ({err})") from None
    return index if index.get("_class_name") == "FluxPipeline" else None


def load_flux(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
              local_files_only: bool = True) -> FluxModel:
    """Load a FluxPipeline checkpoint directory (or a cached hub id) as a :class:`FluxModel`."""
    from diffusers import FluxPipeline

    from .sd import _dtype_kwargs

    pipe = FluxPipeline.from_pretrained(str(model), local_files_only=local_files_only,
                                        **_dtype_kwargs("diffusers", dtype))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return FluxModel(pipe, source=str(model))
