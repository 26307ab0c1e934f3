"""The Python API of every modality (diffusers habits): ``latents=`` and ``output_type``.

``longgen.modalities.image.panorama`` / ``inpaint``, ``longgen.modalities.video.video``,
``longgen.modalities.motion.motion`` on the builtin priors (and the tiny SD for images):
* ``output_type="latent"`` is the final latent; the ``"pil"`` / ``"np"`` outputs of the same call
  are that latent decoded;
* ``latents=`` replaces the engine's seeded initial noise exactly: passing the noise the seed
  would have drawn gives the seeded result bit for bit; with DDIM (images, video) the same
  latents give the same output whatever the seed (DDPM motion still draws its step noise from
  the seed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longgen.engine import NoiseField
from longgen.modalities.image import inpaint, panorama
from longgen.modalities.image.writers import to_uint8
from longgen.modalities.motion import motion
from longgen.modalities.video import video
from tests.fixtures.tiny_sd import tiny_sd_path  # noqa: F401  (pytest fixture)


def _seeded(seed: int, shape: tuple, length: int) -> torch.Tensor:
    """The initial noise the engine draws for ``seed``: window ``shape``, long axis last-but-k."""
    return NoiseField(seed, shape, -1, torch.float32, "cpu")(0, length)


def _np_of(img: torch.Tensor) -> np.ndarray:
    return ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- image, builtin


def test_builtin_panorama_output_types_and_latents():
    from longgen.builtin import LandscapeRGB

    kw = dict(prompt="sunset", width=256, height=64, steps=3, window=128)
    z = panorama("builtin", output_type="latent", seed=5, **kw)
    assert z.shape == (4, 8, 32)
    # the seeded run == the run given the noise that seed draws (window shape (4, 8, 16))
    noise = NoiseField(5, (4, 8, 16), -1, torch.float32, "cpu")(0, 32)
    assert torch.equal(panorama("builtin", latents=noise, output_type="latent", seed=99, **kw), z)
    arr = panorama("builtin", latents=noise, output_type="np", **kw)
    pil = panorama("builtin", latents=noise, **kw)
    whole = LandscapeRGB().decode(z[None])[0]    # streamed decode (halo 1) of a local map
    assert arr.shape == (64, 256, 3) and arr.dtype == np.float32
    assert np.abs(arr - _np_of(whole)).max() < 1e-5
    assert np.array_equal(np.asarray(pil), to_uint8(torch.from_numpy(arr).permute(2, 0, 1) * 2 - 1))
    other = panorama("builtin", latents=torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(1)),
                     output_type="latent", **kw)
    assert not torch.equal(other, z)


def _small_image(H=64, W=96):
    yy, xx = np.mgrid[0:H, 0:W]
    src = np.stack([(xx * 3) % 256, (yy * 2) % 256, ((xx + yy) * 4) % 256], -1).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[16:40, 24:70] = 255
    return Image.fromarray(src), Image.fromarray(mask)


def test_builtin_inpaint_output_types_latents_and_blend():
    from longgen.builtin import LatentRGB

    img, msk = _small_image()
    kw = dict(prompt="day", steps=3)
    z = inpaint("builtin", img, msk, output_type="latent", seed=2, **kw)
    assert z.shape == (4, 8, 12)
    noise = _seeded(2, (4, 8, 12), 12)
    assert torch.equal(inpaint("builtin", img, msk, latents=noise, output_type="latent", **kw), z)
    raw, blended = inpaint("builtin", img, msk, latents=noise, return_blended=True, **kw)
    arr = inpaint("builtin", img, msk, latents=noise, output_type="np", **kw)
    dec = LatentRGB().decode(z[None])[0]
    assert np.abs(arr - _np_of(dec)).max() < 1e-6
    # streamed (halo 1) against one whole decode: float rounding can move a pixel by one level
    assert np.abs(np.asarray(raw).astype(int) - to_uint8(dec).astype(int)).max() <= 1
    src, m = np.asarray(img), np.asarray(msk) == 255
    b = np.asarray(blended)
    assert np.array_equal(b[m], np.asarray(raw)[m])           # the hole: generated
    assert np.array_equal(b[:4, :4], src[:4, :4])             # far from the hole: the source
    with pytest.raises(ValueError, match="latents has shape"):
        inpaint("builtin", img, msk, latents=torch.zeros(4, 8, 11), **kw)


# --------------------------------------------------------------------------- image, tiny SD


def test_sd_panorama_and_inpaint_latents_round_trip(tiny_sd_path):  # noqa: F811
    from longgen.modalities.image.sd import load_sd

    sd = load_sd(tiny_sd_path)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 16, 24, generator=g)
    kw = dict(steps=2, window=128, stride=64, halo=24)      # halo = the width: one whole decode
    z = panorama(sd, "a photo of a cat", 192, 128, latents=noise, output_type="latent", **kw)
    assert z.shape == (4, 16, 24)
    assert torch.equal(panorama(str(tiny_sd_path), "a photo of a cat", 192, 128, latents=noise,
                                output_type="latent", seed=7, **kw), z)
    arr = panorama(sd, "a photo of a cat", 192, 128, latents=noise, output_type="np", **kw)
    assert np.array_equal(arr, _np_of(sd.vae_decode(z[None])[0]))
    seeded = panorama(sd, "a photo of a cat", 192, 128, seed=3, output_type="latent", **kw)
    assert torch.equal(panorama(sd, "a photo of a cat", 192, 128, output_type="latent",
                                latents=NoiseField(3, (4, 16, 16), -1, torch.float32, "cpu")(0, 24),
                                **kw), seeded)

    img, msk = _small_image()
    noise = torch.randn(4, 8, 12, generator=g)
    zi = inpaint(sd, img, msk, "a photo of a cat", steps=2, latents=noise, output_type="latent")
    pil = inpaint(sd, img, msk, "a photo of a cat", steps=2, latents=noise)
    assert np.array_equal(np.asarray(pil), to_uint8(sd.vae_decode(zi[None])[0]))
    with pytest.raises(ValueError, match="output_type"):
        inpaint(sd, img, msk, steps=1, output_type="jpg")


# --------------------------------------------------------------------------- video, motion


def test_builtin_video_output_types_and_latents():
    from longgen.builtin import LandscapeRGB

    kw = dict(frames=24, steps=2, height=64, width=64)
    z = video("builtin", output_type="latent", seed=4, **kw)
    assert z.shape == (4, 24, 8, 8)                          # (C, F, h, w)
    noise = NoiseField(4, (4, 16, 8, 8), -3, torch.float32, "cpu")(0, 24)
    assert torch.equal(video("builtin", latents=noise, output_type="latent", seed=0, **kw), z)
    arr = video("builtin", latents=noise, output_type="np", **kw)
    frames = video("builtin", latents=noise, **kw)
    dec = LandscapeRGB().decode(z[None], 0)[0]               # (3, F, H, W), frames 0..23
    assert arr.shape == (24, 64, 64, 3)
    assert np.abs(arr - ((dec.clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).numpy()).max() < 1e-6
    assert len(frames) == 24 and frames[0].size == (64, 64)
    assert np.array_equal(np.asarray(frames[7]), to_uint8(dec[:, 7]))
    with pytest.raises(ValueError, match="unknown option"):
        video("builtin", no_such_option=1, **kw)


def test_builtin_motion_output_types_and_latents():
    from longgen.modalities.motion.builtin import builtin_motion_prior
    from longgen.modalities.motion.plugin import joints_decoder

    kw = dict(frames=60, steps=5, window_frames=40)
    z = motion("builtin", output_type="latent", **{**kw, "seed": 1})
    assert z.shape == (263, 60)                              # (features, frames)
    noise = NoiseField(1, (263, 40), -1, torch.float32, "cpu")(0, 60)
    # DDPM: the seed still drives the step noise and the keyframes' q_sample noise
    kw["seed"] = 1
    assert torch.equal(motion("builtin", latents=noise, output_type="latent", **kw), z)
    assert torch.equal(motion("builtin", latents=noise, output_type="latent", **kw), z)
    j = motion("builtin", latents=noise, **kw)               # default output_type="np": joints
    _, norm = builtin_motion_prior(40)
    dec = joints_decoder(norm)
    expect = torch.cat([x for x in (dec.push(z), dec.flush()) if x is not None], -1)
    assert j.shape == (60, 22, 3)
    assert np.array_equal(j, expect.T.reshape(60, 22, 3).numpy())
    pil = motion("builtin", latents=noise, output_type="pil", **kw)
    assert len(pil) == 60 and isinstance(pil[0], Image.Image)
