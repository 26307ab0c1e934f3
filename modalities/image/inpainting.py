"""The user's picture in and out of inpainting: reading the image and mask, the released blend
(a 21x21 Gaussian of the mask, as ``alm/inpainting.py``) and the writer of the raw and blended
outputs. Shared by the builtin and the checkpoint paths."""

from __future__ import annotations

from pathlib import Path

from longgen.lazy import LazyModule

torch = LazyModule("torch")


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
    released 21x21 Gaussian) or R > 0 (a box blur); radius 0 writes no blended file.
    ``keep_source``: the generated image takes the source's pixels wherever the mask is 0."""

    def __init__(self, out: Path, source: torch.Tensor, mask: torch.Tensor, radius: int,
                 keep_source: bool = False):
        self.out, self.source, self.mask, self.radius = out, source, mask, radius
        self.keep_source = keep_source
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
        if self.keep_source:
            img = torch.where(self.mask.to(img.device) > 0.5, img, self.source.to(img))
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
