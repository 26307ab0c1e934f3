"""The builtin priors that make longgen run offline, and a fixed latent<->RGB map to look at them.

* :func:`image_prior` — landscapes over SD-shaped latents (4, 64, 64): one mixture component per
  scene (day, sunset, night, desert, snow), each a vertical colour profile with variation
  concentrated around the horizon and correlated along the width, stationary along the width so
  windows tile. Class-conditional: class c = scene c.
* :func:`video_prior` — the same scenes over (4, frames, H, W) with smooth change along time.
* :func:`fit_separable_gmm` — fits such a mixture to data (the motion prior uses it).
* :class:`LatentRGB` — rgb = A z per latent pixel, upsampled 8x bilinearly (receptive field
  one latent each side, so a halo of 1 makes chunked decoding exact).
* :class:`LandscapeRGB` — the builtin demos' decoder: the same latents drawn as a landscape (sky,
  four mountain ridgelines receding into haze), so a seam shows as a broken ridge; a video pans
  across it with parallax. Decoding is the only thing it changes: the priors and their scores
  are the same, and its receptive field is the same one latent each side.
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


class LandscapeRGB:
    """Latents (B, 4, [F,] h, w) -> a landscape (B, 3, [F,] 8h, 8w) in about [-1, 1].

    What each part of the picture reads from the latent:

    * sky and colours: ``LatentRGB``'s colours, half desaturated, bilinearly upsampled (the sky is
      the image above the ridges);
    * four ridgelines, far to near: ridge j's height along the width is a smooth, slightly peaked
      function of the latent's component that ``LatentRGB`` does not show (the null direction of
      its 3 x 4 map; zero-mean in every scene of :func:`image_prior`), averaged over three rows at
      a fixed fraction of the height, so ridges follow the sampled field and break where it does;
    * atmospheric perspective: ridge j's colour is the ground colour under the window's lower
      rows mixed with the horizon's colour, far ridges mostly horizon (haze), near ones darker,
      each darkening downwards.

    Every output column depends on the latent columns within one of its own (the linear
    interpolation of align_corners=False), as for ``LatentRGB``: a streamed decode with a halo of
    1 equals the whole decode. Video frames (``first`` = the index of the first frame given) pan
    the ridges left by ``SPEED`` pixels per frame, near ones faster (parallax), reflected at the
    frame's edges.
    """

    scale = 8
    channels = 4
    BASE = (0.50, 0.585, 0.675, 0.79)      # ridge j's mean height (fraction of the image, from the top)
    AMP = (0.075, 0.085, 0.095, 0.105)     # its amplitude (fraction of the image height)
    ROWS = (0.46, 0.56, 0.66, 0.76)        # the latent rows it reads (fraction of the height)
    HAZE = (0.70, 0.50, 0.28, 0.08)        # weight of the horizon colour in its colour
    SHADE = (0.97, 0.86, 0.74, 0.60)       # brightness of its ground colour
    SPEED = (0.25, 0.5, 1.0, 1.75)         # video: pixels per frame it pans by
    NULL_STD = 0.12                        # typical std of the null component near the ridges' rows

    def __init__(self):
        self.null = torch.linalg.svd(_A).Vh[-1]  # (4,): A @ null = 0

    @staticmethod
    def _columns(sig: torch.Tensor, n_out: int, shift: float = 0.0) -> torch.Tensor:
        """(B, C, w) per latent column -> (B, C, n_out) per pixel column, linear as
        ``F.interpolate(..., align_corners=False)``; ``shift`` pixels to the right, reflected."""
        w = sig.shape[-1]
        if w == 1:
            return sig.expand(*sig.shape[:-1], n_out)
        u = (torch.arange(n_out, dtype=sig.dtype, device=sig.device) + 0.5 + shift) * (w / n_out) - 0.5
        if shift:
            period = 2 * (w - 1)
            u = torch.remainder(u, period)
            u = torch.where(u > w - 1, period - u, u)
        u = u.clamp(0, w - 1)
        i0 = u.floor().long().clamp(max=w - 2)
        t = u - i0
        return sig[..., i0] * (1 - t) + sig[..., i0 + 1] * t

    def frame(self, z: torch.Tensor, index: int = 0) -> torch.Tensor:
        """One image (B, 4, h, w) -> (B, 3, 8h, 8w); ``index`` = its frame number (parallax)."""
        h, w = z.shape[-2:]
        H, W = h * self.scale, w * self.scale
        c = torch.einsum("rc,bchw->brhw", _A.to(z), z)
        lum = lambda x: 0.3 * x[:, :1] + 0.59 * x[:, 1:2] + 0.11 * x[:, 2:]  # noqa: E731
        c = 0.5 * c + 0.5 * lum(c)
        out = F.interpolate(c, scale_factor=self.scale, mode="bilinear", align_corners=False)

        def band(a: float, b: float) -> torch.Tensor:  # mean colour of rows [a h, b h): (B, 3, w)
            r0 = min(int(a * h), h - 1)
            return c[:, :, r0:max(r0 + 1, int(b * h))].mean(2)

        horizon, ground = band(0.50, 0.62), band(0.80, 1.0)
        null = torch.einsum("c,bchw->bhw", self.null.to(z), z)
        y = torch.arange(H, dtype=z.dtype, device=z.device)[None, :, None]   # (1, H, 1)
        for j in range(len(self.BASE)):
            r = min(int(self.ROWS[j] * h), h - 1)
            sig = null[:, max(0, r - 1):r + 2].mean(1)[:, None] / self.NULL_STD     # (B, 1, w)
            shift = self.SPEED[j] * index
            s = self._columns(sig, W, shift)[:, 0]                                 # (B, W)
            ridge = (self.BASE[j] - self.AMP[j] * (0.3 + s - 0.45 * (s * s + 0.08).sqrt())) * H
            cover = (y - ridge[:, None] + 0.5).clamp(0, 1)                          # (B, H, W), antialiased
            hz = self._columns(horizon, W, shift)
            gd = self._columns(ground, W, shift)
            hz, gd = 0.6 * hz + 0.4 * lum(hz), 0.55 * gd + 0.45 * lum(gd)
            col = ((1 - self.HAZE[j]) * self.SHADE[j] * gd + self.HAZE[j] * hz)[:, :, None]  # (B, 3, 1, W)
            depth = ((y - ridge[:, None]) / (0.25 * H)).clamp(0, 1)[:, None]         # (B, 1, H, W)
            col = col * (1 - 0.3 * depth) - 0.25 * (1 - self.HAZE[j]) * depth
            out = out + (col - out) * cover[:, None]
        return out

    def decode(self, z: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 3, 8h, 8w); (B, 4, F, h, w) frames ``first``.. -> (B, 3, F, 8h, 8w)."""
        if z.ndim == 5:
            return torch.stack([self.frame(z[:, :, k], first + k) for k in range(z.shape[2])], dim=2)
        return self.frame(z, first)


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
