"""Seam metrics: how much larger the step across a window boundary is than a step inside a window.

`seam_score` compares the mean squared finite difference between positions b-1 and b at each
boundary b with the mean squared finite difference over every other adjacent pair along the same
axis. For a stationary field the expected squared step is the same everywhere, so the score is ~1
when the stitching leaves no trace and grows with seam visibility. The ratio is our own
reference-free measure; it needs no learned evaluator (the peers' coherence metrics, e.g.
SyncDiffusion's Intra-LPIPS, need a network).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def _pair_energy(x: Tensor, axis: int) -> Tensor:
    """Mean over all other dims of the squared step between neighbours along axis: (n-1,)."""
    d = torch.diff(x.to(torch.float64), dim=axis) ** 2
    d = d.movedim(axis, 0)  # (n-1, ...)
    return d.reshape(d.shape[0], -1).mean(dim=1)


def seam_score(x: Tensor, boundaries: Sequence[int], axis: int) -> float:
    """Mean squared step across `boundaries` / mean squared step over all other adjacent pairs.

    A boundary b marks the pair (b-1, b) along `axis`; 0 < b < n. Other dims (batch, channels,
    the short image axis) are averaged over. 0/0 (a constant field) gives 1.0, x/0 gives inf.
    """
    if not isinstance(x, Tensor) or x.ndim == 0:
        raise ValueError(f"x must be a tensor with at least one dim, got {getattr(x, 'shape', type(x))}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    n = x.shape[axis]
    bounds = sorted({int(b) for b in boundaries})
    if not bounds:
        raise ValueError("boundaries is empty; give at least one position b with 0 < b < n")
    bad = [b for b in bounds if not 0 < b < n]
    if bad:
        raise ValueError(f"boundaries {bad} are outside (0, {n}) along axis {axis}")
    if len(bounds) >= n - 1:
        raise ValueError(f"every adjacent pair of the {n} positions is a boundary; no interior pairs to compare with")
    energy = _pair_energy(x, axis)  # (n-1,), pair i = (i, i+1)
    at_seam = torch.zeros(n - 1, dtype=torch.bool)
    at_seam[[b - 1 for b in bounds]] = True
    seam, inside = energy[at_seam].mean().item(), energy[~at_seam].mean().item()
    if inside == 0.0:
        return 1.0 if seam == 0.0 else math.inf
    return seam / inside


def temporal_seam_score(frames: Tensor, boundaries: Sequence[int], frame_axis: int = 0) -> float:
    """`seam_score` along time: frame-to-frame change across window boundaries vs inside windows."""
    return seam_score(frames, boundaries, frame_axis)


def window_boundaries(starts: Sequence[int], sizes: Sequence[int], scale: int = 1) -> list[int]:
    """Positions (times `scale`) where a later window's content begins, for paste merging.

    Under paste the earlier window wins, so window i shows from max(start_i, end of windows < i)
    onward; that position is a boundary when window i adds anything new. Windows that add nothing
    (contained in earlier ones) give no boundary.
    """
    starts, sizes = [int(s) for s in starts], [int(s) for s in sizes]
    if len(starts) != len(sizes):
        raise ValueError(f"starts ({len(starts)}) and sizes ({len(sizes)}) must have the same length")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    if any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 1, got {sizes}")
    if any(b < a for a, b in zip(starts, starts[1:])) or (starts and starts[0] < 0):
        raise ValueError(f"starts must be >= 0 and non-decreasing, got {starts}")
    out: list[int] = []
    reach = None  # end of everything painted so far
    for start, size in zip(starts, sizes):
        end = start + size
        if reach is not None and end > reach:
            out.append(max(start, reach) * scale)
        reach = end if reach is None else max(reach, end)
    return out
