"""FLUX.1 (dev and schnell) behind the contract of :mod:`.dit` (the names :class:`~.sd.SDModel` has).

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

Positions. By default a window's image ids are its own, from (0, 0), as when the model makes
one image of that size: every window is the input the model was trained on, and windows batch
into one forward (their ids are equal). ``FluxModel(positions="canvas")`` offsets each window's
column ids by its place in the panorama (a ``"col0"`` entry in the condition); with RoPE that gives
every window its own rotary table, so rows of different windows take separate forwards.
``benchmarks/flux_positions.py`` measures the seams of both on the tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from longgen.denoiser import FlowDenoiser, expand_cond
from longgen.schedule import WindowScheduling

from ..backends import load_pipeline
from .dit import DiTModel

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


def image_ids(h: int, w: int, device=None, dtype=torch.float32, col0: float = 0.0) -> torch.Tensor:
    """(h/2 * w/2, 3) ids (0, row, col) of the packed grid, as _prepare_latent_image_ids; columns
    start at ``col0`` (canvas positions)."""
    rows = torch.arange(h // 2, device=device, dtype=dtype)[:, None].expand(h // 2, w // 2)
    cols = col0 + torch.arange(w // 2, device=device, dtype=dtype)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)


class FluxVelocity:
    """``(x_flow (B, C, h, w), t (B,), cond) -> v (B, C, h, w)``: the transformer as FluxPipeline
    calls it. ``cond``: ``{"prompt_embeds": (B, L, D), "pooled": (B, P)}``; ``guidance``: the
    embedded guidance value (dev) or None (schnell).

    With a ``controlnet`` (``FluxControlNetModel``) the condition also holds ``control``: the
    window's control image as the pipeline gives it to the ControlNet -- its VAE latents
    ``(B, C, h, w)`` (packed here), or for ControlNets with an input hint block the pixels
    ``(B, 3, H, W)`` in [-1, 1] -- and the transformer takes the ControlNet's block samples, as
    ``FluxControlNetPipeline`` passes them."""

    def __init__(self, transformer, guidance: float | None, num_train_timesteps: int = 1000,
                 controlnet=None, control_scale: float = 1.0):
        self.transformer = transformer
        self.guidance = guidance
        self.num_train_timesteps = num_train_timesteps
        self.controlnet, self.control_scale = controlnet, float(control_scale)
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
        hs, pooled = pack(x.to(device=dev, dtype=dt)), cond["pooled"].to(device=dev, dtype=dt)
        col0 = cond.get("col0")
        groups = [(None, 0.0)] if col0 is None else [
            ((col0 == c).nonzero().squeeze(1), float(c)) for c in torch.unique(col0)]
        out = torch.empty_like(hs)
        control = self._control(cond, dev) if self.controlnet is not None else None
        for rows, c in groups:   # one forward per distinct position table
            sel = slice(None) if rows is None else rows.to(dev)
            common = dict(hidden_states=hs[sel], timestep=ts[sel], pooled_projections=pooled[sel],
                          encoder_hidden_states=emb[sel], txt_ids=torch.zeros(emb.shape[1], 3, device=dev, dtype=dt),
                          img_ids=image_ids(h, w, dev, dt, c), return_dict=False)
            extra = {}
            if control is not None:
                cn = self.controlnet
                g = kwargs.get("guidance") if cn.config.guidance_embeds else None
                blocks, single = cn(controlnet_cond=control[sel], conditioning_scale=self.control_scale,
                                    guidance=None if g is None else g[sel], **common)
                extra = dict(controlnet_block_samples=blocks, controlnet_single_block_samples=single,
                             controlnet_blocks_repeat=cn.input_hint_block is not None)
            out[sel] = tr(**common, **extra, **{k: v[sel] for k, v in kwargs.items()})[0]
            self.forwards += 1
        return unpack(out, h, w).to(device=x.device, dtype=x.dtype)


    def _control(self, cond: Any, dev) -> torch.Tensor:
        ctrl = cond.get("control") if isinstance(cond, dict) else None
        if ctrl is None:
            raise ValueError("a ControlNet denoiser needs the window's control image in its condition "
                             "(key 'control')")
        ctrl = ctrl.to(device=dev, dtype=self.controlnet.dtype)
        return ctrl if self.controlnet.input_hint_block is not None else pack(ctrl)


class FluxScheduling(WindowScheduling):
    """The FLUX pipeline's schedule: sigmas ``linspace(1, 1/N, N)``, ``mu`` from the window's
    packed token count when the config shifts dynamically."""

    linear_sigmas = True


class FluxModel(DiTModel):
    """A FLUX.1 checkpoint in the shapes longgen uses (see the module docstring)."""

    family = "flux"
    patch = 2
    scheduling_class = FluxScheduling

    POSITIONS = ("local", "canvas")

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int = FLUX_MAX_TOKENS,
                 positions: str = "local"):
        super().__init__(pipe, source)
        self.max_sequence_length = int(max_sequence_length)
        if positions not in self.POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; allowed: {', '.join(self.POSITIONS)}")
        self.positions = positions
        want = 4 * self.vae.config.latent_channels
        if self.transformer.config.in_channels != want:
            raise ValueError(f"the transformer takes {self.transformer.config.in_channels} channels but "
                             f"the VAE's {self.vae.config.latent_channels} latent channels pack to {want}")

    @property
    def guidance_embedded(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def window_extras(self, start: int) -> dict:
        """Condition entries of the window starting at latent column ``start``: its packed
        column offset under canvas positions, nothing under local ones."""
        return {"col0": torch.tensor([start // self.patch])} if self.positions == "canvas" else {}

    def default_guidance(self) -> float | None:
        return FLUX_GUIDANCE if self.guidance_embedded else None

    def guidance(self, given: float | None) -> float:
        """As :meth:`DiTModel.guidance`; a value on a schnell-like model (no guidance input, no
        CFG) is refused with the reason."""
        if given is not None and not self.guidance_embedded:
            self.denoiser_for(given)   # raises
        return super().guidance(given)

    def engine_guidance(self, guidance: float) -> float:
        """The engine's classifier-free guidance scale: none (the value is embedded, or absent)."""
        return 1.0

    def denoiser_for(self, guidance: float | None, controlnet=None, control_scale: float = 1.0) -> FlowDenoiser:
        """The denoiser of a run with ``guidance`` (dev: the embedded value, default 3.5;
        schnell: must be None), and a ``FluxControlNetModel`` if given. The engine's own
        classifier-free guidance stays off."""
        if self.guidance_embedded:
            g = FLUX_GUIDANCE if guidance is None else float(guidance)
        else:
            if guidance is not None:
                raise ValueError(f"--guidance {guidance}: this FLUX checkpoint has guidance_embeds=False "
                                 "(schnell-like, distilled without guidance); it takes no guidance value")
            g = None
        return FlowDenoiser(FluxVelocity(self.transformer, g, int(self.scheduler.config.num_train_timesteps),
                                         controlnet=controlnet, control_scale=control_scale))

    def control_input(self, crop: torch.Tensor, controlnet) -> torch.Tensor:
        """A window's control pixels (1, 3, H, W) in [0, 1] -> what its ControlNet takes: the VAE
        latents of the pixels in [-1, 1] (InstantX-style), or those pixels (an input hint block)."""
        px = crop * 2 - 1
        if controlnet.input_hint_block is not None:
            return px
        return self.vae_encode(px)

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


def load_flux(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
              local_files_only: bool = True) -> FluxModel:
    """Load a FluxPipeline checkpoint directory (or a cached hub id) as a :class:`FluxModel`."""
    return FluxModel(load_pipeline("FluxPipeline", model, dtype, device, local_files_only), source=str(model))
