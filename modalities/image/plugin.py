"""Image modality: ``longgen panorama`` and ``longgen inpaint``.

With ``--model builtin`` (the default) the exact landscape prior of ``longgen.builtin`` samples
4-channel latents that a fixed linear map turns into RGB (8 px per latent); a scene word in the
prompt (day, sunset, night, desert, snow) picks that scene's class, so guidance means something.
With a diffusers checkpoint (``--model PATH|HUB_ID``) see :mod:`longgen.modalities.image.sd_jobs`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longgen.cli import request_of
from longgen.lazy import LazyModule
from longgen.run import Job

from ..glue import (VAE_SCALE, builtin_scheduler, check_builtin_dtype, check_pixels,  # noqa: F401
                    engine_config, scene_class, split_prompts)
from .inpainting import (InpaintWriter, RELEASED_BLUR, blend_with_source, blur_mask,  # noqa: F401
                         check_blend_pixels, gaussian_kernel, load_image, load_mask, read_picture,
                         released_blend_mask)

torch = LazyModule("torch")  # imported on first use, so that `longgen --help` does not load it

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


def refuse_checkpoint_options(args) -> None:
    """The builtin prior has no weights to adapt: checkpoint-only options are refused by name."""
    for opt in ("lora", "controlnet", "control"):
        if getattr(args, opt, None):
            raise ValueError(f"--{opt} needs a checkpoint model (--model DIR); the builtin prior has "
                             "no UNet or transformer to adapt")


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
        p.add_argument("--decode-halo", type=int, default=8,
                       help="latents of context each side of a streamed VAE decode (default: %(default)s)")
        add_checkpoint_arguments(p)

    def build_job(self, args) -> Job:
        check_pixels("width", args.width)
        check_pixels("height", args.height)
        if args.model != "builtin":
            from .sd_jobs import sd_panorama_job

            return sd_panorama_job(args)
        refuse_checkpoint_options(args)
        from longgen.builtin import LandscapeRGB, LatentRGB, image_prior
        from longgen.priors import PriorDenoiser

        window = check_pixels("window", args.window or 512)
        stride = check_pixels("stride", args.stride or window * 3 // 4)
        dtype = check_builtin_dtype(args)
        from .sd_jobs import (canvas_decoder, canvas_engine, canvas_plan,  # checks in pixels:
                              canvas_writer, expand_prompts, window_height)  # messages in the user's units

        plan = canvas_plan(args.width, args.height, window, stride, VAE_SCALE, loop=args.loop)
        h = window_height(plan, args.height, VAE_SCALE)
        sch = builtin_scheduler()
        win_w = plan.cols.window if hasattr(plan, "cols") else plan.window
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=win_w), sch)
        prompts = expand_prompts([p.strip() for p in args.prompt.split("|")], plan)
        classes = [scene_class(p) for p in prompts]
        guidance = args.guidance if args.guidance is not None else (3.0 if max(classes) >= 0 else 1.0)
        uncond = torch.tensor([-1])
        window_cond = lambda index, y0, w: (torch.tensor([classes[index]]), uncond)  # noqa: E731
        engine = canvas_engine(den, sch, plan, 4, h, engine_config(args, guidance), window_cond, dtype=dtype)
        # a landscape of ridgelines for one row of windows; a 2-D grid's bands are decoded row
        # band by row band, which the landscape (drawn from the window's full height) cannot be
        rgb = LatentRGB() if hasattr(plan, "cols") else LandscapeRGB()
        decoder = canvas_decoder(lambda z: rgb.decode(z[None])[0], plan, 1, VAE_SCALE)
        writer = canvas_writer(args.out, plan, 1, VAE_SCALE)
        return Job(engine, decoder, writer, request_of(args), Path(args.out),
                   info={"width": args.width, "height": args.height})


class Inpaint:
    name = "inpaint"
    help = "fill the white part of a mask in an image (ALM with the DDIM inversion of the source)"
    defaults = dict(w2=0.005, steps=50, given_path="invert")

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
        if args.model != "builtin":
            from .sd_jobs import sd_inpaint_job

            return sd_inpaint_job(args)
        refuse_checkpoint_options(args)
        from longgen.builtin import LandscapeRGB, LatentRGB, image_prior
        from longgen.engine import Engine, Given
        from longgen.planner import plan_windows
        from longgen.priors import PriorDenoiser
        from longgen.stitch import StreamingDecoder

        dtype = check_builtin_dtype(args)
        x0 = None
        if args.image is None:
            # the demo: a landscape drawn from a prior sample, whose latent is known exactly
            rgb = LandscapeRGB()
            x0 = image_prior().sample(1, torch.Generator().manual_seed(args.seed + 1))[0][0].float()
            source = rgb.decode(x0[None])[0].clamp(-1, 1)
        else:
            rgb = LatentRGB()   # a user's image: the linear map and its least-squares inverse
            source = load_image(args.image)
        H, W = source.shape[-2:]
        check_pixels("image height", H)
        check_pixels("image width", W)
        if args.mask is None:
            mask = torch.zeros(1, H, W)
            mask[:, H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
        else:
            mask = load_mask(args.mask, (H, W))
        check_blend_pixels(args.blend_pixels)
        h, w = H // VAE_SCALE, W // VAE_SCALE
        from .sd_jobs import masked_image  # the hole at -1 (black), as released

        lmask = torch.nn.functional.interpolate(mask[None], size=(h, w), mode="nearest")[0]
        if x0 is None:
            latent = rgb.encode(masked_image(source, mask)[None].double())[0].to(dtype)
        else:
            # the demo's hole is zero in latent space (the prior's scale, no colour): the builtin
            # has no VAE, so "black before the VAE" (as released for SD) has no counterpart, and
            # the latent of black, far outside the prior, made the filled hole brighter than its surroundings
            latent = (x0 * (1 - lmask)).to(dtype)
        plan = plan_windows(w, w, max(1, w - 1)) if w > 1 else plan_windows(1, 1, 1)
        sch = builtin_scheduler()
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=w), sch)
        cls = scene_class(args.prompt)
        guidance = args.guidance if args.guidance is not None else (3.0 if cls >= 0 else 1.0)
        given = Given(values=latent, known=(1 - lmask).expand_as(latent).to(dtype), keep_unknown=True)
        engine = Engine(den, sch, plan, (4, h, w), -1, engine_config(args, guidance),
                        cond=torch.tensor([cls]), uncond=torch.tensor([-1]), given=given, dtype=dtype)
        decoder = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-1, halo=1, scale=VAE_SCALE)
        # the demo keeps every unmasked pixel of its source exactly; a user's image is written
        # as decoded (the linear map cannot reproduce a photograph) and blended beside it
        writer = InpaintWriter(Path(args.out), source, mask, args.blend_pixels, keep_source=x0 is not None)
        return Job(engine, decoder, writer, request_of(args), Path(args.out))


