"""The Python API of every modality, in diffusers' manner: ``panorama`` and ``inpaint`` here (exported by
:mod:`longgen.modalities.image`), ``video`` in :mod:`longgen.modalities.video.api`, ``motion`` in
:mod:`longgen.modalities.motion.api`.

Each takes ``model`` (``"builtin"``, a checkpoint path, or a loaded model where the modality has
one), ``latents=`` (the initial noise of the whole output in the engine's VAE-latent layout; it
replaces the seeded noise exactly and nothing is drawn for Y_T) and ``output_type`` (``"pil"``,
``"np"`` or ``"latent"``: the final latent before decoding). The other keywords are the command
line's options with underscores (``steps=``, ``w2=``, ``frames=``, ...; ``guidance_scale=`` is
``--guidance``): a call builds the same
:class:`~longgen.run.Job` as ``longgen <command>`` and runs it in memory, so a call and the CLI
give the same output for the same options. This module imports no model library at import time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..glue import OUTPUT_TYPES, _seed, check_output_type, cli_args, run_in_memory  # noqa: F401

# --------------------------------------------------------------------------- image


def panorama(model: Any = "builtin", prompt: str | list[str] = "", width: int = 2048,
             height: int = 512, *, latents: torch.Tensor | None = None, output_type: str = "pil",
             generator: torch.Generator | None = None, seed: int | None = None, **options):
    """A ``width`` x ``height`` panorama: ``PIL.Image`` (``"pil"``), float32 ``(H, W, 3)`` in
    [0, 1] (``"np"``) or the final latent ``(4, H/8, W/8)`` (``"latent"``).

    ``model``: ``"builtin"`` (the analytic landscape prior), an SD/SDXL checkpoint path, a
    diffusers pipeline or an :class:`~longgen.modalities.image.sd.SDModel` (for those see
    :func:`longgen.modalities.image.jobs.panorama` for the keywords). ``latents``: the
    initial noise ``(4, H/8, W/8)``.
    """
    check_output_type(output_type)
    if not (isinstance(model, str) and model == "builtin"):
        from .jobs import panorama as sd_panorama

        return sd_panorama(model, prompt, width, height, latents=latents, output_type=output_type,
                           generator=generator, seed=seed, **options)
    from .jobs import image_output

    prompt = "|".join(prompt) if isinstance(prompt, (list, tuple)) else prompt
    plugin, args = cli_args("panorama", model, _seed({**options, "prompt": prompt, "width": width,
                                                       "height": height}, generator, seed))
    job = plugin.build_job(args)
    latent, img = run_in_memory(job.engine, job.decoder, latents, output_type)
    return latent if output_type == "latent" else image_output(img, output_type)


def inpaint(model: Any = "builtin", image=None, mask=None, prompt: str = "", *,
            latents: torch.Tensor | None = None, output_type: str = "pil",
            return_blended: bool = False, blend_pixels: int = 0,
            generator: torch.Generator | None = None, seed: int | None = None, **options):
    """Fill the white part of ``mask`` in ``image`` (PIL images or paths) as the released ALM
    inpainting does (hole black before encoding, the full latent DDIM-inverted).

    Returns a ``PIL.Image`` (``"pil"``), float32 ``(H, W, 3)`` in [0, 1] (``"np"``) or the final
    latent ``(4, H/8, W/8)`` (``"latent"``); ``return_blended=True`` returns ``(raw, blended)``
    with the released 21x21 Gaussian blend (``blend_pixels`` > 0: a box blur of that radius).
    ``model``: ``"builtin"`` (``image``/``mask`` may be None: a prior sample and the centre
    square, as the CLI), an SD checkpoint path, a pipeline or an ``SDModel``.
    """
    check_output_type(output_type)
    if not (isinstance(model, str) and model == "builtin"):
        from .jobs import inpaint as sd_inpaint

        if image is None or mask is None:
            raise ValueError("image and mask are required with a checkpoint model")
        return sd_inpaint(model, image, mask, prompt, latents=latents, output_type=output_type,
                          return_blended=return_blended, blend_pixels=blend_pixels,
                          generator=generator, seed=seed, **options)
    from .inpainting import blend_with_source, check_blend_pixels
    from .jobs import image_output

    check_blend_pixels(blend_pixels)
    if output_type == "latent" and (return_blended or blend_pixels):
        raise ValueError("output_type='latent' returns the latent only; blending needs 'pil' or 'np'")
    with tempfile.TemporaryDirectory() as d:  # PIL inputs go through the CLI's file checks
        files = {}
        for name, obj in (("image", image), ("mask", mask)):
            if obj is None or isinstance(obj, (str, Path)):
                files[name] = None if obj is None else Path(obj)
            else:
                files[name] = Path(d) / f"{name}.png"
                (obj.convert("L") if name == "mask" else obj.convert("RGB")).save(files[name])
        plugin, args = cli_args("inpaint", model, _seed({**options, "prompt": prompt, **files},
                                                        generator, seed))
        job = plugin.build_job(args)
    latent, img = run_in_memory(job.engine, job.decoder, latents, output_type)
    if output_type == "latent":
        return latent
    if not (return_blended or blend_pixels):
        return image_output(img, output_type)
    from PIL import Image

    w = job.writer
    blended = blend_with_source(img, w.source, w.mask, blend_pixels or None)
    blended = Image.fromarray(blended) if output_type == "pil" else blended.astype("float32") / 255
    return (image_output(img, output_type), blended) if return_blended else blended
