"""``video(...)``: the Python API of ``longgen video``, in diffusers' manner (see
:mod:`longgen.modalities.image.api` for the conventions shared by every modality).

Latent layout: the engine samples video latents ``(C, F, h, w)`` (channels, frames, latent
height, latent width; the long axis is frames, ``-3``); ``latents=`` is the initial noise of the
whole video in that layout, ``(C, frames, H/8, W/8)``. ``output_type``: ``"pil"`` a list of
``PIL.Image`` frames, ``"np"`` float32 ``(F, H, W, 3)`` in [0, 1], ``"latent"`` the final latent
``(C, F, h, w)`` before decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _frames_output(frames: torch.Tensor, output_type: str):
    """(3, F, H, W) in [-1, 1] -> list of PIL frames or float32 (F, H, W, 3) in [0, 1]."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu()   # (F, H, W, 3)
    if output_type == "np":
        return x.numpy()
    from PIL import Image

    from ..image.writers import to_uint8

    return [Image.fromarray(to_uint8(frames[:, k])) for k in range(frames.shape[1])]


def _loaded_model_job(vm, args):
    """(engine, decoder) of ``longgen video`` with an already loaded :class:`VideoModel`."""
    from .jobs import video_parts

    return video_parts(vm, args)[:2]


@torch.no_grad()
def video(model: Any = "builtin", prompt: str = "", frames: int | None = None, *,
          latents: torch.Tensor | None = None, output_type: str = "pil",
          generator: torch.Generator | None = None, seed: int | None = None, **options):
    """A ``frames``-long video (default: 104 frames; Wan 209, CogVideoX 129, LTX 417). ``model``:
    ``"builtin"``, a video checkpoint path (what ``longgen video --model`` takes), or a loaded
    :class:`~longgen.modalities.video.models.VideoModel`, :class:`~longgen.modalities.video.wan.WanModel`,
    :class:`~longgen.modalities.video.cogvideox.CogVideoXModel` or :class:`~longgen.modalities.video.ltx.LTXModel`.
    Other keywords: the command's options with underscores (``steps``, ``height``, ``width``,
    ``window_frames``, ``stride_frames``, ``init`` (a clip path), ``guidance``, ``w2``, ...).
    ``latents``: initial noise ``(C, frames, H/8, W/8)``; for the causal-VAE families ``(C, 1 + (frames -
    1) / r, H/s, W/s)`` with the VAE's temporal factor r and spatial factor s (Wan, CogVideoX: 4 and 8;
    LTX: 8 and 32), the pipeline's latents unpacked, channels first; nothing is drawn for Y_T."""
    from ..glue import _seed, check_output_type, cli_args, run_in_memory

    check_output_type(output_type)
    from .builtin import BuiltinVideo
    from .models import VideoModel

    loaded = isinstance(model, (VideoModel, BuiltinVideo)) or getattr(model, "causal", False)
    if not (loaded or isinstance(model, (str, Path))):
        raise ValueError(f"model must be 'builtin', a checkpoint path or a loaded video model; got "
                         f"{type(model).__name__}")
    opts = _seed({**options, "prompt": prompt, "frames": frames}, generator, seed)
    plugin, args = cli_args("video", "loaded" if loaded else model, opts)
    if loaded:
        engine, decoder = _loaded_model_job(model, args)
    else:
        job = plugin.build_job(args)
        engine, decoder = job.engine, job.decoder
    latent, media = run_in_memory(engine, decoder, latents, output_type)
    return latent if output_type == "latent" else _frames_output(media, output_type)
