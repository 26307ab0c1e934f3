"""The canvas along the long axis: where overlapping windows are merged and finished chunks leave.

A `Canvas` receives window latents in order of their start along one axis, merges overlaps in one
of three ways, and hands back finished chunks once the caller declares that no later window will
touch them. Only the unfinished tail `[done, written)` is kept in memory, so a 100-window video
costs the same memory as a 2-window one.

Merge modes:
- ``paste``: the earlier window wins; a later window only writes positions nothing has written
  yet. This is what the released ALM wide-image code gets by painting its patches onto the canvas
  from the last to the first (Hleephilip/ALM_public, alm/wide_image.py,
  `ALMWideImageGenerator.sample`, the final loop over `range(num_patches - 1, -1, -1)`).
- ``feather``: a linear cross-fade from the old content to the new window inside the overlap,
  over `feather` positions centred in the overlap (the whole overlap when `feather` is None).
  Each blend is a convex combination, so a constant field stays constant.
- ``average``: every window gets weight 1; value = sum / count, as MultiDiffusion's view
  averaging (diffusers `StableDiffusionPanoramaPipeline`, `value / count`).

Windows must arrive with non-decreasing starts and must not leave gaps (a window starts at or
before the written extent), so every position in `[done, written)` is defined.

Loops (`hold` > 0): the canvas is a circle, and the last window may run up to `hold` positions
past the end onto positions `[0, hold)`. Those positions are not handed out when they are
finished but kept aside (the head) until that window is in; `finish_head()` hands them out last.
The wrapping part merges by the same rule, with the roles mirrored: under ``paste`` the first
window keeps them, under ``feather`` the ramp falls from the new window (left, across the edge)
to the old content, under ``average`` it is one more term of the average.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("paste", "feather", "average")


def _along(vec: Tensor, axis: int) -> Tensor:
    """Shape a 1-D tensor so it broadcasts along negative `axis`: (n,) -> (n, 1, ..., 1)."""
    return vec.reshape((vec.shape[0],) + (1,) * (-axis - 1))


def _pad_along(x: Tensor, axis: int, extra: int) -> Tensor:
    """Append `extra` zeros to `x` along `axis`."""
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[axis] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=axis)


def _drop_front(x: Tensor, axis: int, k: int) -> Tensor:
    """Remove the first `k` positions along `axis`, copying so the old storage can be freed."""
    return x.narrow(axis, k, x.shape[axis] - k).clone()


def feather_ramp(overlap: int, feather: int | None, dtype: torch.dtype) -> Tensor:
    """Weight of the new window at each overlap position: 0 before the ramp, (k+1)/(r+1) on it, 1 after.

    The ramp has width r = min(feather, overlap) (the whole overlap when feather is None) and sits in
    the middle of the overlap. Old content gets weight 1 - a, so the two always sum to one.
    """
    r = overlap if feather is None else min(feather, overlap)
    lead = (overlap - r) // 2
    a = torch.ones(overlap, dtype=dtype)
    a[:lead] = 0
    a[lead : lead + r] = torch.arange(1, r + 1, dtype=dtype) / (r + 1)
    return a  # (overlap,)


class Canvas:
    """Merge window latents along one long axis and release finished chunks (see module doc)."""

    def __init__(self, length: int, axis: int, mode: str = "paste", feather: int | None = None,
                 hold: int = 0):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not isinstance(axis, int) or axis >= 0:
            raise ValueError(f"axis must be a negative int (an index from the end), got {axis!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if feather is not None and (mode != "feather" or not isinstance(feather, int) or feather < 0):
            raise ValueError(f"feather must be None or an int >= 0 and needs mode 'feather'; got feather={feather!r}, mode={mode!r}")
        if isinstance(hold, bool) or not isinstance(hold, int) or not 0 <= hold < length:
            raise ValueError(f"hold must be an int in [0, {length}), got {hold!r}")
        self.length = length
        self.hold = hold
        self._head: Tensor | None = None  # raw values of [0, hold) once finished (loops)
        self._head_count: Tensor | None = None
        self.head_done = False
        self.axis = axis
        self.mode = mode
        self.feather = feather
        self.done = 0  # positions < done have been handed out and dropped
        self.written = 0  # positions < written hold content
        self.last_start = 0
        # Buffers cover [done, written) along axis. paste/feather: resolved values;
        # average: running sum (in at least float32) and a per-position count.
        self._values: Tensor | None = None
        self._count: Tensor | None = None
        self._dtype: torch.dtype | None = None

    # ---------------------------------------------------------------- checks
    def _check_window(self, start: int, latent: Tensor) -> int:
        if not isinstance(latent, Tensor):
            raise ValueError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.ndim < -self.axis:
            raise ValueError(f"latent of shape {tuple(latent.shape)} has no axis {self.axis}")
        size = latent.shape[self.axis]
        if size < 1:
            raise ValueError(f"latent has length 0 along axis {self.axis}")
        if start < self.done:
            raise ValueError(f"start={start} lies in the finished region (done={self.done}); windows may only write at start >= done")
        if start < self.last_start:
            raise ValueError(f"start={start} is before the previous window's start {self.last_start}; starts must be non-decreasing")
        if start > self.written:
            raise ValueError(f"start={start} leaves a gap after the written extent {self.written}; windows must overlap or touch it")
        if start + size > self.length + self.hold:
            more = f" + the {self.hold} positions a loop wraps onto" if self.hold else ""
            raise ValueError(f"window [{start}, {start + size}) runs past the canvas length {self.length}{more}")
        if start + size > self.length and self.written < start + size - self.length:
            raise ValueError(f"window [{start}, {start + size}) wraps onto [0, {start + size - self.length}), "
                             f"which nothing has written yet")
        if self._values is not None:
            have = list(self._values.shape)
            got = list(latent.shape)
            have[self.axis] = got[self.axis] = -1
            if have != got:
                raise ValueError(f"latent shape {tuple(latent.shape)} does not match earlier windows {tuple(self._values.shape)} outside axis {self.axis}")
            if latent.dtype != self._dtype:
                raise ValueError(f"latent dtype {latent.dtype} differs from earlier windows' {self._dtype}")
        return size

    def _check_range(self, start: int, stop: int, what: str) -> None:
        if not (self.done <= start <= stop <= self.written):
            raise ValueError(f"{what} range [{start}, {stop}) is outside the unfinished written range [{self.done}, {self.written})")

    # ---------------------------------------------------------------- writing
    def add(self, start: int, latent: Tensor) -> None:
        """Merge one window whose first position along `axis` is `start`."""
        full = self._check_window(start, latent)
        size = min(full, self.length - start)  # the part beyond the end wraps onto [0, hold)
        wrapped = latent.narrow(self.axis, size, full - size) if full > size else None
        latent = latent.narrow(self.axis, 0, size)
        end = start + size
        ax = self.axis
        if self._values is None:
            self._dtype = latent.dtype
            acc = torch.promote_types(latent.dtype, torch.float32) if self.mode == "average" else latent.dtype
            shape = list(latent.shape)
            shape[ax] = 0
            self._values = latent.new_zeros(shape, dtype=acc)
            self._count = torch.zeros(0, dtype=torch.int64, device=latent.device)
        grow = max(0, end - self.written)
        self._values = _pad_along(self._values, ax, grow)
        lo = start - self.done  # window start inside the buffer
        if self.mode == "average":
            self._count = torch.cat([self._count, self._count.new_zeros(grow)])
            self._values.narrow(ax, lo, size).add_(latent.to(self._values.dtype))
            self._count[lo : lo + size] += 1
        else:
            overlap = max(0, min(self.written, end) - start)
            if self.mode == "feather" and overlap > 0:
                a = _along(feather_ramp(overlap, self.feather, latent.dtype).to(latent.device), ax)
                old = self._values.narrow(ax, lo, overlap)
                # lerp is exact at a = 0 and a = 1 and keeps a constant field constant
                old.copy_(torch.lerp(old, latent.narrow(ax, 0, overlap), a))
            if grow:  # paste and feather: fresh positions take the new window as it is
                self._values.narrow(ax, lo + overlap, grow).copy_(latent.narrow(ax, overlap, grow))
        self.written = max(self.written, end)
        self.last_start = start
        if wrapped is not None:
            self._merge_wrap(wrapped)

    def _merge_wrap(self, part: Tensor) -> None:
        """Merge a loop's wrapping part into positions [0, n): those already finished sit in the
        head, the rest (when the whole loop is one group) still in the live buffer."""
        ax, n = self.axis, part.shape[self.axis]
        a = None
        if self.mode == "feather":  # the new window comes from the left: its weight falls
            a = _along(feather_ramp(n, self.feather, part.dtype).flip(0).to(part.device), ax)
        in_head = min(self.done, n)
        segments = []  # (buffer, counts, first buffer index, first part index, length)
        if in_head:
            segments.append((self._head, self._head_count, 0, 0, in_head))
        if n > in_head:  # then in_head == done: position p sits at buffer index p - done
            segments.append((self._values, self._count, 0, in_head, n - in_head))
        for buf, cnt, b0, p0, k in segments:
            old, new = buf.narrow(ax, b0, k), part.narrow(ax, p0, k)
            if self.mode == "average":
                old.add_(new.to(old.dtype))
                cnt[b0:b0 + k] += 1
            elif self.mode == "feather":
                old.copy_(torch.lerp(old, new, a.narrow(ax, p0, k)))
            # paste: the first window keeps its positions

    # ---------------------------------------------------------------- reading
    def _resolved(self, lo: int, n: int) -> Tensor:
        vals = self._values.narrow(self.axis, lo, n)
        if self.mode == "average":
            count = _along(self._count[lo : lo + n].to(vals.dtype), self.axis)
            return (vals / count).to(self._dtype)
        return vals.clone()

    def read(self, start: int, stop: int) -> Tensor:
        """Current merged values of `[start, stop)`, which must be written and not yet finished."""
        self._check_range(start, stop, "read")
        if self._values is None:
            raise ValueError("read from an empty canvas")
        return self._resolved(start - self.done, stop - start)

    def finish(self, upto: int | None = None) -> Tensor | None:
        """Hand out `[done, upto)` (default: all written) and drop it from memory; None if empty.
        Loops: positions below `hold` go to the head instead; the chunk is `[max(done, hold), upto)`."""
        upto = self.written if upto is None else upto
        if not isinstance(upto, int):
            raise ValueError(f"upto must be an int, got {upto!r}")
        self._check_range(self.done, upto, "finish")
        n = upto - self.done
        if n == 0:
            return None
        keep = max(0, min(upto, self.hold) - self.done)  # loops: positions the last window wraps onto
        if keep:
            vals, cnt = self._values.narrow(self.axis, 0, keep).clone(), self._count[:keep].clone()
            self._head = vals if self._head is None else torch.cat([self._head, vals], dim=self.axis)
            self._head_count = cnt if self._head_count is None else torch.cat([self._head_count, cnt])
        chunk = self._resolved(keep, n - keep) if n > keep else None
        self._values = _drop_front(self._values, self.axis, n)
        self._count = self._count[n:].clone()
        self.done = upto
        return chunk

    def finish_head(self) -> Tensor | None:
        """Loops: hand out the held positions `[0, hold)` once everything else is out (None if
        there is no head)."""
        if self.hold == 0 or self.head_done:
            return None
        if self.done != self.length:
            raise ValueError(f"finish_head before the canvas is finished ({self.done} of {self.length})")
        vals = self._head
        if self.mode == "average":
            vals = (vals / _along(self._head_count.to(vals.dtype), self.axis)).to(self._dtype)
        self._head = self._head_count = None
        self.head_done = True
        return vals

    @property
    def buffered(self) -> int:
        """How many positions are held in memory (written - done)."""
        return 0 if self._values is None else self._values.shape[self.axis]

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """Tensors and plain scalars only (feather None is stored as -1), for a resume manifest."""
        d = {
            "length": self.length,
            "axis": self.axis,
            "mode": self.mode,
            "feather": -1 if self.feather is None else self.feather,
            "done": self.done,
            "written": self.written,
            "last_start": self.last_start,
            "hold": self.hold,
            "head_done": int(self.head_done),
        }
        if self._head is not None:
            d["head"] = self._head.clone()
            d["head_count"] = self._head_count.clone()
        if self._values is not None:
            d["values"] = self._values.clone()
            d["count"] = self._count.clone()
            d["dtype"] = str(self._dtype).removeprefix("torch.")
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> "Canvas":
        feather = int(d["feather"])
        canvas = cls(int(d["length"]), int(d["axis"]), str(d["mode"]), None if feather < 0 else feather,
                     int(d.get("hold", 0)))
        canvas.done, canvas.written, canvas.last_start = int(d["done"]), int(d["written"]), int(d["last_start"])
        canvas.head_done = bool(int(d.get("head_done", 0)))
        if "head" in d:
            canvas._head, canvas._head_count = d["head"].clone(), d["head_count"].clone()
        if "values" in d:
            dtype = getattr(torch, str(d["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {d['dtype']!r} in canvas state")
            canvas._values = d["values"].clone()
            canvas._count = d["count"].clone()
            canvas._dtype = dtype
            if canvas._values.shape[canvas.axis] != canvas.written - canvas.done:
                raise ValueError(f"canvas state holds {canvas._values.shape[canvas.axis]} positions, expected written - done = {canvas.written - canvas.done}")
        return canvas
