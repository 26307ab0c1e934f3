"""LTX-Video through longgen (issue 12): a tiny random ``LTXPipeline`` checkpoint
(``tests/fixtures/tiny_ltx.py``) saved and loaded through ``--model PATH``; one window against
``LTXPipeline`` (packed latents, dynamic shifting); the halo-decoded stream against one whole
decode; 3x the native length through the CLI; a killed run resumed to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longgen.denoiser import CountingDenoiser
from longgen.engine import Engine, EngineConfig
from longgen.planner import plan_windows
from longgen.modalities.video.ltx import load_ltx

from .fixtures.tiny_ltx import build_ltx
from .helpers import killed_run_resumes_identically
from .test_video_cli import cli, probe

torch.set_grad_enabled(False)
ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 16
H = W = 32               # LTXPipeline takes multiples of 32; the tiny VAE is 4x spatially: 8x8 latents


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return build_ltx(str(tmp_path_factory.mktemp("ltx")))


def test_one_window_equals_ltx_pipeline(ckpt):
    """method "ddim" (Euler) on one 161-frame window (41 latent frames: the tiny VAE is 4x in time)
    = LTXPipeline(latents=packed, output_type="latent") unpacked: sigmas linspace(1, 1/N, N), mu
    from the window's tokens, CFG 3, float32. Measured 1.2e-6 with max|ref| 4.6; bound
    1e-4 of max|ref|. One forward per step, uncond and cond rows batched."""
    from diffusers import LTXPipeline

    m = load_ltx(ckpt)
    m.max_sequence_length = MAX_TOKENS
    T, h = m.latent_frames(161), H // m.vae_scale_factor
    steps, g = 4, 3.0
    noise = torch.randn(8, T, h, h, generator=torch.Generator().manual_seed(1))
    ref = m.pipe("a mountain lake", height=H, width=W, num_frames=161, num_inference_steps=steps, guidance_scale=g,
                 latents=LTXPipeline._pack_latents(noise[None].clone()), output_type="latent",
                 max_sequence_length=MAX_TOKENS).frames
    ref = LTXPipeline._unpack_latents(ref, T, h, h)[0]
    cond, uncond = m.encode_prompt("a mountain lake")
    den = CountingDenoiser(m.denoiser)
    eng = Engine(den, m.scheduling(T, h, h), plan_windows(T, T, 16), (8, T, h, h), -3,
                 EngineConfig(method="ddim", steps=steps, guidance_scale=g, seed=0), cond=cond, uncond=uncond,
                 latents=noise)
    out = torch.cat([c.latent for c in eng], -3)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max(), float((out - ref).abs().max())
    assert den.calls == steps and den.rows == 2 * steps


def test_halo_decoded_stream_against_the_whole_decode(ckpt):
    """LTX's decoder is not causal but has no global statistics: a halo of latent frames covering its
    temporal receptive field makes the stream equal the whole decode to float rounding. Measured on
    the tiny VAE (40 latent frames, 4x4 latents, chunks 7 / 13 / 20), max-abs: halo 0 -> 1.64,
    4 -> 0.35, 8 -> 4.5e-3, 10 -> 1.4e-4, 12 and 16 (the default) -> 1.1e-6. The first latent frame
    gives 1 frame, every other 4 (the VAE's factor)."""
    m = load_ltx(ckpt)
    z = torch.randn(8, 40, 4, 4, generator=torch.Generator().manual_seed(2))
    mean, std, s = m._norm("cpu", torch.float32)
    whole = m.vae.decode(z[None] * std / s + mean, None).sample[0].clamp(-1, 1)      # (3, 157, 16, 16)
    err = {}
    for halo in (0, m.decode_halo):
        dec = m.decoder(halo=halo)
        parts = [dec.push(z[:, a:b]) for a, b in ((0, 7), (7, 20), (20, 40))] + [dec.flush()]
        got = torch.cat([p for p in parts if p is not None], 1)
        assert got.shape == whole.shape == (3, 1 + 4 * 39, 16, 16)
        err[halo] = float((got - whole).abs().max())
    assert m.decode_halo == 16 and err[16] <= 1e-5 and err[0] > 0.5


def test_three_native_lengths_through_the_cli(ckpt, tmp_path, capsys):
    """481 frames (3 x 160 + 1; 121 latent frames): 6 windows of 41 at stride 16, 25 fps."""
    out = tmp_path / "long.mp4"
    assert cli("--model", ckpt, "--frames", 481, "--height", H, "--width", W, "--steps", 2, "--out", out) == 0
    info = json.loads(capsys.readouterr().out)
    assert probe(out) == (481, W, H, 25.0)
    assert info["windows"] == 6 and info["forwards"] == 2 * (2 * 6 - 1) and info["kind"] == "ltx"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(ckpt, tmp_path):
    """A run killed after 2 windows resumes to the uninterrupted bytes (the halo decoder's pending
    latents are in the resume state)."""
    args = ["video", "--model", ckpt, "--frames", 321, "--height", H, "--width", W, "--steps", 12, "--no-progress"]
    done, _ = killed_run_resumes_identically(args, tmp_path, 2, ROOT)
    assert 2 <= done < 4


def test_bad_input(ckpt, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert cli("--model", ckpt, "--frames", 100, "--height", H, "--width", W, "--out", out) == 2
    assert "--frames 100: this model's causal VAE makes 1 + 4k frames; nearest: 97 or 101" in capsys.readouterr().err
    assert cli("--model", ckpt, "--frames", 161, "--height", 48, "--width", W, "--out", out) == 2
    assert "--height must be a positive multiple of 32 pixels for LTX-Video" in capsys.readouterr().err
    assert not out.exists()
