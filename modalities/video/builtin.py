"""The builtin video backend: the exact landscape video prior of :mod:`longgen.builtin` behind the
video contract of :func:`longgen.modalities.video.jobs.video_parts`, the one job path that also
runs the UNet families (:class:`~.models.VideoModel`) and the causal-VAE ones
(:class:`~.causal.CausalVideoModel`).

Windows of 16 frames at a stride of 8 (the paper's LaVie setting), 128 x 128 px at 8 px per latent,
any window length (the prior is exact at every size). A scene word in the prompt picks that
scene's class (guidance 3 by default with one, 1 without). Frames are drawn as the landscape
panned with parallax (:class:`~longgen.builtin.LandscapeRGB`, by frame number); with an
``--init`` clip they are the fixed linear colour map, whose least-squares inverse encodes it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..glue import VAE_SCALE, builtin_dtype, builtin_scheduler, check_pixels, scene_class

DEFAULT_FRAMES = 104   # the paper's LaVie length: 12 windows of 16 at stride 8
DEFAULT_FPS = 8.0


class BuiltinVideo:
    """The landscape video prior as a video model. ``dtype``: the engine's (fp32 or fp64);
    ``decoder``: ``"landscape"`` or ``"linear"`` (as :class:`~..image.builtin.BuiltinImage`)."""

    kind = "builtin"
    temporal_factor = 1         # one latent frame per frame
    frame_step = 1
    native_frames = 16          # the default window
    max_window = None           # no longest window: the prior is exact at every length
    default_frames = DEFAULT_FRAMES
    default_fps = DEFAULT_FPS
    vae_scale_factor = VAE_SCALE
    latent_channels = 4
    device = torch.device("cpu")

    def __init__(self, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu",
                 decoder: str = "landscape"):
        self.engine_dtype, self.decoder_kind = builtin_dtype(dtype, device, decoder), decoder
        self.scheduler = builtin_scheduler()

    def default_stride(self, window: int) -> int:
        return window // 2

    def frame_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(H, W) px: 128 x 128 unless given, multiples of 8."""
        return check_pixels("height", 128 if height is None else height), \
            check_pixels("width", 128 if width is None else width)

    def encode_prompt(self, prompt: str, negative_prompt: str | None = None):
        """(class id of the prompt's scene word, the unconditional id -1); no negative prompt."""
        return torch.tensor([scene_class(prompt)]), torch.tensor([-1])

    def default_guidance(self, prompts: Sequence[str] = ()) -> float:
        return 3.0 if any(scene_class(p) >= 0 for p in prompts) else 1.0

    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """(3, F, H, W) in [-1, 1] -> (4, F, H/8, W/8): the linear colour map's inverse."""
        from longgen.builtin import LatentRGB

        return LatentRGB().encode(clip[None].double())[0].to(self.engine_dtype)

    def window_model(self, shape: tuple[int, ...]):
        """(the exact prior's denoiser for windows of ``shape`` (4, F, h, w), the DDIM scheduler)."""
        from longgen.builtin import video_prior
        from longgen.priors import PriorDenoiser

        _, f, h, w = shape
        return PriorDenoiser.for_scheduler(video_prior(frames=f, height=h, width=w), self.scheduler), \
            self.scheduler

    def decoder(self, latent_frames: int | None = None):
        """Latent frames -> RGB frames, one by one (no halo): ridgelines panned by frame number,
        or the linear map."""
        from longgen.builtin import LandscapeRGB, LatentRGB
        from longgen.stitch import StreamingDecoder

        if self.decoder_kind == "landscape":
            scene = LandscapeRGB()
            return StreamingDecoder(lambda z, f: scene.decode(z[None], f)[0], axis=-3, halo=0, scale=1,
                                    positional=True)
        rgb = LatentRGB()
        return StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-3, halo=0, scale=1)

    @staticmethod
    def check_options(args) -> None:
        """Options of the checkpoint families are refused by name."""
        given = [f"--{k.replace('_', '-')}" for k in ("motion_adapter", "sd_path", "ckpt", "image")
                 if getattr(args, k, None) is not None]
        if getattr(args, "kind", "auto") != "auto":
            given.append("--kind")
        if given:
            raise ValueError(f"{', '.join(given)} apply to a real video checkpoint, not to --model builtin")


def load_builtin(model: str = "builtin", *, dtype: str | torch.dtype = "fp32",
                 device: str | torch.device = "cpu", args=None, **_) -> BuiltinVideo:
    """The backend's loader (the prior has no files: ``model`` is only its name). ``args``: the
    command's options, checked first; with an ``--init`` clip frames use the linear map."""
    if args is not None:
        BuiltinVideo.check_options(args)
    init = args is not None and getattr(args, "init", None) is not None
    return BuiltinVideo(dtype, device, "linear" if init else "landscape")


__all__ = ["BuiltinVideo", "DEFAULT_FPS", "DEFAULT_FRAMES", "load_builtin"]
