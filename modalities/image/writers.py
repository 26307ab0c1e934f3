"""Panorama output: finished strips written as PNGs while the run goes on, assembled at the end.

Strips live in the run's work directory (``strip_00000.png`` ...), each readable on its own, so an
interrupted run leaves a viewable partial panorama. The final PNG is assembled from the strips
and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


class PNGStripWriter:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.work: Path | None = None
        self.strips = 0
        self.width = 0

    def open(self, work: Path, state: dict | None) -> None:
        from PIL import Image  # noqa: F401  (fail early if Pillow is missing)

        self.work = work
        if state is None:
            self.strips, self.width = 0, 0
            for p in work.glob("strip_*.png"):
                p.unlink()
        else:
            self.strips, self.width = int(state["strips"]), int(state["width"])
            for p in work.glob("strip_*.png"):  # drop strips written after the saved state
                if int(p.stem.split("_")[1]) >= self.strips:
                    p.unlink()

    def write(self, media: torch.Tensor) -> None:
        from PIL import Image

        arr = to_uint8(media)
        path = self.work / f"strip_{self.strips:05d}.png"
        tmp = path.with_name(path.name + ".tmp.png")
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)
        self.strips += 1
        self.width += arr.shape[1]

    def state(self) -> dict:
        return {"strips": self.strips, "width": self.width}

    def close(self) -> list[Path]:
        from PIL import Image

        height = None
        canvas = None
        x = 0
        for k in range(self.strips):
            strip = np.asarray(Image.open(self.work / f"strip_{k:05d}.png").convert("RGB"))
            if canvas is None:
                height = strip.shape[0]
                canvas = np.zeros((height, self.width, 3), dtype=np.uint8)
            canvas[:, x:x + strip.shape[1]] = strip
            x += strip.shape[1]
        tmp = self.out.with_name(self.out.name + ".tmp.png")
        Image.fromarray(canvas).save(tmp)
        os.replace(tmp, self.out)
        return [self.out]
