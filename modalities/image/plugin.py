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

from .writers import PNGStripWriter

torch = LazyModule("torch")  # imported on first use, so that `longgen --help` does not load it

VAE_SCALE = 8


def builtin_scheduler():
    """SD's DDIM config (scaled-linear betas 0.00085..0.012, steps_offset 1, no alpha-to-one)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def scene_class(prompt: str) -> int:
    """Class id of the first scene word in the prompt, -1 (unconditional) when none."""
    from longgen.builtin import SCENES

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


def engine_config(args, guidance: float):
    from longgen.engine import EngineConfig

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
        from longgen.builtin import LatentRGB, image_prior
        from longgen.engine import Engine
        from longgen.priors import PriorDenoiser
        from longgen.stitch import StreamingDecoder

        window = check_pixels("window", args.window or 512)
        stride = check_pixels("stride", args.stride or window * 3 // 4)
        dtype = check_builtin_dtype(args)
        from .sd_jobs import panorama_plan  # checks in pixels, so messages are in the user's units

        plan = panorama_plan(args.width, args.height, window, stride, VAE_SCALE)
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
        from longgen.builtin import LatentRGB, image_prior
        from longgen.engine import Engine, Given
        from longgen.planner import plan_windows
        from longgen.priors import PriorDenoiser
        from longgen.stitch import StreamingDecoder

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
        check_blend_pixels(args.blend_pixels)
        h, w = H // VAE_SCALE, W // VAE_SCALE
        from .sd_jobs import masked_image  # the hole at -1 (black), as released

        latent = rgb.encode(masked_image(source, mask)[None].double())[0].to(dtype)
        lmask = torch.nn.functional.interpolate(mask[None], size=(h, w), mode="nearest")[0]
        plan = plan_windows(w, w, max(1, w - 1)) if w > 1 else plan_windows(1, 1, 1)
        sch = builtin_scheduler()
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=w), sch)
        cls = scene_class(args.prompt)
        guidance = args.guidance if args.guidance is not None else (3.0 if cls >= 0 else 1.0)
        given = Given(values=latent, known=(1 - lmask).expand_as(latent).to(dtype), keep_unknown=True)
        engine = Engine(den, sch, plan, (4, h, w), -1, engine_config(args, guidance),
                        cond=torch.tensor([cls]), uncond=torch.tensor([-1]), given=given, dtype=dtype)
        decoder = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-1, halo=1, scale=VAE_SCALE)
        writer = InpaintWriter(Path(args.out), source, mask, args.blend_pixels)
        return Job(engine, decoder, writer, request_of(args), Path(args.out))


def read_picture(path: Path, what: str, mode: str):
    """A PIL image of ``path`` converted to ``mode``; a file PIL cannot decode is a ValueError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated data
        raise ValueError(f"cannot read {what} {path}: {' '.join(str(e).split()) or type(e).__name__}; "
                         "give a PNG or JPEG file") from None


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) in [-1, 1]."""
    if not Path(path).exists():
        raise FileNotFoundError(f"image {path} does not exist")
    import numpy as np

    arr = np.asarray(read_picture(path, "image", "RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def load_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) with 1 = generate; must be black/white and the image's size."""
    import numpy as np

    if not Path(path).exists():
        raise FileNotFoundError(f"mask {path} does not exist")
    m = np.asarray(read_picture(path, "mask", "L"))
    if m.shape != tuple(size):
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but the image is {size[1]}x{size[0]}; they must match")
    values = np.unique(m)
    if not set(values.tolist()) <= {0, 255}:
        raise ValueError(f"mask must be binary (0 = keep, 255 = generate); found values {values[:6].tolist()}")
    return torch.from_numpy((m == 255).astype(np.float32))[None]


def check_blend_pixels(radius) -> None:
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"--blend-pixels must be an integer >= 0 (0 = no blended file), got {radius!r}")


