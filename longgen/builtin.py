"""The builtin priors that make longgen run offline, and a fixed latent<->RGB map to look at them.

* :func:`image_prior` — landscapes over SD-shaped latents (4, 64, 64): one mixture component per
  scene (day, sunset, night, desert, snow), each a vertical colour profile with variation
  concentrated around the horizon and correlated along the width, stationary along the width so
  windows tile. Class-conditional: class c = scene c.
* :func:`video_prior` — the same scenes over (4, frames, H, W) with smooth change along time.
* :func:`fit_separable_gmm` — fits such a mixture to data (the motion prior uses it).
* :class:`LatentRGB` — rgb = A z + b per latent pixel, upsampled 8x bilinearly (receptive field
  one latent each side, so a halo of 1 makes chunked decoding exact).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .priors import SeparableGMM

# --------------------------------------------------------------------------- latent <-> RGB

_A = torch.tensor([[0.55, 0.25, 0.05, 0.10],
                   [0.20, 0.55, 0.20, -0.05],
                   [0.05, 0.20, 0.60, -0.10]], dtype=torch.float64)  # (3, 4)


class LatentRGB:
    """Fixed linear latent -> RGB map with 8x spatial upsampling (builtin stand-in for a VAE)."""

    scale = 8
    channels = 4

    def __init__(self):
        self.A = _A
        self.pinv = torch.linalg.pinv(_A)  # (4, 3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 4, [F,] h, w) latents -> (B, 3, [F,] 8h, 8w) RGB in about [-1, 1]."""
        video = z.ndim == 5
        if video:  # per frame
            B, C, Fr, h, w = z.shape
            z = z.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w)
        rgb = torch.einsum("rc,bchw->brhw", self.A.to(z), z)
        rgb = F.interpolate(rgb, scale_factor=self.scale, mode="bilinear", align_corners=False)
        if video:
            rgb = rgb.reshape(B, Fr, 3, h * 8, w * 8).permute(0, 2, 1, 3, 4)
        return rgb

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, [F,] H, W) RGB -> latents (least squares per 8x8 block mean)."""
        video = rgb.ndim == 5
        if video:
            B, C, Fr, H, W = rgb.shape
            rgb = rgb.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, H, W)
        low = F.avg_pool2d(rgb, self.scale)
        z = torch.einsum("cr,brhw->bchw", self.pinv.to(rgb), low)
        if video:
            z = z.reshape(B, Fr, 4, H // 8, W // 8).permute(0, 2, 1, 3, 4)
        return z


# --------------------------------------------------------------------------- kernels

def se_kernel(n: int, length: float, var: float = 1.0, jitter: float = 1e-3) -> torch.Tensor:
    """Squared-exponential (stationary) covariance over n positions."""
    i = torch.arange(n, dtype=torch.float64)
    d = i[:, None] - i[None, :]
    return var * torch.exp(-0.5 * (d / length) ** 2) + jitter * torch.eye(n, dtype=torch.float64)


SCENES = {  # top colour, horizon colour, ground colour (RGB in [0, 1]), horizon height (0 top .. 1)
    "day": ((0.30, 0.55, 0.95), (0.80, 0.88, 0.96), (0.22, 0.45, 0.18), 0.55),
    "sunset": ((0.22, 0.18, 0.48), (1.00, 0.55, 0.28), (0.18, 0.10, 0.14), 0.60),
    "night": ((0.02, 0.03, 0.12), (0.12, 0.16, 0.35), (0.04, 0.05, 0.07), 0.62),
    "desert": ((0.45, 0.68, 0.95), (0.96, 0.88, 0.72), (0.86, 0.64, 0.38), 0.50),
    "snow": ((0.55, 0.70, 0.90), (0.92, 0.94, 0.98), (0.88, 0.90, 0.95), 0.45),
}


def _profile(top, horizon, ground, h0, n: int) -> torch.Tensor:
    """(3, n) vertical RGB profile in [-1, 1]."""
    y = torch.linspace(0, 1, n, dtype=torch.float64)
    top, hor, gnd = (torch.tensor(c, dtype=torch.float64)[:, None] for c in (top, horizon, ground))
    sky = top + (hor - top) * (y / h0).clamp(0, 1) ** 1.5
    land = hor + (gnd - hor) * ((y - h0) / (1 - h0)).clamp(0, 1) ** 0.5
    rgb = torch.where(y[None] < h0, sky, land)
    return rgb * 2 - 1


def image_prior(height: int = 64, width: int = 64, *, scenes=tuple(SCENES), video_frames: int | None = None,
                class_conditional: bool = True, dtype=torch.float64) -> SeparableGMM:
    """Landscape prior over latents (4, H, W), or (4, F, H, W) when ``video_frames`` is given."""
    rgbmap = LatentRGB()
    means, hfac, cfac = [], [], []
    rows = torch.arange(height, dtype=torch.float64)
    for name in scenes:
        top, hor, gnd, h0 = SCENES[name]
        hor, gnd = (torch.tensor(c, dtype=torch.float64) for c in (hor, gnd))
        prof = _profile(top, hor.tolist(), gnd.tolist(), h0, height)                  # (3, H)
        zmean = rgbmap.pinv @ prof                                     # (4, H)
        means.append(zmean)
        # variation strongest around the horizon (hills, clouds), some everywhere
        amp = 0.4 + 1.6 * torch.exp(-0.5 * ((rows - h0 * height) / (0.10 * height)) ** 2)
        hfac.append(amp[:, None] * se_kernel(height, length=0.08 * height + 1) * amp[None, :])
        # colour variation mostly along the scene's own palette (light/dark), a little chroma
        tint = (hor - gnd).abs() + 0.3  # (3,): how much each channel varies in this scene
        lum = tint / tint.norm()
        rgb_cov = 0.04 * (0.85 * torch.outer(lum, lum) + 0.15 * torch.eye(3, dtype=torch.float64))
        cfac.append(rgbmap.pinv @ rgb_cov @ rgbmap.pinv.T + 0.01 * torch.eye(4, dtype=torch.float64))
    K = len(scenes)
    wfac = se_kernel(width, length=6.0)  # stationary along the long axis
    if video_frames is None:
        mean = torch.stack(means)[..., None].expand(K, 4, height, width)
        factors = [torch.stack(cfac), torch.stack(hfac), wfac]
    else:
        mean = torch.stack(means)[:, :, None, :, None].expand(K, 4, video_frames, height, width)
        factors = [torch.stack(cfac), se_kernel(video_frames, length=4.0), torch.stack(hfac), wfac]
    weights = None
    if class_conditional and K > 1:
        weights = torch.full((K, K), 0.1 / (K - 1), dtype=torch.float64)
        weights.fill_diagonal_(0.9)
    return SeparableGMM(mean.contiguous(), factors, weights, dtype=dtype)


def video_prior(frames: int = 16, height: int = 32, width: int = 32, **kw) -> SeparableGMM:
    """Landscape prior over video latents (4, F, H, W), smooth along time and stationary along it."""
    return image_prior(height, width, video_frames=frames, **kw)


# --------------------------------------------------------------------------- fitting

def _toeplitz_average(c: torch.Tensor) -> torch.Tensor:
    """Project a covariance onto stationary (Toeplitz) ones by averaging each diagonal."""
    n = c.shape[0]
    vals = torch.stack([torch.diagonal(c, k).mean() for k in range(n)])
    i = torch.arange(n)
    return vals[(i[:, None] - i[None, :]).abs()]


def fit_separable_gmm(data: torch.Tensor, k: int = 4, *, stationary_axes=(), iters: int = 4,
                      jitter: float = 1e-4, seed: int = 0, labels: torch.Tensor | None = None) -> SeparableGMM:
    """Fit a mixture of matrix/tensor-normal components to ``data`` (N, *shape).

    Components come from k-means on the flattened data (or the given ``labels``); each one's
    per-axis factors by the flip-flop maximum-likelihood iteration (Dutilleul 1999), with the
    axes in ``stationary_axes`` (indices into ``shape``) averaged to Toeplitz form so that a window
    looks alike wherever it sits on a long axis.
    """
    data = data.double()
    N, shape = data.shape[0], tuple(data.shape[1:])
    flat = data.reshape(N, -1)
    if labels is None:
        g = torch.Generator().manual_seed(seed)
        centres = flat[torch.randperm(N, generator=g)[:k]].clone()
        for _ in range(20):
            labels = torch.cdist(flat, centres).argmin(1)
            for j in range(k):
                if (labels == j).any():
                    centres[j] = flat[labels == j].mean(0)
    means, factors, counts = [], [[] for _ in shape], []
    for j in range(k):
        xs = data[labels == j]
        if xs.shape[0] < 2:
            continue
        mu = xs.mean(0)
        r = xs - mu
        facs = [torch.eye(n, dtype=torch.float64) for n in shape]
        for _ in range(iters):
            for a, n in enumerate(shape):
                # whiten the other axes, then average outer products along axis a
                w = r
                for b in range(len(shape)):
                    if b != a:
                        w = torch.movedim(torch.movedim(w, b + 1, -1) @ torch.linalg.inv(torch.linalg.cholesky(facs[b])).T, -1, b + 1)
                wa = torch.movedim(w, a + 1, -1).reshape(-1, n)
                c = wa.T @ wa / (wa.shape[0])
                if a in stationary_axes:
                    c = _toeplitz_average(c)
                facs[a] = c + jitter * torch.eye(n, dtype=torch.float64) * c.diagonal().mean()
        means.append(mu)
        for a in range(len(shape)):
            factors[a].append(facs[a])
        counts.append(xs.shape[0])
    w = torch.tensor(counts, dtype=torch.float64)
    return SeparableGMM(torch.stack(means), [torch.stack(f) for f in factors], w / w.sum())


def describe(prior: SeparableGMM) -> dict:
    return {"shape": list(prior.shape), "components": prior.K, "classes": prior.num_classes,
            "dims": math.prod(prior.shape)}
