"""Re-centring motion windows (``Engine(window_transform=...)``): each window along time is moved
so that its own first frame sits at the origin, facing +Z, before the model sees it, and moved
back afterwards. Long motions otherwise reach windows whose absolute root (abs_3d features 0:3:
accumulated half-angle heading, root x, z) lies metres and radians away from anything the model
was trained on: HumanML3D's ``process_file`` puts every clip's frame 0 at the origin facing +Z
(/work/shared/facts/motion.md), and GMD advises re-centring each window for long sequences.

Only features 0:3 depend on where the body is and which way it faces; the rest (root height,
ric, rotations, velocities, contacts) live in the body's facing frame. With the anchor's
half-angle a0 and root (x0, z0), the map is a_t -> a_t - a0 and
root -> R_y(2 a0) (root - (x0, z0)), in the convention of :func:`.features.recover_from_ric_abs`
(joints = R_y(-2 a_t) ric + root): the whole body turns by 2 a0 about the anchor. Exact inverse.

The anchor turns the CANONICAL facing of the anchor frame to +Z, as ``process_file`` turns a
clip's frame 0 (across = (r_hip - l_hip) + (r_sdr - l_sdr), read from the frame's ric features),
not the per-frame root heading that feature 0 accumulates: those two differ by a per-clip angle
(the per-frame rotation reads the hips the other way round and is smoothed), which the dataset
keeps from frame 1 on, so a window turned by its root heading would walk off at that angle to
what the model expects. So a0 = a_f - phi_f / 2, phi_f the canonical facing's yaw in the frame's
facing frame (0 when those joints are not known there).

It acts on normalised features (263, W) and on noisy latents ``signal * x0 + noise``: offsets
are scaled by ``signal``; the x, z rotation is orthogonal when the two features share their std
(HumanML3D averages the std within the x, z group; otherwise the noise is mildly anisotropic).
"""

from __future__ import annotations

import torch

import numpy as np

from .features import N_FEATURES, RIC, _facing, _heading
from .skeleton import FACE_JOINTS

ANCHOR = (0, 1, 2)  # heading half-angle, root x, root z (abs_3d)


class RecentreWindows:
    """The motion :class:`longgen.engine.WindowTransform` for normalised abs_3d features
    ``(263, frames)`` (feature axis first, time last; leading batch dims allowed)."""

    def __init__(self, norm, canonical_facing: bool = True):
        self.mean_all, self.std_all = norm.mean.double(), norm.std.double()
        self.mean, self.std = self.mean_all[:3], self.std_all[:3]
        self.canonical_facing = canonical_facing
        self._face_rows = [RIC.start + 3 * (j - 1) + c for j in FACE_JOINTS for c in range(3)]

    def facing_offset(self, x0: torch.Tensor, known: torch.Tensor, f: int) -> float:
        """phi_f: yaw of frame f's canonical facing in its own facing frame (ric), or 0."""
        if not self.canonical_facing or not bool((known[..., self._face_rows, f] > 0.5).all()):
            return 0.0
        ric = x0[..., RIC, f].double().reshape(-1) * self.std_all[RIC] + self.mean_all[RIC]
        joints = np.zeros((1, 22, 3))
        joints[0, 1:] = ric.reshape(21, 3).numpy()
        return float(_heading(_facing(joints))[0])

    def fit(self, window, x0: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(a0, x0, z0), raw units, at the window's first frame f where heading and root x, z are
        all known (its start once the previous window is final): a0 = a_f - phi_f / 2, (x0, z0)
        the root there; zeros (no move) when no frame is."""
        if x0.shape[-2] != N_FEATURES:
            raise ValueError(f"re-centring needs ({N_FEATURES}, frames) features, got shape {tuple(x0.shape)}")
        ok = (known[..., :3, :] > 0.5).all(-2)
        idx = ok.nonzero()
        if idx.numel() == 0:
            return torch.zeros(3, dtype=torch.float64)
        f = int(idx[0, -1])
        p = (x0[..., :3, f].double() * self.std + self.mean).reshape(3)
        p[0] -= 0.5 * self.facing_offset(x0, known, f)
        return p

    def _parts(self, x, params, signal):
        s = float(signal)
        m, sd = self.mean.to(x.dtype), self.std.to(x.dtype)
        p = params.to(device=x.device, dtype=torch.float64)
        raw = [x[..., k, :] * sd[k] + s * m[k] for k in range(3)]   # signal * raw + std * noise
        th = 2.0 * p[0]
        return s, m, sd, p, raw, float(torch.cos(th)), float(torch.sin(th))

    def _out(self, x, raw, s, m, sd):
        out = x.clone()
        for k in range(3):
            out[..., k, :] = (raw[k] - s * m[k]) / sd[k]
        return out

    def to_window(self, x: torch.Tensor, params: torch.Tensor, signal: float = 1.0) -> torch.Tensor:
        s, m, sd, p, (a, X, Z), c, sn = self._parts(x, params, signal)
        dX, dZ = X - s * float(p[1]), Z - s * float(p[2])
        return self._out(x, [a - s * float(p[0]), c * dX + sn * dZ, -sn * dX + c * dZ], s, m, sd)

    def from_window(self, x: torch.Tensor, params: torch.Tensor, signal: float = 1.0) -> torch.Tensor:
        s, m, sd, p, (a, X, Z), c, sn = self._parts(x, params, signal)
        dX, dZ = c * X - sn * Z, sn * X + c * Z
        return self._out(x, [a + s * float(p[0]), dX + s * float(p[1]), dZ + s * float(p[2])], s, m, sd)
