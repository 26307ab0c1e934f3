"""``motion(...)``: the Python API of ``longgen motion``, in diffusers' manner (see
:mod:`longgen.modalities.image.api` for the conventions shared by every modality).

Latent layout: the engine samples normalised HumanML3D abs-root features ``(263, L)`` (features,
frames; the long axis is frames, ``-1``); ``latents=`` is the initial noise of the whole motion
in that layout, ``(263, frames)``. ``output_type``: ``"np"`` float32 joint positions
``(L, 22, 3)`` (metres, HumanML3D's 22-joint skeleton, as the CLI's .npy), ``"latent"`` the final
normalised features ``(263, L)`` before decoding, ``"pil"`` a list of stick-figure frames (PIL
images, the CLI's ``--render`` drawing: keyframes orange, generated frames blue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def motion(model: Any = "builtin", prompt: str = "", frames: int | None = None, *,
           latents: torch.Tensor | None = None, output_type: str = "np",
           generator: torch.Generator | None = None, seed: int | None = None, **options):
    """Keyframe in-betweening / completion. ``model``: ``"builtin"`` or a CondMDI checkpoint path
    (what ``longgen motion --model`` takes). Other keywords: the command's options with
    underscores (``input`` (a motion file), ``keyframes``, ``joints``, ``steps``, ``window_frames``,
    ``stride_frames``, ``w2``, ...). ``latents``: initial noise ``(263, frames)``."""
    from ..glue import _seed, check_output_type, cli_args, run_in_memory

    check_output_type(output_type)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be 'builtin' or a CondMDI checkpoint path; got "
                         f"{type(model).__name__}")
    opts = _seed({**options, "prompt": prompt, "frames": frames}, generator, seed)
    plugin, args = cli_args("motion", model, opts)
    job = plugin.build_job(args)
    latent, joints = run_in_memory(job.engine, job.decoder, latents, output_type)
    if output_type == "latent":
        return latent
    j = joints.T.reshape(joints.shape[-1], 22, 3).float().cpu().numpy()   # (66, L) -> (L, 22, 3)
    if output_type == "np":
        return j
    from PIL import Image

    from .export import stick_frames

    keyframes = getattr(job.writer, "keyframes", ())
    return [Image.fromarray(f) for f in stick_frames(j, keyframes)]
