"""``longgen video`` end to end: tiny real video UNets saved to disk and run through the CLI, init
clips kept, bad input refused, a killed run left playable and resumed to the same bytes.

The three UNet families (diffusers UNet3DConditionModel, AnimateDiff = UNet2DConditionModel +
MotionAdapter, our LaVie UNet) are built from config under fixed seeds (tests/fixtures_video.py),
saved the way each ships, and loaded back by ``longgen.cli.main``. Outputs are read back with PyAV.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_video as fx  # noqa: E402
from helpers import kill_after_windows  # noqa: E402

from longgen.cli import main  # noqa: E402
from longgen.modalities.video.writers import clip_to_tensor  # noqa: E402
from longgen.modalities.video.writers import MP4Writer, frames_to_uint8, read_video  # noqa: E402

torch.set_grad_enabled(False)
ROOT = Path(__file__).resolve().parents[1]


def cli(*args) -> int:
    return main(["video", *[str(a) for a in args], "--no-progress"])


def probe(path: Path) -> tuple[int, int, int, float]:
    """(frames decoded, width, height, average frame rate) of an mp4, read with PyAV."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.codec_context.width, s.codec_context.height, float(s.average_rate)


def write_mp4(path: Path, media: torch.Tensor, fps: float = 8.0) -> Path:
    """(3, F, H, W) in [-1, 1] -> an mp4 written by our own writer (same encoder settings as longgen)."""
    work = path.with_name(path.name + ".work")
    work.mkdir()
    w = MP4Writer(path, fps)
    w.open(work, None)
    w.write(media)
    w.close()
    return path


def moving_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """A smooth drifting colour pattern (3, F, H, W) in [-0.8, 0.8]: content that a VAE round trip keeps."""
    f = torch.arange(frames, dtype=torch.float64)[:, None, None]
    i = torch.linspace(0, 1, height, dtype=torch.float64)[None, :, None]
    j = torch.linspace(0, 1, width, dtype=torch.float64)[None, None, :]
    chans = [0.8 * torch.sin(2 * torch.pi * (i + 0.7 * j) + 0.25 * f + c) for c in (0.0, 2.0, 4.0)]
    return torch.stack(chans).float()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, list[str]]:
    """CLI model arguments of each tiny family, saved to disk."""
    base = tmp_path_factory.mktemp("video_models")
    ms = str(base / "modelscope")
    fx.save_modelscope(ms)
    sd, adapter = str(base / "sd"), str(base / "adapter")
    fx.save_components(sd, unet=fx.tiny_unet2d(3))
    fx.tiny_motion_adapter(4).save_pretrained(adapter)
    sd14 = base / "sd14"
    fx.save_components(str(sd14))
    (sd14 / "unet").mkdir()
    (sd14 / "unet" / "config.json").write_text(json.dumps(fx.tiny_unet2d_config()))  # LaVie reads only this
    ckpt = base / "lavie_base.pt"
    torch.save({"ema": fx.tiny_lavie(5).state_dict()}, ckpt)  # LaVie's find_model reads ckpt["ema"]
    # LaVie's native 320x512 would be 80x128 px through the tiny VAE (factor 2): ask for 16x16
    return {"unet3d": ["--model", ms],
            "animatediff": ["--model", sd, "--motion-adapter", adapter],
            "lavie": ["--model", ckpt, "--sd-path", sd14, "--height", 16, "--width", 16]}


# --------------------------------------------------------------------------- real models, 104 frames


