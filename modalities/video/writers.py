"""Video output: frames encoded to H.264 mp4 with PyAV as soon as they are finished.

The mp4 is fragmented (``frag_keyframe+empty_moov``): every finished fragment is playable, so an
interrupted run leaves a playable partial video. Each frame is also kept losslessly in the work
directory (``frames_00000.npy``, one file per written chunk); on resume the writer re-encodes the
frames of the saved state into a fresh mp4 and goes on, which gives the same bytes as an
uninterrupted run (x264 is deterministic for the same frames and settings; the muxer is told
to write no time stamps of its own: ``fflags=+bitexact``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

GOP = 8  # a keyframe (and so a fragment) every 8 frames


def frames_to_uint8(media: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    x = ((media.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class MP4Writer:
    def __init__(self, out: Path, fps: float, crf: int = 18):
        if not (isinstance(fps, (int, float)) and fps > 0):
            raise ValueError(f"--fps must be a positive number, got {fps!r}")
        self.out, self.fps, self.crf = Path(out), fps, crf
        self.container = None
        self.stream = None
        self.parts = 0
        self.frames = 0

    # ------------------------------------------------------------------ container
    def _start(self, width: int, height: int) -> None:
        import av
        from fractions import Fraction

        self.container = av.open(str(self.out), mode="w", format="mp4",
                                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                          "fflags": "+bitexact"})
        rate = Fraction(self.fps).limit_denominator(1000)
        s = self.container.add_stream("libx264", rate=rate)
        s.width, s.height = width, height
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(self.crf), "preset": "medium", "g": str(GOP), "keyint_min": str(GOP),
                     "sc_threshold": "0", "flags": "+bitexact"}
        s.codec_context.thread_count = 1
        self.stream = s

    def _encode(self, frames: np.ndarray) -> None:
        import av

        if self.container is None:
            h, w = frames.shape[1:3]
            if h % 2 or w % 2:
                raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
            self._start(w, h)
        for f in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                self.container.mux(packet)
        # flush finished fragments so the partial file is playable
        try:
            self.container.flush()  # available in newer PyAV
        except AttributeError:
            pass

    # ------------------------------------------------------------------ Writer protocol
    def open(self, work: Path, state: dict | None) -> None:
        self.work = work
        self.parts = int(state["parts"]) if state else 0
        for p in work.glob("frames_*.npy"):
            if int(p.stem.split("_")[1]) >= self.parts:
                p.unlink()
        self.frames = 0
        if self.out.exists():
            self.out.unlink()
        for k in range(self.parts):  # re-encode what the saved state had written
            frames = np.load(work / f"frames_{k:05d}.npy")
            self._encode(frames)
            self.frames += len(frames)

    def write(self, media: torch.Tensor) -> None:
        frames = frames_to_uint8(media)
        path = self.work / f"frames_{self.parts:05d}.npy"
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, frames)
        os.replace(tmp, path)
        self.parts += 1
        self._encode(frames)
        self.frames += len(frames)

    def state(self) -> dict:
        return {"parts": self.parts, "frames": self.frames}

    def close(self) -> list[Path]:
        if self.container is None:
            raise ValueError("no frames were written")
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None
        return [self.out]


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as (F, H, W, 3) uint8, and its frame rate."""
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            fps = float(stream.average_rate or 0) or 8.0
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    except (av.error.InvalidDataError, av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames), fps
