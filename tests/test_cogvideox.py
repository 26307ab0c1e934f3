"""CogVideoX 1.0 through longgen (issue 12): tiny random 2b-like (sincos positions) and 5b-like
(rotary positions) ``CogVideoXPipeline`` checkpoints (``tests/fixtures/tiny_cogvideox.py``) saved
and loaded through ``--model PATH``; one window against ``CogVideoXPipeline``; the schedule from the
CogVideoX scheduler's own alphas; the causal VAE streamed in its own decode calls; a video of 3x
the native length through the CLI; a killed run resumed to the same bytes; bad frame counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longgen.denoiser import CountingDenoiser
from longgen.engine import Engine, EngineConfig
from longgen.planner import plan_windows
from longgen.schedule import make_schedule
from longgen.modalities.video.cogvideox import load_cogvideox

from .fixtures.tiny_cogvideox import build_cogvideox
from .helpers import killed_run_resumes_identically
from .test_video_cli import cli, probe

torch.set_grad_enabled(False)
ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 16
H = W = 32
LAT = (4, 13, 4, 4)      # one native window: 49 frames = 13 latent frames


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cogvideox")
    return {"2b": build_cogvideox(str(root)), "5b": build_cogvideox(str(root), rotary=True, seed=1)}


@pytest.mark.parametrize("name", ["2b", "5b"])
def test_one_window_equals_cogvideox_pipeline(ckpts, name):
    """method "ddim" on one 49-frame window = CogVideoXPipeline(latents=..., output_type="latent")
    (frames-first, converted), its own CogVideoXDDIMScheduler, CFG 6, float32. Measured 2.9e-6 (2b)
    and 2.8e-6 (5b) with max|ref| 2.6; bound 1e-4 of max|ref|. With one window ALM observes nothing
    and equals it too; the zero-terminal-SNR first level (abar = 0) gives finite steps."""
    m = load_cogvideox(ckpts[name])
    m.max_sequence_length = MAX_TOKENS
    steps, g = 4, 6.0
    noise = torch.randn(*LAT, generator=torch.Generator().manual_seed(1))
    ref = m.pipe("a mountain lake", height=H, width=W, num_frames=49, num_inference_steps=steps, guidance_scale=g,
                 latents=noise.permute(1, 0, 2, 3)[None].clone(), output_type="latent",
                 max_sequence_length=MAX_TOKENS).frames[0].permute(1, 0, 2, 3)
    cond, uncond = m.encode_prompt("a mountain lake")
    for method in ("ddim", "alm"):
        den = CountingDenoiser(m.denoiser)
        eng = Engine(den, m.scheduler, plan_windows(13, 13, 10), LAT, -3,
                     EngineConfig(method=method, steps=steps, guidance_scale=g, seed=0),
                     cond=cond, uncond=uncond, latents=noise)
        out = torch.cat([c.latent for c in eng], -3)
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max(), (method, float((out - ref).abs().max()))
        assert den.calls == steps and den.rows == 2 * steps


def test_schedule_reads_the_cogvideox_alphas(ckpts):
    """Trailing timesteps with the SNR shift and zero-terminal rescale of CogVideoXDDIMScheduler:
    the schedule's levels are that scheduler's alphas_cumprod (abar = 0 at t = 999), which
    DDIMScheduler from the same config would not give."""
    from diffusers import DDIMScheduler

    m = load_cogvideox(ckpts["2b"])
    S = make_schedule(m.scheduler, 5)
    p = type(m.scheduler).from_config(m.scheduler.config)
    p.set_timesteps(5)
    assert S.timesteps == [int(t) for t in p.timesteps] == [999, 799, 599, 399, 199]
    assert torch.equal(S.abar, torch.stack([p.alphas_cumprod[t] for t in S.timesteps]).double())
    assert float(S.abar[0]) == 0.0 and float(S.abar_prev[-1]) == 1.0
    plain = DDIMScheduler.from_config(m.scheduler.config)
    assert float((plain.alphas_cumprod[S.timesteps[2]] - p.alphas_cumprod[S.timesteps[2]]).abs()) > 0.05


def test_streamed_decode_makes_the_vaes_own_calls(ckpts):
    """13 latent frames decode as AutoencoderKLCogVideoX does it (calls [0, 3), [3, 5), ... with
    the conv cache handed on); pushed in chunks that cut through its calls, the stream waits for
    each call to be complete and equals the whole decode: max-abs 0.0 measured, bound 1e-6."""
    m = load_cogvideox(ckpts["2b"])
    assert m.batches(13) == [0, 3, 5, 7, 9, 11, 13] and m.batches(2) == [0, 2] and m.batches(1) == [0, 1]
    z = torch.randn(*LAT, generator=torch.Generator().manual_seed(2))
    whole = m.vae.decode(z[None] / m.scaling).sample[0].clamp(-1, 1)            # (3, 49, H, W)
    dec = m.decoder(13)
    outs = [dec.push(z[:, a:b]) for a, b in ((0, 2), (2, 6), (6, 13))]
    assert outs[0] is None and outs[1].shape[1] == 1 + 4 * 4      # [0, 2) waits; [2, 6) completes [0, 5)
    got = torch.cat([o for o in outs if o is not None], 1)
    assert got.shape == whole.shape and (got - whole).abs().max() <= 1e-6
    short = m.decoder(13)
    short.push(z[:, :6])
    with pytest.raises(ValueError, match="ended after 6 latents; its decode calls end at 13"):
        short.flush()


def test_resumed_decoder_replays_from_the_start(ckpts):
    """The cache has no finite memory (see CogVideoXModel.replay_frames): the state keeps every
    decoded latent frame and the ones still waiting, and a reloaded decoder continues bit for bit."""
    m = load_cogvideox(ckpts["2b"])
    z = torch.randn(4, 21, 2, 2, generator=torch.Generator().manual_seed(4))
    live = m.decoder(21)
    live.push(z[:, :10])                          # calls [0, 3) ... [7, 9) done, latent 9 waiting
    state = live.state_dict()
    assert state["decoded"] == 9 and state["tail"].shape[1] == 9 and state["pending"].shape[1] == 1
    resumed = m.decoder(21)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.push(z[:, 10:]), live.push(z[:, 10:]))


def test_three_native_lengths_through_the_cli(ckpts, tmp_path, capsys):
    """145 frames (1 + 8 * 18, 37 latent frames): 4 windows of 13 at stride 10, 8 fps."""
    out = tmp_path / "long.mp4"
    assert cli("--model", ckpts["5b"], "--frames", 145, "--height", H, "--width", W, "--steps", 3,
               "--prompt", "a lake|a mountain|a red sky|a dawn", "--out", out) == 0
    info = json.loads(capsys.readouterr().out)
    assert probe(out) == (145, W, H, 8.0)
    assert info["windows"] == 4 and info["forwards"] == 3 * (2 * 4 - 1) and info["kind"] == "cogvideox"
    assert info["window"] == 49 and info["stride"] == 40


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(ckpts, tmp_path):
    """SIGKILL after 2 of 4 windows, --resume: the uninterrupted run's bytes (the decoder's state
    replays every decoded latent frame; its in-process check is in the default run)."""
    args = ["video", "--model", ckpts["2b"], "--frames", 145, "--height", H, "--width", W, "--steps", 16,
            "--no-progress"]
    done, _ = killed_run_resumes_identically(args, tmp_path, 2, ROOT)
    assert 2 <= done < 4


def test_bad_frame_counts(ckpts, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert cli("--model", ckpts["2b"], "--frames", 45, "--height", H, "--width", W, "--out", out) == 2
    assert "--frames 45: this model's causal VAE makes 1 + 8k frames; nearest: 41 or 49" in capsys.readouterr().err
    assert cli("--model", ckpts["2b"], "--kind", "wan", "--out", out) == 2
    assert "--kind wan does not fit" in capsys.readouterr().err
    assert not out.exists()
