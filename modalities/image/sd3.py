"""Stable Diffusion 3 / 3.5 behind the contract of :mod:`.dit` (the names :class:`~.sd.SDModel` has).

Conventions follow diffusers 0.42 ``pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py``
(facts in ``../shared/facts/flow-models.md``): ``SD3Transformer2DModel`` takes the VAE latents
``(B, 16, h, w)`` as they are (it patches them itself, so sizes are multiples of VAE factor x
patch size) and the scheduler's timestep ``1000 t`` (float32, as the pipeline passes it); the
condition is the pipeline's own ``encode_prompt`` (two CLIP encoders with projection, penultimate
states concatenated and padded to the T5 width, then T5's sequence, zeros when the checkpoint has
no T5; the two pooled projections concatenated); classifier-free guidance with an empty negative
prompt (default scale 7.0), which the engine batches as it does for SD; the scheduler's own grid
(static shift; ``mu`` from the window's tokens when the config shifts dynamically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from longgen.denoiser import FlowDenoiser, expand_cond

from ..backends import load_pipeline
from .dit import DiTModel

SD3_GUIDANCE = 7.0      # StableDiffusion3Pipeline's default guidance_scale
SD3_MAX_TOKENS = 256    # its default max_sequence_length


class SD3Velocity:
    """``(x_flow (B, C, h, w), t (B,), cond) -> v``: the transformer as the SD3 pipeline calls it.
    ``cond``: ``{"prompt_embeds": (B, L, D), "pooled": (B, P)}``.

    With a ``controlnet`` (``SD3ControlNetModel``) the condition also holds ``control``, the
    window's control latents ``(B, C, h, w)``; the ControlNet sees the latents, timestep, text
    states (none when its config has no ``joint_attention_dim``) and the pooled projection (zeros
    when it forces them), and the transformer takes its block samples, as
    ``StableDiffusion3ControlNetPipeline`` passes them."""

    def __init__(self, transformer, num_train_timesteps: int = 1000, controlnet=None,
                 control_scale: float = 1.0):
        self.transformer = transformer
        self.num_train_timesteps = num_train_timesteps
        self.controlnet, self.control_scale = controlnet, float(control_scale)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        tr = self.transformer
        dev, dt = tr.device, tr.dtype
        B = x.shape[0]
        cond = expand_cond(cond, B)
        # the pipeline's timestep: the scheduler's float32 sigma * 1000
        ts = (torch.as_tensor(t).reshape(-1).expand(B).to(torch.float32) * self.num_train_timesteps).to(dev)
        hs = x.to(device=dev, dtype=dt)
        emb = cond["prompt_embeds"].to(device=dev, dtype=dt)
        pooled = cond["pooled"].to(device=dev, dtype=dt)
        extra = {}
        if self.controlnet is not None:
            cn = self.controlnet
            ctrl = cond.get("control") if isinstance(cond, dict) else None
            if ctrl is None:
                raise ValueError("a ControlNet denoiser needs the window's control image in its "
                                 "condition (key 'control')")
            cn_pooled = torch.zeros_like(pooled) if cn.config.force_zeros_for_pooled_projection else pooled
            cn_emb = emb if cn.config.joint_attention_dim is not None else None
            blocks = cn(hidden_states=hs, timestep=ts, encoder_hidden_states=cn_emb,
                        pooled_projections=cn_pooled, controlnet_cond=ctrl.to(device=dev, dtype=cn.dtype),
                        conditioning_scale=self.control_scale, return_dict=False)[0]
            extra["block_controlnet_hidden_states"] = blocks
        out = tr(hidden_states=hs, timestep=ts, encoder_hidden_states=emb, pooled_projections=pooled,
                 return_dict=False, **extra)[0]
        return out.to(device=x.device, dtype=x.dtype)


class SD3Model(DiTModel):
    """An SD3 / SD3.5 checkpoint in the shapes longgen uses (see the module docstring)."""

    family = "sd3"

    def __init__(self, pipe, source: str | None = None, max_sequence_length: int = SD3_MAX_TOKENS):
        super().__init__(pipe, source)
        self.max_sequence_length = int(max_sequence_length)
        if self.transformer.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(f"the transformer takes {self.transformer.config.in_channels} channels but the "
                             f"VAE has {self.vae.config.latent_channels} latent channels")

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    def default_guidance(self) -> float:
        return SD3_GUIDANCE

    def engine_guidance(self, guidance: float) -> float:
        """Classifier-free guidance runs in the engine (uncond + cond rows), as for SD."""
        return float(guidance)

    def denoiser_for(self, guidance: float | None, controlnet=None, control_scale: float = 1.0) -> FlowDenoiser:
        return FlowDenoiser(SD3Velocity(self.transformer, int(self.scheduler.config.num_train_timesteps),
                                        controlnet=controlnet, control_scale=control_scale))

    @torch.no_grad()
    def control_input(self, crop: torch.Tensor, controlnet) -> torch.Tensor:
        """A window's control pixels (1, 3, H, W) in [0, 1] -> the ControlNet's latents, as the
        pipeline makes them: the VAE of the pixels in [-1, 1], ``(mode - shift) * scaling`` with
        no shift for ControlNets that force zero pooled projections (InstantX's)."""
        s, shift = self._scale_shift()
        if controlnet.config.force_zeros_for_pooled_projection:
            shift = 0.0
        z = self.vae.encode((crop * 2 - 1).to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        return ((z - shift) * s).float()

    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt: str | None = None,
                      size=None) -> tuple[dict, dict]:
        """(cond, uncond) dicts ``{"prompt_embeds", "pooled"}`` from the pipeline's own
        ``encode_prompt``; the negative prompt defaults to "" as in the pipeline."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or "", max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": emb, "pooled": pooled}, {"prompt_embeds": neg, "pooled": neg_pooled}


def load_sd3(model: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
             local_files_only: bool = True) -> SD3Model:
    """Load a StableDiffusion3Pipeline checkpoint directory (or a cached hub id)."""
    return SD3Model(load_pipeline("StableDiffusion3Pipeline", model, dtype, device, local_files_only),
                    source=str(model))
