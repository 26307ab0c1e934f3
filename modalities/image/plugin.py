"""Image modality: ``longgen panorama`` and ``longgen inpaint`` -- their options; the jobs are
built by :mod:`longgen.modalities.image.jobs`, one path for every image backend
(:data:`longgen.modalities.backends.BACKENDS`).

With ``--model builtin`` (the default) the exact landscape prior of ``longgen.builtin`` samples
4-channel latents that a fixed decoder draws (8 px per latent; :mod:`.builtin`); a scene word in
the prompt (day, sunset, night, desert, snow) picks that scene's class, so guidance means
something. ``--model PATH|HUB_ID`` takes a diffusers checkpoint of SD 1.x/2.x/XL, FLUX.1 or SD3.x.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longgen.run import Job

from ..glue import check_pixels


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """Options that only matter with a diffusers checkpoint (``--model PATH|HUB_ID``)."""
    p.add_argument("--vae", default=None,
                   help="another VAE (directory or hub id; AutoencoderTiny for fast previews)")
    p.add_argument("--local-files-only", action=argparse.BooleanOptionalAction, default=True,
                   help="read hub ids from the local cache only (default: %(default)s)")
    p.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors for the model's family, loaded with diffusers' LoRA "
                        "loaders into the UNet/transformer and text encoders as the file holds them; "
                        "repeat for several (scale default 1)")


class Panorama:
    name = "panorama"
    help = "wide images: windows along the width (512 px windows at a 384 px stride by default)"
    defaults = dict(w1=2.0, w2=0.001, steps=50, observed="matched", blend="auto")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--width", type=int, default=2048, help="output width in pixels (default: %(default)s)")
        p.add_argument("--height", type=int, default=512,
                       help="output height in pixels (default: %(default)s); taller than the window, the "
                            "canvas is a 2-D grid of windows sampled row by row, each observing the rows "
                            "above and the columns on its left")
        p.add_argument("--window", type=int, default=None, help="window size in pixels (default: the model's native size, 512 builtin)")
        p.add_argument("--stride", type=int, default=None, help="window stride in pixels, along both axes of a 2-D canvas (default: 3/4 of the window, 384 for 512)")
        p.add_argument("--prompt", default="", help="text prompt; 'a|b|c' = one prompt per window (2-D: in raster order, or one per column)")
        p.add_argument("--negative-prompt", default=None)
        p.add_argument("--loop", action="store_true",
                       help="a 360-degree panorama: the right edge continues into the left edge (the "
                            "last window observes the first one too; the decode wraps around)")
        p.add_argument("--controlnet", default=None, metavar="DIR",
                       help="a diffusers ControlNet directory for the checkpoint's family (ControlNetModel for SD 1.x/2.x and SDXL, FluxControlNetModel, SD3ControlNetModel); needs --control")
        p.add_argument("--control", type=Path, default=None, metavar="IMAGE",
                       help="the control image (canny, depth, tile, ...) of the whole canvas, resized to "
                            "it; each window is conditioned on its own crop")
        p.add_argument("--control-scale", type=float, default=1.0,
                       help="ControlNet conditioning scale (default: %(default)s)")
        p.add_argument("--decode-halo", type=int, default=None,
                       help="latents of context each side of a streamed VAE decode (default: the "
                            "model's: 8 for SD, FLUX and SD3, 1 builtin)")
        add_checkpoint_arguments(p)

    def build_job(self, args) -> Job:
        from .jobs import panorama_job

        check_pixels("width", args.width)
        check_pixels("height", args.height)
        return panorama_job(args)


class Inpaint:
    name = "inpaint"
    help = ("fill the white part of a mask in an image (ALM; the source DDIM-inverted as released "
            "for checkpoints, observed as matched by the builtin prior)")
    defaults = dict(w2=0.005, steps=50, given_path=None)   # None: the model's (image.jobs.inpaint_job)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--image", type=Path, default=None, help="source image (builtin: a prior sample when omitted)")
        p.add_argument("--mask", type=Path, default=None, help="mask PNG, white = generate (builtin: the centre square when omitted)")
        p.add_argument("--prompt", default="")
        p.add_argument("--negative-prompt", default=None)
        p.add_argument("--blend-pixels", type=int, default=None,
                       help="<out>-blended.png is written beside <out>: the generated pixels pasted into the "
                            "source through the released blend mask (a 21x21 Gaussian of the mask, 1 inside "
                            "the hole); R > 0 blends through a box blur of radius R instead, 0 writes no "
                            "blended file")
        add_checkpoint_arguments(p)

    def build_job(self, args) -> Job:
        from .jobs import inpaint_job

        return inpaint_job(args)
