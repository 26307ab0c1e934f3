"""Faults through the CLI: each ends with one ``longgen <cmd>: error: ...`` line and exit 2, no
traceback, and every file that was there before is byte-identical afterwards; a finished part
damaged before ``--resume`` is refused by name; a run stopped by a full disk or by Ctrl-C resumes
to the bytes of an uninterrupted run; a second run on the same output is refused while the first
holds its lock; ``longgen --help`` does not import torch."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longgen.cli import main
from longgen.modalities.image.inpainting import InpaintWriter
from longgen.modalities.image.writers import PNGStripWriter
from longgen.modalities.motion.condmdi import CondMDIConfig
from longgen.modalities.motion.plugin import NPYWriter
from longgen.modalities.video.writers import MP4Writer
from longgen.run import check_writable


class NotATensor:  # a pickled object of this class is refused by torch.load(weights_only=True)
    pass


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([*map(str, argv), "--no-progress"])
    return rc, capsys.readouterr().err


def assert_one_error_line(err: str, cmd: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"longgen {cmd}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- the table

PANO = ["panorama", "--width", 1024, "--height", 64, "--steps", 3]


def _state_pt(tmp: Path, data: bytes) -> list:
    work = tmp / "p.png.longgen"
    work.mkdir()
    (work / "state.pt").write_bytes(data)
    return [*PANO, "--out", tmp / "p.png", "--resume"]


def _truncated_state() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"manifest": "{}", "engine": {"x": torch.arange(1000.0)}}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def case_empty_state(tmp):
    return _state_pt(tmp, b""), ["state.pt", "is damaged", "remove", "p.png.longgen"]


def case_truncated_state(tmp):
    return _state_pt(tmp, _truncated_state()), ["state.pt", "is damaged", "remove", "p.png.longgen"]


def case_garbage_state(tmp):
    return _state_pt(tmp, bytes(range(256)) * 4), ["state.pt", "is damaged", "remove", "p.png.longgen"]


def case_foreign_state(tmp):  # a loadable torch file that is not a longgen state
    import io

    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)
    return _state_pt(tmp, buf.getvalue()), ["state.pt", "is damaged", "remove"]


def case_out_is_a_directory(tmp):
    (tmp / "p.png").mkdir()
    (tmp / "p.png" / "inside.txt").write_text("keep")
    return [*PANO, "--out", tmp / "p.png", "--overwrite"], ["is a directory", "give the path of the file"]


def case_out_parent_is_a_file(tmp):
    (tmp / "notadir").write_text("keep")
    return [*PANO, "--out", tmp / "notadir" / "p.png"], ["is a file, not a directory"]


def case_unreadable_image(tmp):
    (tmp / "bad.png").write_bytes(b"\x89PNG not really" + bytes(100))
    return (["inpaint", "--image", tmp / "bad.png", "--steps", 2, "--out", tmp / "i.png"],
            ["cannot read image", "bad.png"])


def case_unreadable_mask(tmp):
    (tmp / "bad.png").write_bytes(b"GIF89a garbage")
    return (["inpaint", "--mask", tmp / "bad.png", "--steps", 2, "--out", tmp / "i.png"],
            ["cannot read mask", "bad.png"])


def case_unreadable_init_clip(tmp):
    (tmp / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    return (["video", "--init", tmp / "bad.mp4", "--frames", 16, "--steps", 2, "--height", 32, "--width", 32,
             "--out", tmp / "v.mp4"], ["cannot read video", "bad.mp4"])


def case_pickle_refused_by_weights_only(tmp):
    d = tmp / "ckpt"
    d.mkdir()
    (d / "args.json").write_text(json.dumps(CondMDIConfig(latent_dim=32, dim_mults=(1, 2)).to_args()))
    np.save(d / "Mean_abs_3d.npy", np.zeros(263, np.float32))
    np.save(d / "Std_abs_3d.npy", np.ones(263, np.float32))
    torch.save({"model_avg": NotATensor()}, d / "model000000001.pt")
    return (["motion", "--model", d / "model000000001.pt", "--steps", 2, "--out", tmp / "m.npy"],
            ["model000000001.pt", "weights_only=True", "refused"])


def case_broken_model_index(tmp):
    d = tmp / "sd"
    for sub in ("unet", "vae", "scheduler"):
        (d / sub).mkdir(parents=True)
    (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": [')
    return [*PANO, "--model", d, "--out", tmp / "p.png"], ["model_index.json", "not valid JSON"]


def case_read_only_directory(tmp):
    # as root, chmod does not stop writes; /sys refuses new files to everyone (EACCES)
    if not Path("/sys").is_dir():
        pytest.skip("no /sys")
    try:
        check_writable(Path("/sys"))
    except ValueError:
        pass
    else:
        pytest.skip("/sys is writable here")
    return [*PANO, "--out", "/sys/p.png"], ["cannot write in /sys", "choose another --out"]


def case_width_narrower_than_window(tmp):  # sizes in pixels, not latents
    return (["panorama", "--width", 256, "--height", 64, "--out", tmp / "p.png"],
            ["width 256 px is narrower than one window (512 px)"])


def case_stride_not_smaller(tmp):
    return (["panorama", "--stride", 512, "--height", 64, "--out", tmp / "p.png"],
            ["stride 512 px must be smaller than the window 512 px"])


CASES = [case_empty_state, case_truncated_state, case_garbage_state, case_foreign_state,
         case_out_is_a_directory, case_out_parent_is_a_file, case_unreadable_image, case_unreadable_mask,
         case_unreadable_init_clip, case_pickle_refused_by_weights_only, case_broken_model_index,
         case_read_only_directory, case_width_narrower_than_window, case_stride_not_smaller]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_fault_is_one_error_line_and_leaves_files_alone(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.png").write_bytes(b"precious")
    argv, words = case(tmp_path)
    sampled = []
    monkeypatch.setattr("longgen.engine.Engine.__iter__", lambda self: sampled.append(1) or iter(()))
    before = snapshot(tmp_path)
    rc, err = run(argv, capsys)
    assert rc == 2, err
    assert_one_error_line(err, str(argv[0]), *words)
    assert snapshot(tmp_path) == before
    assert not sampled  # refused before any window was sampled


# ----------------------------------------------------------------------------- stop part way, damage, resume


class Stop:
    """Make ``cls.write`` fail with ``OSError(errno)`` on its ``n``-th call (a full disk)."""

    def __init__(self, monkeypatch, cls, n: int, err: int = errno.ENOSPC):
        real, calls = cls.write, []

        def write(writer, media):
            calls.append(1)
            if len(calls) == n:
                raise OSError(err, os.strerror(err), str(getattr(writer, "out", "?")))
            return real(writer, media)

        monkeypatch.setattr(cls, "write", write)
        self.undo = lambda: monkeypatch.setattr(cls, "write", real)


MODES = {
    # argv, writer class, the finished part to damage, how to damage it
    "panorama": (["panorama", "--width", 1024, "--height", 64, "--steps", 3, "--group", 1], "p.png", PNGStripWriter),
    "video": (["video", "--frames", 32, "--steps", 2, "--height", 32, "--width", 32], "v.mp4", MP4Writer),
    "motion": (["motion", "--frames", 392, "--steps", 6, "--keyframes", "every:20"], "m.npy", NPYWriter),
    "inpaint": (["inpaint", "--steps", 3], "i.png", InpaintWriter),
}


_REFS: dict[str, bytes] = {}


def reference(mode: str, tmp_path: Path, capsys) -> Path:
    """The uninterrupted output of ``MODES[mode]`` (computed once per session)."""
    argv, name, _ = MODES[mode]
    ref = tmp_path / "ref" / name
    ref.parent.mkdir()
    if mode not in _REFS:
        assert run([*argv, "--out", ref], capsys)[0] == 0
        _REFS[mode] = ref.read_bytes()
    ref.write_bytes(_REFS[mode])
    return ref


def _black_strip(path: Path) -> None:
    from PIL import Image

    w, h = Image.open(path).size
    Image.new("RGB", (w, h)).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _zero_rows(path: Path) -> None:  # same length, first finished rows zeroed
    data = bytearray(path.read_bytes())
    data[NPYWriter.HEADER:NPYWriter.HEADER + 22 * 3 * 4 * 5] = bytes(22 * 3 * 4 * 5)
    path.write_bytes(bytes(data))


DAMAGE = [("panorama", "strip_00000.png", _black_strip), ("video", "frames_00000.npy", _truncate),
          ("motion", None, _zero_rows), ("motion", None, _truncate), ("inpaint", "part_00000.pt", _truncate)]


@pytest.mark.parametrize("mode,part,damage", DAMAGE, ids=["png-black-strip", "video-truncated-frames",
                                                          "motion-zeroed-rows", "motion-truncated",
                                                          "inpaint-truncated-part"])
def test_full_disk_keeps_the_part_and_a_damaged_part_is_refused_on_resume(mode, part, damage, tmp_path,
                                                                           capsys, monkeypatch):
    argv, name, writer = MODES[mode]
    ref = reference(mode, tmp_path, capsys)
    out = tmp_path / "run" / name
    out.parent.mkdir()
    work = out.parent / (name + ".longgen")

    stop = Stop(monkeypatch, writer, 2)  # the disk fills up at the second finished chunk
    rc, err = run([*argv, "--out", out], capsys)
    assert rc == 2
    assert_one_error_line(err, mode, "disk full", "No space left on device", "continue with --resume")
    assert (work / "state.pt").exists()
    stop.undo()

    target = work / part if part else out
    original = target.read_bytes()
    damage(target)
    before = snapshot(tmp_path)
    rc, err = run([*argv, "--out", out, "--resume"], capsys)
    assert rc == 2
    assert_one_error_line(err, mode, str(target), "--resume", "remove", str(work))
    assert snapshot(tmp_path) == before  # a refused resume changes nothing

    target.write_bytes(original)  # repaired: the resume completes with the uninterrupted bytes
    rc, err = run([*argv, "--out", out, "--resume"], capsys)
    assert rc == 0, err
    assert out.read_bytes() == ref.read_bytes()
    assert not work.exists()


def test_damaged_partial_mp4_is_redone_from_the_frames(tmp_path, capsys, monkeypatch):
    """The partial mp4 is re-derived from the verified frame files: damaging it is harmless."""
    argv, name, writer = MODES["video"]
    ref = reference("video", tmp_path, capsys)
    out = tmp_path / name
    stop = Stop(monkeypatch, writer, 2)
    assert run([*argv, "--out", out], capsys)[0] == 2
    stop.undo()
    out.write_bytes(b"garbage")
    assert run([*argv, "--out", out, "--resume"], capsys)[0] == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 48 KiB tmpfs (root only; skipped where mounting is not allowed): a disk that really fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_disk_that_fills_up_keeps_the_part_and_resumes_when_there_is_room(tiny_tmpfs, tmp_path, capsys):
    argv = ["panorama", "--width", 2048, "--height", 64, "--steps", 3, "--group", 1]
    out = tiny_tmpfs / "p.png"
    rc, err = run([*argv, "--out", out], capsys)
    assert rc == 2
    assert_one_error_line(err, "panorama", "disk full", "continue with --resume")
    assert sorted((tiny_tmpfs / "p.png.longgen").glob("strip_*.png"))  # the finished part is kept
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_tmpfs)], check=True)
    assert run([*argv, "--out", out, "--resume"], capsys)[0] == 0
    ref = tmp_path / "ref.png"
    assert run([*argv, "--out", ref], capsys)[0] == 0
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["p.png"]


def test_probe_write_turns_a_full_or_read_only_folder_into_one_error(tmp_path, monkeypatch):
    real = os.open

    def full(path, flags, *a):
        if ".longgen-probe-" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(ValueError, match=r"cannot write in .* \(No space left on device\)"):
        check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- Ctrl-C and the lock (subprocess)

SLOW = ["panorama", "--width", 2048, "--height", 64, "--steps", 4, "--group", 1]
# the CLI in a subprocess whose engine waits (up to 120 s) after its first finished window, so
# that the second run and the SIGINT surely land while it is still running. SIGINT gets Python's
# own handler first, as under a terminal: a job started in the background by a non-interactive
# shell (as CI may run us) inherits SIGINT ignored, and Python then leaves it ignored.
SLOW_CLI = ("import signal, sys, time, longgen.cli, longgen.engine as e\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "real = e.Engine.__iter__\n"
            "def slow(self):\n"
            "    for k, chunk in enumerate(real(self)):\n"
            "        yield chunk\n"
            "        time.sleep(120 if k == 0 else 0)\n"
            "e.Engine.__iter__ = slow\n"
            "sys.exit(longgen.cli.main(sys.argv[1:]))\n")


def test_second_run_is_locked_out_and_ctrl_c_resumes_to_the_same_bytes(tmp_path, capsys):
    ref = tmp_path / "ref.png"
    assert run([*SLOW, "--out", ref], capsys)[0] == 0
    out = tmp_path / "p.png"
    work = tmp_path / "p.png.longgen"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, SLOW), "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            if json.loads((work / "manifest.json").read_text())["windows_done"] >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    try:
        for extra in ([], ["--resume"]):  # a second run on the same output, with or without --resume
            rc, err = run([*SLOW, "--out", out, *extra], capsys)
            assert rc == 2
            assert_one_error_line(err, "panorama", "being written by another longgen run",
                                  f"pid {proc.pid}", "lock")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "longgen panorama: interrupted; continue with --resume"
    assert "Traceback" not in err
    assert (work / "lock").exists()  # left by the interrupted run, no longer locked: it does not block
    rc, err = run([*SLOW, "--out", out, "--resume"], capsys)
    assert rc == 0, err
    assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------- fast help


def test_help_does_not_import_heavy_libraries():
    code = ("import sys, contextlib, io, longgen.cli\n"
            "for argv in (['--help'], ['panorama', '--help'], ['video', '--help'], ['motion', '--help'],"
            " ['inpaint', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            longgen.cli.main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'av', 'scipy', 'trimesh', 'smplx')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_package_names_resolve():
    import longgen
    import longgen.samplers

    assert longgen.METHODS == longgen.samplers.METHODS
    assert longgen.sample is __import__("longgen.api", fromlist=["sample"]).sample
    assert callable(longgen.make_schedule)


@pytest.mark.slow
def test_help_takes_under_two_seconds():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from cli_help_time import measure

    figures = measure(runs=3)
    assert max(figures.values()) < 2.0, figures


def test_writer_states_hold_the_sha256_of_each_finished_part(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    w = PNGStripWriter(tmp_path / "p.png")
    w.open(work, None)
    for width in (8, 16):
        w.write(torch.linspace(-1, 1, 3 * 8 * width).reshape(3, 8, width))
    digests = [hashlib.sha256((work / f"strip_{k:05d}.png").read_bytes()).hexdigest() for k in range(2)]
    assert w.state() == {"strips": 2, "width": 24, "sha256": digests}
    m = NPYWriter(tmp_path / "m.npy")
    m.open(work, None)
    chunks = [torch.randn(66, 5), torch.randn(66, 3)]
    for c in chunks:
        m.write(c)
    m.f.close()
    rows = [c.T.reshape(-1, 22, 3).numpy().astype("<f4").tobytes() for c in chunks]
    assert m.state()["sha256"] == [[0, 5, hashlib.sha256(rows[0]).hexdigest()],
                                   [5, 3, hashlib.sha256(rows[1]).hexdigest()]]
