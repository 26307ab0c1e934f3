"""Video output: frames encoded to H.264 mp4 with PyAV as soon as they are finished.

The mp4 is fragmented (``frag_keyframe+empty_moov``) and the muxer flushes every packet to the
file (``flush_packets=1``): every finished fragment is on disk and playable, so an interrupted
(even SIGKILLed) run leaves a playable partial video. Without the flush the fragments would sit in
the muxer's I/O buffer and a killed run would leave a 28-byte header. x264 caps its lookahead at
the keyframe interval, so frames reach the file at most a GOP or two after they are written.

Each frame is also kept losslessly in the work directory (``frames_00000.npy``, one file per
written chunk); on resume the writer re-encodes the frames of the saved state into a fresh mp4 and
goes on, which gives the same bytes as an uninterrupted run. For that the bytes must be a
function of the frames alone: x264's macroblock-tree rate control is off (``mbtree=0``) because
with it, encoding the same frames twice in one process gave different first GOPs in 10 of 12
tries (x264 via PyAV 18, GOP 8; without it 12 of 12 were identical, at 16, 64 and 128 px);
frames carry explicit time stamps, and the muxer writes none of its own (``fflags=+bitexact``).
The state holds each frame file's sha256; ``--resume`` refuses a frame file that changed (the
partial mp4 itself is rebuilt from the frame files, so a damaged partial mp4 is simply redone).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `longgen --help` does not load it
    import torch

GOP = 8  # a keyframe (and so a fragment) every 8 frames


def frames_to_uint8(media: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    import torch

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
        self.digests: list[str] = []
        self.frames = 0
        self.encoded = 0  # frames given to the encoder of the current file (their pts)

    # ------------------------------------------------------------------ container
    def _start(self, width: int, height: int) -> None:
        import av
        from fractions import Fraction

        self.container = av.open(str(self.out), mode="w", format="mp4",
                                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                          "fflags": "+bitexact", "flush_packets": "1"})
        rate = Fraction(self.fps).limit_denominator(1000)
        s = self.container.add_stream("libx264", rate=rate)
        s.width, s.height = width, height
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(self.crf), "preset": "medium", "g": str(GOP), "keyint_min": str(GOP),
                     "sc_threshold": "0", "flags": "+bitexact", "x264-params": "mbtree=0"}
        s.codec_context.thread_count = 1
        self.stream = s
        self.encoded = 0

    def _encode(self, frames: np.ndarray) -> None:
        import av

        if self.container is None:
            h, w = frames.shape[1:3]
            if h % 2 or w % 2:
                raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
            self._start(w, h)
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = self.encoded  # in the encoder's time base, 1 / fps
            self.encoded += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    # ------------------------------------------------------------------ Writer protocol
    def _part(self, k: int) -> Path:
        return self.work / f"frames_{k:05d}.npy"

    def open(self, work: Path, state: dict | None) -> None:
        from longgen.run import resume_parts

        self.work = work
        parts = int(state["parts"]) if state else 0
        digests = list(state["sha256"]) if state else []
        if len(digests) != parts:
            raise ValueError(f"resume state lists {len(digests)} frame-part digests for {parts} parts")
        resume_parts(work, "frames", ".npy", digests, "finished frames of the video")
        self.parts, self.digests = parts, digests
        self.frames = 0
        if self.out.exists():  # the partial mp4 is re-derived from the verified frames
            self.out.unlink()
        for k in range(self.parts):  # re-encode what the saved state had written
            frames = np.load(self._part(k))
            self._encode(frames)
            self.frames += len(frames)

    def write(self, media: torch.Tensor) -> None:
        import io

        from longgen.run import write_part

        frames = frames_to_uint8(media)
        buf = io.BytesIO()
        np.save(buf, frames)
        self.digests.append(write_part(self._part(self.parts), buf.getvalue()))
        self.parts += 1
        self._encode(frames)
        self.frames += len(frames)

    def state(self) -> dict:
        return {"parts": self.parts, "frames": self.frames, "sha256": list(self.digests)}

    def close(self) -> list[Path]:
        if self.container is None:
            raise ValueError("no frames were written")
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None
        return [self.out]


def read_video(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """The frames of a video (all, or the first ``max_frames``) as (F, H, W, 3) uint8, and its frame rate."""
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            fps = float(stream.average_rate or 0) or 8.0
            frames = []
            for f in c.decode(stream):  # stop early: only the frames asked for are held in memory
                frames.append(f.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.InvalidDataError, av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames), fps


def clip_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, h, w, 3) uint8 -> (3, F, height, width) in [-1, 1]: resize the short side, centre-crop."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 127.5 - 1  # (F, 3, h, w)
    h, w = x.shape[-2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[..., top:top + height, left:left + width]
    return x.permute(1, 0, 2, 3).contiguous()
