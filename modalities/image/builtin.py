"""The builtin image backend: the exact landscape prior of :mod:`longgen.builtin` behind the
same contract as the checkpoint families (:mod:`.sd`, :mod:`.flux`, :mod:`.sd3`), so that
``longgen panorama`` and ``longgen inpaint`` run one job path for all of them.

It samples 4-channel latents at 8 px per latent; a fixed decoder draws them (no weights, no
download). A scene word in the prompt (day, sunset, night, desert, snow) picks that scene's
class, so guidance means something; without one the prior is unconditional and the default
guidance is 1 (3 with a scene word). The denoiser of a window is the prior's exact score for
that window's size, on SD's DDIM schedule (:func:`~longgen.modalities.glue.builtin_scheduler`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..glue import VAE_SCALE, builtin_dtype, builtin_scheduler, scene_class


class BuiltinImage:
    """The landscape prior as an image model. ``dtype``: the engine's (fp32 or fp64).
    ``decoder``: ``"landscape"`` (ridgelines, :class:`~longgen.builtin.LandscapeRGB`) or
    ``"linear"`` (the fixed colour map, whose least-squares inverse encodes a user's image)."""

    family = "builtin"
    vae_scale_factor = VAE_SCALE
    pixel_multiple = VAE_SCALE
    latent_channels = 4
    image_size = 512            # the native window, px
    decode_halo = 1             # the decoders read +-1 latent column: a halo of 1 is exact to 1e-5
    exact_stream = True         # so inpainting streams too (a VAE decodes the whole image at once)
    # the known part's X_t: its clean latent noised with the window's own noise estimate. The
    # released inversion of the latent with its zeroed hole biases that X_t, and the fill came
    # out brighter than its surroundings (worst 8-px block at the demo's edges / inside: 3.50
    # with invert, 1.47 matched, the source itself 1.46; 8 seeds)
    inpaint_given_path = "matched"
    decoder_reach = 1           # a pixel reads the latents within 1 of its own (columns; rows too
                                # for the linear map): inpainting generates the latents within reach
    device = torch.device("cpu")

    def __init__(self, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu",
                 decoder: str = "landscape"):
        self.dtype, self.decoder = builtin_dtype(dtype, device, decoder), decoder
        self.scheduler = builtin_scheduler()

    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt: str | None = None,
                      size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class ids, one per prompt; the unconditional id -1). The negative prompt has no
        counterpart in a class-conditional prior and is ignored."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return torch.tensor([scene_class(p) for p in prompts]), torch.tensor([-1])

    def guidance(self, given: float | None, prompts: Sequence[str] = ()) -> float:
        """``given``, else 3 when a prompt names a scene and 1 when none does."""
        if given is not None:
            return given
        return 3.0 if any(scene_class(p) >= 0 for p in prompts) else 1.0

    def engine_parts(self, config, height: int, width: int, control: tuple | None = None):
        """(the exact prior's denoiser for ``height`` x ``width`` px windows, the DDIM scheduler,
        the config, 8)."""
        from longgen.builtin import image_prior
        from longgen.priors import PriorDenoiser

        if control is not None:
            raise ValueError("--controlnet needs a checkpoint model (--model DIR)")
        f = self.vae_scale_factor
        den = PriorDenoiser.for_scheduler(image_prior(height=height // f, width=width // f), self.scheduler)
        return den, self.scheduler, config, self.pixel_multiple

    def window_decoder(self, grid: bool = False):
        """(4, h, w) -> (3, 8h, 8w). A row of windows is drawn as ridgelines
        (:class:`~longgen.builtin.LandscapeRGB`, drawn from the window's full height); a 2-D
        grid's row bands cannot be, and use the linear colour map."""
        from longgen.builtin import LandscapeRGB, LatentRGB

        rgb = LatentRGB() if (grid or self.decoder == "linear") else LandscapeRGB()
        return lambda z: rgb.decode(z[None])[0]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 3, 8h, 8w), by ``decoder``."""
        decode = self.window_decoder()
        return torch.stack([decode(z) for z in latents])

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents, the least-squares inverse of the linear colour
        map (the landscape decoder has no inverse)."""
        from longgen.builtin import LatentRGB

        return LatentRGB().encode(images.double()).to(self.dtype)


def load_builtin(model: str = "builtin", *, dtype: str | torch.dtype = "fp32",
                 device: str | torch.device = "cpu", **_) -> BuiltinImage:
    """The backend's loader (the prior has no files: ``model`` is only its name)."""
    return BuiltinImage(dtype, device)


def demo_source(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inpainting demo's source when no image is given: a prior sample (seed ``seed + 1``)
    drawn as a 512 x 512 landscape, and its exact latent -> ((3, 512, 512) in [-1, 1], (4, 64, 64))."""
    from longgen.builtin import LandscapeRGB, image_prior

    x0 = image_prior().sample(1, torch.Generator().manual_seed(seed + 1))[0][0].float()
    return LandscapeRGB().decode(x0[None])[0].clamp(-1, 1), x0


__all__ = ["BuiltinImage", "demo_source", "load_builtin"]