class InpaintWriter:
    """Writes the generated image and beside it ``<stem>-blended<suffix>`` (the paper's starred
    rows, the released ``blended/`` output): :func:`blend_with_source` with ``radius`` None (the
    released 21x21 Gaussian) or R > 0 (a box blur); radius 0 writes no blended file."""

    def __init__(self, out: Path, source: torch.Tensor, mask: torch.Tensor, radius: int):
        self.out, self.source, self.mask, self.radius = out, source, mask, radius
        self.parts: list[torch.Tensor] = []
        self.digests: list[str] = []  # sha256 of each finished part kept in the work directory

    def _part(self, k: int) -> Path:
        return self.work / f"part_{k:05d}.pt"

    def open(self, work, state):
        """Finished parts are kept as ``part_NNNNN.pt`` in the work directory (the image is only
        written at the end), so a resumed run has them all; each is verified against its sha256."""
        from longgen.run import resume_parts

        self.work = Path(work)
        self.digests = list(state["sha256"]) if state else []
        resume_parts(self.work, "part", ".pt", self.digests, "finished part of the inpainting")
        self.parts = [torch.load(self._part(k), weights_only=True) for k in range(len(self.digests))]

    def write(self, media):
        import io

        from longgen.run import write_part

        media = media.detach().cpu()
        buf = io.BytesIO()
        torch.save(media.contiguous(), buf)
        self.digests.append(write_part(self._part(len(self.parts)), buf.getvalue()))
        self.parts.append(media)

    def state(self):
        return {"sha256": list(self.digests)}

    def close(self):
        from PIL import Image

        from .writers import to_uint8

        img = torch.cat(self.parts, dim=-1)
        Image.fromarray(to_uint8(img)).save(self.out)
        paths = [self.out]
        if self.radius is None or self.radius > 0:
            blended = blend_with_source(img, self.source, self.mask, self.radius)
            bpath = self.out.with_name(self.out.stem + "-blended" + self.out.suffix)
            Image.fromarray(blended).save(bpath)
            paths.append(bpath)
        return paths


RELEASED_BLUR = 21  # released blend: cv2.GaussianBlur(mask, (21, 21), 0)


def gaussian_kernel(size: int = RELEASED_BLUR) -> torch.Tensor:
    """The 1-D Gaussian OpenCV uses for ``ksize=size, sigma=0``: sigma = 0.3 ((size-1)/2 - 1) + 0.8
    (3.5 for 21), normalised to sum 1; float64."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def released_blend_mask(mask: torch.Tensor, size: int = RELEASED_BLUR) -> torch.Tensor:
    """(1, H, W) binary mask -> the released blend weight of the generated pixels:
    1 - (1 - M)(1 - G * M) with G the separable ``size`` x ``size`` Gaussian, borders mirrored
    without repeating the edge (OpenCV's default BORDER_REFLECT_101 = torch's ``reflect``).
    1 inside the hole, the blur's tail outside it."""
    k = gaussian_kernel(size)
    r = size // 2
    m = mask.double()[None]                                                    # (1, 1, H, W)
    if min(m.shape[-2:]) <= r:
        raise ValueError(f"the image must be larger than {r} px on each side for the "
                         f"{size}x{size} blend; got {tuple(mask.shape[-2:])}")
    g = torch.nn.functional.pad(m, (r, r, 0, 0), mode="reflect")
    g = torch.nn.functional.conv2d(g, k.view(1, 1, 1, size))
    g = torch.nn.functional.pad(g, (0, 0, r, r), mode="reflect")
    g = torch.nn.functional.conv2d(g, k.view(1, 1, size, 1))[0]
    return (1 - (1 - mask.double()) * (1 - g)).float()


def blend_with_source(img: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                      radius: int | None = None):
    """Generated ``img`` (3, H, W) in [-1, 1] pasted into ``source`` through the blend weight, in
    8-bit arithmetic as released: round the generated image to 8 bits, ``gen * B + src * (1 - B)``
    in float32, round half to even and clip. ``radius`` None: the released Gaussian weight; R > 0:
    :func:`blur_mask` of radius R. Returns (H, W, 3) uint8."""
    import numpy as np

    from .writers import to_uint8

    b = released_blend_mask(mask) if radius is None else blur_mask(mask, radius)
    b = b[0].numpy()[..., None].astype(np.float32)
    gen = to_uint8(img).astype(np.float32)
    src = to_uint8(source).astype(np.float32) * (1 - mask[0].numpy()[..., None].astype(np.float32))
    return np.clip(np.rint(gen * b + src * (1 - b)), 0, 255).astype(np.uint8)


def blur_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Box-blur the mask, then keep the masked area fully generated and the rest fully kept
    outside the blur band: unmasked pixels farther than ``radius`` from the mask are exact."""
    k = 2 * radius + 1
    m = torch.nn.functional.avg_pool2d(mask[None], k, stride=1, padding=radius, count_include_pad=False)[0]
    return torch.maximum(m, mask)