# the tiny MotionAdapter's position table has 8 rows (motion_max_seq_length=8): its windows are 8
# frames at stride 4, 1 + (104 - 8) / 4 = 25 windows; 16-frame models: 1 + (104 - 16) / 8 = 12
@pytest.mark.parametrize("kind,windows,window", [("unet3d", 12, 16), ("animatediff", 25, 8), ("lavie", 12, 16)])
def test_real_model_writes_104_frames(models, tmp_path, capsys, kind, windows, window):
    out = tmp_path / f"{kind}.mp4"
    kind_arg = ["--kind", kind] if kind == "animatediff" else []  # the others: detected (auto)
    assert cli(*models[kind], *kind_arg, "--frames", 104, "--steps", 2, "--fps", 12,
               "--prompt", "the cat", "--out", out) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["kind"], info["windows"], info["window"], info["stride"]) == (kind, windows, window, window // 2)
    # 8x8 latents through the 2x VAE
    assert probe(out) == (104, 16, 16, 12.0)
    assert not (tmp_path / f"{kind}.mp4.longgen").exists()  # work dir removed once finished


# --------------------------------------------------------------------------- init clip preservation


def roundtrip_reference(tmp_path: Path, clip: torch.Tensor, encode_decode) -> np.ndarray:
    """What an init clip should come back as: VAE encode -> decode -> our mp4 encode -> decode."""
    ref = encode_decode(clip)                                                    # (3, F, H, W)
    return read_video(write_mp4(tmp_path / "reference.mp4", ref))[0].astype(np.float64)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


PRESERVE_TOL = 1.5   # mean |difference| in 8-bit levels over the 16 init frames (x264 crf 18 noise)


def test_init_clip_kept_builtin(tmp_path):
    from longgen.builtin import LatentRGB

    H = W = 64
    clip = moving_clip(16, H, W)
    src = write_mp4(tmp_path / "clip.mp4", clip)
    out = tmp_path / "out.mp4"
    assert cli("--init", src, "--frames", 40, "--steps", 3, "--height", H, "--width", W, "--out", out) == 0
    got = read_video(out)[0]
    assert got.shape == (40, H, W, 3)
    rgb = LatentRGB()
    # the same path the job takes: mp4 -> uint8 -> [-1, 1] -> encode -> decode
    x = clip_to_tensor(read_video(src)[0], H, W)
    ref = roundtrip_reference(tmp_path, x, lambda c: rgb.decode(rgb.encode(c[None].double()))[0].float())
    err = mean_abs(got[:16], ref)
    assert err <= PRESERVE_TOL
    # the bound is tight: the same frames one step out of place are far off, and so are new frames
    assert mean_abs(got[1:17], ref) > 10 * PRESERVE_TOL
    assert mean_abs(got[16:32], ref) > 10 * PRESERVE_TOL


def test_init_clip_kept_real_model(models, tmp_path):
    from longgen.modalities.video.models import load_video_model

    clip = moving_clip(20, 24, 32)   # 24x32 -> short side to 16, centre crop to 16x16
    src = write_mp4(tmp_path / "clip.mp4", clip)
    out = tmp_path / "out.mp4"
    assert cli(*models["unet3d"], "--init", src, "--frames", 32, "--steps", 2, "--out", out) == 0
    got = read_video(out)[0]
    assert got.shape == (32, 16, 16, 3)
    vm = load_video_model(models["unet3d"][1])
    x = clip_to_tensor(read_video(src)[0][:16], 16, 16)
    ref = roundtrip_reference(tmp_path, x, lambda c: vm.decode_frames(
        vm.encode_frames(c.permute(1, 0, 2, 3)[None]))[0].permute(1, 0, 2, 3))
    assert ref.std() > 5  # the tiny VAE's round trip is not flat: the comparison means something
    assert mean_abs(got[:16], ref) <= PRESERVE_TOL
    assert mean_abs(got[16:32], ref) > 3 * PRESERVE_TOL


# --------------------------------------------------------------------------- seams


def test_alm_windows_join_better_than_independent_windows(tmp_path):
    """temporal_seam_score at the windows' first new frames (paste merging, so nothing hides a seam):
    ALM's observed overlap must make the join far smoother than plain DDIM's independent windows."""
    from longgen.planner import plan_windows
    from longgen.stitch import temporal_seam_score

    bounds = [w.start + w.new_from for w in plan_windows(40, 16, 8).windows[1:]]   # [16, 24, 32]
    score = {}
    for method in ("alm", "ddim"):
        out = tmp_path / f"{method}.mp4"
        assert cli("--frames", 40, "--steps", 8, "--height", 32, "--width", 32, "--blend", "paste",
                   "--method", method, "--out", out) == 0
        score[method] = temporal_seam_score(torch.from_numpy(read_video(out)[0]).float(), bounds)
    # measured: alm 42, ddim 337 (inside-window steps of the smooth builtin prior are small)
    assert score["ddim"] > 100 and score["alm"] < score["ddim"] / 4


# --------------------------------------------------------------------------- bad input


def run_err(capsys, *args) -> str:
    assert cli(*args) == 2
    return capsys.readouterr().err


def test_bad_input_exits_2_naming_the_value(tmp_path, capsys, models):
    out = tmp_path / "o.mp4"
    missing = tmp_path / "nope.mp4"
    assert str(missing) in run_err(capsys, "--init", missing, "--out", out)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    err = run_err(capsys, "--init", corrupt, "--out", out)
    assert "cannot read video" in err and str(corrupt) in err
    short = write_mp4(tmp_path / "short.mp4", moving_clip(9, 16, 16))
    assert "has 9 frames" in run_err(capsys, "--init", short, "--out", out)
    assert "has 9 frames" in run_err(capsys, *models["unet3d"], "--init", short, "--out", out)
    assert "--fps must be a positive number, got 0.0" in run_err(capsys, "--fps", 0, "--out", out)
    assert "--frames 12 is fewer than one window (16 frames)" in run_err(
        capsys, *models["unet3d"], "--frames", 12, "--out", out)
    assert "--height must be a positive multiple of 4" in run_err(
        capsys, *models["unet3d"], "--height", 18, "--out", out)
    assert "--motion-adapter apply to a real video checkpoint" in run_err(
        capsys, "--motion-adapter", tmp_path, "--out", out)
    assert not out.exists()


# --------------------------------------------------------------------------- interruption


def test_killed_run_is_playable_and_resumes_to_same_bytes(tmp_path):
    """SIGKILL after 5 of 12 windows: the partial mp4 decodes; --resume gives the uninterrupted bytes."""
    args = ["video", "--frames", 104, "--steps", 12, "--height", 32, "--width", 32, "--no-progress"]
    part = tmp_path / "part.mp4"
    manifest = tmp_path / "part.mp4.longgen" / "manifest.json"
    done = kill_after_windows([sys.executable, "-m", "longgen.cli", *map(str, args), "--out", str(part)], ROOT,
                              manifest, 5, timeout=60)
    written = json.loads(manifest.read_text())["writer"]["frames"]
    assert 5 <= done < 12 and written >= 40
    partial = read_video(part)[0]   # a killed run's fragmented mp4 opens and decodes
    assert 8 <= len(partial) <= written

    assert main([*map(str, args), "--out", str(part), "--resume"]) == 0
    full = tmp_path / "full.mp4"
    assert main([*map(str, args), "--out", str(full)]) == 0
    assert sha256(part) == sha256(full)
    # the partial file's frames are the finished video's first frames, bit for bit
    assert np.array_equal(partial, read_video(full, max_frames=len(partial))[0])


def test_partial_frames_written_lossless_for_resume(tmp_path):
    """The writer re-encodes saved frames on resume: they must be the uint8 frames it was given."""
    clip = moving_clip(12, 16, 16)
    w = MP4Writer(tmp_path / "a.mp4", 8.0)
    work = tmp_path / "w"
    work.mkdir()
    w.open(work, None)
    w.write(clip[:, :5])
    w.write(clip[:, 5:])
    assert w.state() == {"parts": 2, "frames": 12, "sha256": [  # each frame file's digest, for --resume
        hashlib.sha256((work / f"frames_{k:05d}.npy").read_bytes()).hexdigest() for k in range(2)]}
    saved = np.concatenate([np.load(work / f"frames_{k:05d}.npy") for k in range(2)])
    assert np.array_equal(saved, frames_to_uint8(clip))
    w.close()


def test_writer_bytes_depend_only_on_frames(tmp_path):
    """Encoding the same frames repeatedly in one process (heap churned between tries) gives the
    same bytes: what byte-identical resume rests on. (With x264's mbtree on, most tries differed.)"""
    media = moving_clip(24, 64, 64) + 0.1 * torch.randn(3, 24, 64, 64, generator=torch.Generator().manual_seed(0))
    hashes, junk = set(), []
    for k in range(6):
        junk.append(np.random.default_rng(k).random(1 << (15 + 2 * k)))  # move later allocations around
        path = tmp_path / f"t{k}.mp4"
        w = MP4Writer(path, 8.0)
        work = tmp_path / f"w{k}"
        work.mkdir()
        w.open(work, None)
        for i in range(0, 24, 8):
            w.write(media[:, i:i + 8])
        w.close()
        hashes.add(sha256(path))
    assert len(hashes) == 1


def test_per_window_prompts_builtin_and_unet(models, tmp_path):
    """``a|b|c`` gives window k prompt k: the builtin prior's class condition, and a real UNet's
    text states as its forward sees them (a pre-hook on the UNet); one prompt per window or a
    clear error."""
    from argparse import Namespace

    from longgen.builtin import SCENES
    from longgen.cli import build_parser, discover
    from longgen.modalities.video.jobs import video_parts
    from longgen.modalities.video.models import load_video_model

    plugins = discover()
    parser = build_parser({"video": plugins["video"]})
    args = parser.parse_args(["video", "--frames", "40", "--steps", "2", "--height", "32", "--width", "32",
                              "--prompt", "day|night|desert|snow", "--out", str(tmp_path / "o.mp4")])
    engine = plugins["video"].build_job(args).engine
    names = list(SCENES)
    assert [int(engine.window_cond(w)[0]) for w in engine.plan.windows] == [names.index(n) for n in
                                                                             ("day", "night", "desert", "snow")]
    vm = load_video_model(models["unet3d"][1])
    prompts = ["a lake", "a mountain", "a red sky"]
    embs = [vm.encode_prompt(p)[0][0] for p in prompts] + [vm.encode_prompt("")[1][0]]
    seen: list[int] = []

    def hook(module, a, kw):
        for row in kw["encoder_hidden_states"]:
            seen.append([i for i, e in enumerate(embs) if torch.equal(row, e)][0])

    ns = Namespace(**{**vars(args), "model": models["unet3d"][1], "prompt": "|".join(prompts), "frames": 32,
                      "height": None, "width": None})
    engine = video_parts(vm, ns)[0]
    h = vm.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for _ in engine:
            pass
    finally:
        h.remove()
    order = [k for k in seen if k != 3]
    assert order == sorted(order) and set(order) == {0, 1, 2}
    with pytest.raises(ValueError, match="3 '\\|'-separated prompts but the plan has 2 windows"):
        video_parts(vm, Namespace(**{**vars(ns), "frames": 24}))
