"""Image modality: ``longgen panorama`` and ``longgen inpaint``.

With ``--model builtin`` (the default) the exact landscape prior of ``longgen.builtin`` samples
4-channel latents that a fixed linear map turns into RGB (8 px per latent); a scene word in the
prompt (day, sunset, night, desert, snow) picks that scene's class, so guidance means something.
With a diffusers checkpoint (``--model PATH|HUB_ID``) see :mod:`longgen.modalities.image.sd_jobs`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from longgen.builtin import SCENES, LatentRGB, image_prior
from longgen.cli import request_of
from longgen.engine import Engine, EngineConfig, Given
from longgen.planner import plan_windows
from longgen.priors import PriorDenoiser
from longgen.run import Job
from longgen.stitch import StreamingDecoder

from .writers import PNGStripWriter

VAE_SCALE = 8


def builtin_scheduler():
    """SD's DDIM config (scaled-linear betas 0.00085..0.012, steps_offset 1, no alpha-to-one)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def scene_class(prompt: str) -> int:
    """Class id of the first scene word in the prompt, -1 (unconditional) when none."""
    words = prompt.lower()
    for k, name in enumerate(SCENES):
        if name in words:
            return k
    return -1


def split_prompts(prompt: str, n_windows: int) -> list[str]:
    """``a|b|c`` gives one prompt per window; a single prompt is shared."""
    parts = [p.strip() for p in prompt.split("|")]
    if len(parts) == 1:
        return parts * n_windows
    if len(parts) != n_windows:
        raise ValueError(f"--prompt has {len(parts)} '|'-separated prompts but the plan has "
                         f"{n_windows} windows; give one prompt or one per window")
    return parts


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """Options that only matter with a diffusers checkpoint (``--model PATH|HUB_ID``)."""
    p.add_argument("--vae", default=None,
                   help="another VAE (directory or hub id; AutoencoderTiny for fast previews)")
    p.add_argument("--local-files-only", action=argparse.BooleanOptionalAction, default=True,
                   help="read hub ids from the local cache only (default: %(default)s)")


