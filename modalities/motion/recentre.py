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

A window that misses its keyframes (the builtin prior's walks bend only so far) would hand
that miss on through the overlap, and every later window would start further off: on the
builtin prior, keyframes every 10, the miss per 100 frames of a 600-frame motion grew
0.43, 2.3, 4.7, 8.3, 13.6, 16.4 m (50 steps, seed 0). So before a window is fitted,
:meth:`RecentreWindows.realign` moves the finished previous window rigidly (least-squares turn
and shift of its root onto the keyframes given inside the overlap) for what it hands on; the
canvas keeps it as finished, and the feathered blend carries the output from one to the other
across the overlap. With it the same run's miss stays at 0.4-1.8 m per 100 frames.

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

    def __init__(self, norm, canonical_facing: bool = True, realign_overlap: bool = True):
        self.realign_overlap = realign_overlap
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

    def realign(self, prev_x0: torch.Tensor, prev_params: torch.Tensor, d: int, n: int,
                x0: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Parameters for the finished previous window that move it rigidly (a turn about y and a
        shift in x, z) onto the keyframes the next window is given inside their overlap: the
        least-squares 2-D fit of its root at those frames to the keyframes' root. Without it a
        window that missed its keyframes hands the miss on, and long motions drift further with
        every window. Fewer than two keyframes: a shift only (one) or nothing (none)."""
        if not self.realign_overlap:
            return prev_params
        ok = (known[..., 1:3, :n] > 0.5).all(-2).reshape(-1, n).all(0)
        frames = ok.nonzero().flatten()
        if frames.numel() == 0:
            return prev_params
        prev = self.from_window(prev_x0, prev_params)[..., 1:3, d:d + n]
        P = (prev[..., frames].double().reshape(2, -1).T * self.std[1:3] + self.mean[1:3])   # (k, 2)
        Q = (x0[..., 1:3, frames].double().reshape(2, -1).T * self.std[1:3] + self.mean[1:3])
        pc, qc = P.mean(0), Q.mean(0)
        beta = 0.0
        if frames.numel() >= 2:
            A, B = P - pc, Q - qc
            # rotation R(beta)^T (x, z) = (c x - s z, s x + c z) that best maps A onto B
            beta = float(torch.atan2((A[:, 0] * B[:, 1] - A[:, 1] * B[:, 0]).sum(),
                                     (A * B).sum(1).sum()))
        c, s = np.cos(beta), np.sin(beta)
        rot = lambda v: torch.stack([c * v[0] - s * v[1], s * v[0] + c * v[1]])  # noqa: E731
        shift = qc - rot(pc)
        p = prev_params.double().clone()
        o = rot(p[1:3]) + shift
        return torch.stack([p[0] + beta / 2, o[0], o[1]])

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
