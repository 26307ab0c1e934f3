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

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

OUTPUT_TYPES = ("pil", "np", "latent")


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
    return output_type


def cli_args(command: str, model: Any, options: dict) -> tuple[Any, argparse.Namespace]:
    """(plugin, args) of ``longgen <command> --model <model>`` with ``options`` (underscored option
    names) set; an option the command does not have raises ValueError."""
    from longgen.cli import build_parser, discover

    if "guidance_scale" in options:  # the diffusers name of --guidance
        if "guidance" in options:
            raise ValueError("give guidance_scale or guidance, not both")
        options = dict(options)
        options["guidance"] = options.pop("guidance_scale")
    plugins = discover()
    if command not in plugins:
        raise ValueError(f"no modality {command!r} installed; found: {', '.join(plugins)}")
    parser = build_parser({command: plugins[command]})
    args = parser.parse_args([command, "--out", "unused.out"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    path_opts = {a.dest for a in sub.choices[command]._actions if a.type is Path}
    known = set(vars(args)) - {"command", "out", "resume", "overwrite", "no_progress", "model"}
    bad = sorted(set(options) - known)
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(bad)} for {command}; allowed: "
                         f"{', '.join(sorted(known))}")
    for k, v in options.items():
        setattr(args, k, Path(v) if (k in path_opts and isinstance(v, str)) else v)
    args.model = str(model) if isinstance(model, Path) else model
    return plugins[command], args


def run_in_memory(engine, decoder, latents: torch.Tensor | None, output_type: str):
    """Run ``engine`` (initial noise from ``latents`` when given) -> (final latent, decoded media
    or None for ``output_type='latent'``); the media is the decoder's output concatenated."""
    if latents is not None:
        engine.use_latents(latents)
    chunks = [c.latent for c in engine]
    latent = torch.cat(chunks, dim=engine.axis)
    if output_type == "latent":
        return latent, None
    parts = [m for m in (decoder.push(c) for c in chunks) if m is not None]
    tail = decoder.flush()
    if tail is not None:
        parts.append(tail)
    return latent, torch.cat(parts, dim=decoder.axis)


def _seed(options: dict, generator: torch.Generator | None, seed: int | None) -> dict:
    from .sd_jobs import _seed_of

    if generator is not None or seed is not None:
        options["seed"] = _seed_of(seed, generator)
    return options


# --------------------------------------------------------------------------- image


def panorama(model: Any = "builtin", prompt: str | list[str] = "", width: int = 2048,
             height: int = 512, *, latents: torch.Tensor | None = None, output_type: str = "pil",
             generator: torch.Generator | None = None, seed: int | None = None, **options):
    """A ``width`` x ``height`` panorama: ``PIL.Image`` (``"pil"``), float32 ``(H, W, 3)`` in
    [0, 1] (``"np"``) or the final latent ``(4, H/8, W/8)`` (``"latent"``).

    ``model``: ``"builtin"`` (the analytic landscape prior), an SD/SDXL checkpoint path, a
    diffusers pipeline or an :class:`~longgen.modalities.image.sd.SDModel` (for those see
    :func:`longgen.modalities.image.sd_jobs.panorama` for the keywords). ``latents``: the
    initial noise ``(4, H/8, W/8)``.
    """
    check_output_type(output_type)
    if not (isinstance(model, str) and model == "builtin"):
        from .sd_jobs import panorama as sd_panorama

        return sd_panorama(model, prompt, width, height, latents=latents, output_type=output_type,
                           generator=generator, seed=seed, **options)
    from .sd_jobs import image_output

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
        from .sd_jobs import inpaint as sd_inpaint

        if image is None or mask is None:
            raise ValueError("image and mask are required with a checkpoint model")
        return sd_inpaint(model, image, mask, prompt, latents=latents, output_type=output_type,
                          return_blended=return_blended, blend_pixels=blend_pixels,
                          generator=generator, seed=seed, **options)
    from .plugin import blend_with_source, check_blend_pixels
    from .sd_jobs import image_output

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