def check_pixels(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0 or value % VAE_SCALE:
        raise ValueError(f"--{name} must be a positive multiple of {VAE_SCALE} pixels, got {value}")
    return value


def engine_config(args, guidance: float) -> EngineConfig:
    return EngineConfig(method=args.method, w1=args.w1, w2=args.w2, steps=args.steps, group=args.group,
                        observed=args.observed, live=args.live, given_path=args.given_path,
                        guidance_scale=guidance, blend=args.blend, seed=args.seed)


def check_builtin_dtype(args) -> torch.dtype:
    table = {"fp32": torch.float32, "fp64": torch.float64}
    if args.dtype not in table:
        raise ValueError(f"--dtype {args.dtype!r} is not available for the builtin prior; allowed: fp32, fp64")
    if args.device != "cpu":
        raise ValueError(f"the builtin prior runs on the CPU; got --device {args.device!r}")
    return table[args.dtype]


class Panorama:
    name = "panorama"
    help = "wide images: windows along the width (512 px windows at a 384 px stride by default)"
    defaults = dict(w2=0.001, steps=50, observed="trajectory", blend="feather")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--width", type=int, default=2048, help="output width in pixels (default: %(default)s)")
        p.add_argument("--height", type=int, default=512, help="output height in pixels (default: %(default)s)")
        p.add_argument("--window", type=int, default=None, help="window width in pixels (default: the model's native size, 512 builtin)")
        p.add_argument("--stride", type=int, default=None, help="window stride in pixels (default: 3/4 of the window, 384 for 512)")
        p.add_argument("--prompt", default="", help="text prompt; 'a|b|c' = one prompt per window")
        p.add_argument("--negative-prompt", default=None)
        p.add_argument("--decode-halo", type=int, default=8,
                       help="latents of context each side of a streamed VAE decode (default: %(default)s)")
        add_checkpoint_arguments(p)

    def build_job(self, args) -> Job:
        check_pixels("width", args.width)
        check_pixels("height", args.height)
        if args.model != "builtin":
            from .sd_jobs import sd_panorama_job

            return sd_panorama_job(args)
        window = check_pixels("window", args.window or 512)
        stride = check_pixels("stride", args.stride or window * 3 // 4)
        dtype = check_builtin_dtype(args)
        plan = plan_windows(args.width // VAE_SCALE, window // VAE_SCALE, stride // VAE_SCALE)
        h = args.height // VAE_SCALE
        sch = builtin_scheduler()
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=plan.window), sch)
        prompts = split_prompts(args.prompt, len(plan))
        classes = [scene_class(p) for p in prompts]
        guidance = args.guidance if args.guidance is not None else (3.0 if max(classes) >= 0 else 1.0)
        uncond = torch.tensor([-1])
        window_cond = lambda w: (torch.tensor([classes[w.index]]), uncond)  # noqa: E731
        engine = Engine(den, sch, plan, (4, h, plan.window), -1, engine_config(args, guidance),
                        window_cond=window_cond, dtype=dtype)
        rgb = LatentRGB()
        decoder = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-1, halo=1, scale=VAE_SCALE)
        return Job(engine, decoder, PNGStripWriter(args.out), request_of(args), Path(args.out),
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
        p.add_argument("--blend-pixels", type=int, default=0,
                       help="also write <out>-blended.png: pixels pasted back through a mask blurred by this radius")
        add_checkpoint_arguments(p)

    def build_job(self, args) -> Job:
        if args.model != "builtin":
            from .sd_jobs import sd_inpaint_job

            return sd_inpaint_job(args)
        dtype = check_builtin_dtype(args)
        rgb = LatentRGB()
        if args.image is None:
            prior = image_prior()
            x0, _ = prior.sample(1, torch.Generator().manual_seed(args.seed + 1))
            source = rgb.decode(x0.float())[0].clamp(-1, 1)
        else:
            source = load_image(args.image)
        H, W = source.shape[-2:]
        check_pixels("image height", H)
        check_pixels("image width", W)
        if args.mask is None:
            mask = torch.zeros(1, H, W)
            mask[:, H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
        else:
            mask = load_mask(args.mask, (H, W))
        h, w = H // VAE_SCALE, W // VAE_SCALE
        latent = rgb.encode((source * (1 - mask))[None].double())[0].to(dtype)  # masked source
        lmask = torch.nn.functional.interpolate(mask[None], size=(h, w), mode="nearest")[0]
        plan = plan_windows(w, w, max(1, w - 1)) if w > 1 else plan_windows(1, 1, 1)
        sch = builtin_scheduler()
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=w), sch)
        cls = scene_class(args.prompt)
        guidance = args.guidance if args.guidance is not None else (3.0 if cls >= 0 else 1.0)
        given = Given(values=latent, known=(1 - lmask).expand_as(latent).to(dtype))
        engine = Engine(den, sch, plan, (4, h, w), -1, engine_config(args, guidance),
                        cond=torch.tensor([cls]), uncond=torch.tensor([-1]), given=given, dtype=dtype)
        decoder = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-1, halo=1, scale=VAE_SCALE)
        writer = InpaintWriter(Path(args.out), source, mask, args.blend_pixels)
        return Job(engine, decoder, writer, request_of(args), Path(args.out))


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) in [-1, 1]."""
    from PIL import Image

    if not Path(path).exists():
        raise FileNotFoundError(f"image {path} does not exist")
    import numpy as np

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def load_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) with 1 = generate; must be black/white and the image's size."""
    from PIL import Image
    import numpy as np

    if not Path(path).exists():
        raise FileNotFoundError(f"mask {path} does not exist")
    m = np.asarray(Image.open(path).convert("L"))
    if m.shape != tuple(size):
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but the image is {size[1]}x{size[0]}; they must match")
    values = np.unique(m)
    if not set(values.tolist()) <= {0, 255}:
        raise ValueError(f"mask must be binary (0 = keep, 255 = generate); found values {values[:6].tolist()}")
    return torch.from_numpy((m == 255).astype(np.float32))[None]


class InpaintWriter:
    """Writes the generated image and, with a blend radius, the pixel-blended one (the paper's
    starred rows: generated * blurred mask + source * (1 - blurred mask))."""

    def __init__(self, out: Path, source: torch.Tensor, mask: torch.Tensor, radius: int):
        self.out, self.source, self.mask, self.radius = out, source, mask, radius
        self.parts: list[torch.Tensor] = []

    def open(self, work, state):
        self.parts = []

    def write(self, media):
        self.parts.append(media)

    def state(self):
        return {}

    def close(self):
        from PIL import Image

        from .writers import to_uint8

        img = torch.cat(self.parts, dim=-1)
        Image.fromarray(to_uint8(img)).save(self.out)
        paths = [self.out]
        if self.radius > 0:
            m = blur_mask(self.mask, self.radius)
            blended = img * m + self.source * (1 - m)
            bpath = self.out.with_name(self.out.stem + "-blended" + self.out.suffix)
            Image.fromarray(to_uint8(blended)).save(bpath)
            paths.append(bpath)
        return paths


def blur_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Box-blur the mask, then keep the masked area fully generated and the rest fully kept
    outside the blur band: unmasked pixels farther than ``radius`` from the mask are exact."""
    k = 2 * radius + 1
    m = torch.nn.functional.avg_pool2d(mask[None], k, stride=1, padding=radius, count_include_pad=False)[0]
    return torch.maximum(m, mask)
