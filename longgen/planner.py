"""The planner: windows along one long axis, and keyframe masks for motion.

Windows have the model's native size and start every ``stride`` positions (latent units). When
the length is not ``window + k * stride``, the last window is aligned to the END (start =
length - window): it overlaps its neighbour by more than ``window - stride``, nothing is cut and
nothing left unsampled. A window observes the positions an earlier window already covered and
generates the rest (released wide-image code: mask = 1 on the last ``stride`` latent columns).

Defaults (released ALM code and paper): image 64-latent windows at a 48-latent stride (5 windows for
2048 px); video 16-frame windows at an 8-frame stride (12 windows for 104 frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

KEYFRAME_MODES = ("every", "first_half", "last_half", "middle_half", "frames")


@dataclass(frozen=True)
class Window:
    index: int
    start: int          # first position on the long axis
    size: int
    new_from: int       # local position from which nothing earlier covers this window

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass
class Plan:
    length: int
    window: int
    stride: int
    windows: list[Window] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.windows)

    def finished_upto(self, k: int) -> int:
        """Positions < this are final once windows 0..k are on the canvas (the next one's start)."""
        return self.windows[k + 1].start if k + 1 < len(self.windows) else self.length

    def to_dict(self) -> dict:
        return {"length": self.length, "window": self.window, "stride": self.stride,
                "windows": [asdict(w) for w in self.windows]}


def plan_windows(length: int, window: int, stride: int) -> Plan:
    """Windows of ``window`` positions every ``stride``, the last one aligned to the end."""
    for name, v in (("length", length), ("window", window), ("stride", stride)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if stride >= window:
        raise ValueError(f"stride ({stride}) must be smaller than the window ({window}) so that "
                         "windows overlap")
    if length < window:
        raise ValueError(f"length {length} is shorter than one window ({window}); allowed: length >= {window}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)  # last window aligned to the end
    windows, covered = [], 0
    for i, s in enumerate(starts):
        windows.append(Window(index=i, start=s, size=window, new_from=max(0, covered - s)))
        covered = s + window
    return Plan(length=length, window=window, stride=stride, windows=windows)


def keyframe_frames(mode: str, length: int, *, every: int | None = None,
                    frames: Sequence[int] | None = None) -> list[int]:
    """Observed frame indices for a motion of ``length`` frames.

    As the released code defines them (ALM's _condmdi/utils/editing_util.py): ``first_half``
    observes L//2..end (the first half is generated), ``last_half`` observes 0..L//2-1,
    ``middle_half`` observes 0..L//4-1 and 3L//4..end; ``every`` observes range(L)[::N]
    (CondMDI's benchmark_sparse); ``frames`` is an explicit list.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"motion length must be a positive integer, got {length!r}")
    L = length
    if mode == "every":
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"keyframe interval must be a positive integer, got {every!r}")
        return list(range(0, L, every))
    if mode == "first_half":
        return list(range(L // 2, L))
    if mode == "last_half":
        return list(range(0, L // 2))
    if mode == "middle_half":
        return list(range(0, L // 4)) + list(range(3 * L // 4, L))
    if mode == "frames":
        if frames is None or len(frames) == 0:
            raise ValueError("mode 'frames' needs a non-empty list of frames")
        bad = [f for f in frames if not (isinstance(f, int) and 0 <= f < L)]
        if bad:
            raise ValueError(f"keyframes {bad} are outside the motion; allowed: 0..{L - 1}")
        return sorted(set(frames))
    raise ValueError(f"unknown keyframe mode {mode!r}; allowed: {', '.join(KEYFRAME_MODES)}")
