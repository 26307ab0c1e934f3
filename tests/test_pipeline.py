"""One output pipelined across torchrun ranks (gloo, CPU): byte-identical to one process, the
traffic it claims, resume at window boundaries (a killed rank restarted by torchrun's agent, a
single-process state continued pipelined), and refusals before any window is sampled.

Outputs depend on the CPU thread count; torchrun sets OMP_NUM_THREADS=1 in every worker, so the
single-process references run with it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fixtures.tiny_sd import tiny_sd_path  # noqa: F401  (pytest fixture)
from tests.helpers import kill_lock_holder

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _single(argv: list, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "longgen", *map(str, argv), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _torchrun(n: int, argv: list, out: Path, restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           f"--max-restarts={restarts}", "-m", "longgen", *map(str, argv), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def _pipelined(n: int, argv: list, out: Path) -> dict:
    proc = _torchrun(n, argv, out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads([x for x in stdout.strip().splitlines() if x.startswith("{")][-1])


def _expected_bytes(overlaps: list[int], ranks: int, steps: int, column: int, window: int) -> int:
    """The traffic the pipeline module describes, for a plan that is not a loop: window k hands
    window k+1 its overlap (``overlaps[k]`` columns of ``column`` bytes) on every step; each window
    not on rank 0 goes to rank 0 with those strips (the last window has none)."""
    n = len(overlaps) + 1
    left = sum(steps * o * column for o in overlaps)
    done = sum(window + (steps * overlaps[k] * column if k < n - 1 else 0)
               for k in range(n) if k % ranks != 0)
    return left + done


PANORAMA = ["panorama", "--width", "3200", "--height", "128", "--steps", "12", "--seed", "3",
            "--prompt", "sunset", "--observed", "trajectory"]   # pipelining needs trajectory


@pytest.fixture(scope="module")
def panorama_reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single") / "one.png"
    return out, _single(PANORAMA, out)


@pytest.mark.parametrize("ranks", [2, 3])
def test_pipelined_panorama_is_byte_identical_and_sends_the_strips(panorama_reference, tmp_path, ranks):
    ref, single = panorama_reference
    out = tmp_path / "p.png"
    info = _pipelined(ranks, PANORAMA, out)
    assert out.read_bytes() == ref.read_bytes()
    assert info["windows"] == single["windows"] == 8 and info["ranks"] == ranks
    assert info["forwards"] == single["forwards"]
    # builtin image latents: 4 channels, 16 rows (128 px), float32; 64-latent windows, 16-latent overlaps
    column, window = 4 * 16 * 4, 4 * 16 * 64 * 4
    pipe = info["pipeline"]
    assert pipe["strip_bytes_per_step"] == 16 * column and pipe["first_window"] == 0
    assert pipe["bytes_sent"] == _expected_bytes([16] * 7, ranks, 12, column, window)
    assert not (tmp_path / "p.png.longgen").exists()


@pytest.mark.slow
@pytest.mark.parametrize("ranks,width,method", [(3, 2304, "alm"), (2, 1536, "replace")])
def test_pipelined_loop_is_byte_identical(tmp_path, ranks, width, method):
    """Loops: with 3 ranks and 6 windows the first window's wrapped strips go to the closing
    window's rank in one burst; with 2 ranks and 4 windows rank 0 also samples the window before the
    closing one and interleaves them with its own strips (``replace`` adds the finished windows)."""
    argv = ["panorama", "--width", str(width), "--height", "128", "--steps", "5", "--loop", "--observed", "trajectory",
            "--method", method]
    single = _single(argv, tmp_path / "one.png")
    info = _pipelined(ranks, argv, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert info["windows"] == single["windows"] == width // 384


@pytest.mark.slow
@pytest.mark.parametrize("command,argv,ranks", [
    ("video", ["--frames", "64", "--height", "64", "--width", "64", "--steps", "5", "--observed", "trajectory"], 2),
    ("motion", ["--frames", "400", "--steps", "8", "--keyframes", "every:20", "--no-recentre",
                "--impute", "none", "--observed", "trajectory"], 3),
])
def test_pipelined_video_and_motion_are_byte_identical(tmp_path, command, argv, ranks):
    ext = {"video": "mp4", "motion": "npy"}[command]
    single = _single([command, *argv], tmp_path / f"one.{ext}")
    info = _pipelined(ranks, [command, *argv], tmp_path / f"p.{ext}")
    assert (tmp_path / f"p.{ext}").read_bytes() == (tmp_path / f"one.{ext}").read_bytes()
    assert info["windows"] == single["windows"] >= ranks and info["forwards"] == single["forwards"]


def test_pipelined_tiny_sd_panorama_is_byte_identical(tiny_sd_path, tmp_path):  # noqa: F811
    argv = ["panorama", "--model", tiny_sd_path, "--observed", "trajectory", "--width", "640", "--height", "128", "--steps", "3",
            "--prompt", "a|photo|of|cat|dog|wide|lake"]
    single = _single(argv, tmp_path / "one.png")
    info = _pipelined(2, argv, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert info["windows"] == single["windows"] == 7 and info["forwards"] == single["forwards"] == 39
    # SD latents: 4 channels, 16 rows; 16-latent windows at a 12 stride, the last one end-aligned
    # (starts 0, 12, ..., 60, 64): overlaps of 4 latents, the last of 12
    assert info["pipeline"]["bytes_sent"] == _expected_bytes([4] * 5 + [12], 2, 3, 4 * 16 * 4, 4 * 16 * 16 * 4)


def test_a_killed_rank_is_restarted_and_the_run_continues(panorama_reference, tmp_path):
    """Rank 0 (it holds the output's lock) is killed with SIGKILL once two windows are saved;
    torchrun's agent restarts the workers (--max-restarts 1), the new attempt continues from the
    saved state without --resume, and the output is byte-identical to one process's."""
    ref, _ = panorama_reference
    out = tmp_path / "p.png"
    proc = _torchrun(2, PANORAMA, out, restarts=1)
    work = tmp_path / "p.png.longgen"

    def two_saved(w: Path) -> bool:
        try:
            return json.loads((w / "manifest.json").read_text())["windows_done"] >= 2
        except (OSError, ValueError, KeyError):
            return False

    killed = kill_lock_holder(proc, work, two_saved, poll=0.005)
    assert killed, "the run never saved a state"
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    info = json.loads([x for x in stdout.strip().splitlines() if x.startswith("{")][-1])
    assert info["pipeline"]["first_window"] >= 2       # continued, not started again
    assert out.read_bytes() == ref.read_bytes()


CUT = """
import sys
from longgen.cli import build_parser, discover
from longgen.run import run_job
class Stop(Exception):
    pass
class Bar:
    n = 0
    def update(self, k): self.n += k
    def close(self): pass
groups = []
def progress(steps=None, **kw):
    if steps is None:
        return Bar()
    groups.append(1)
    if len(groups) > int(sys.argv[1]):
        raise Stop
    return steps
plugins = discover()
args = build_parser(plugins).parse_args(sys.argv[2:])
try:
    run_job(plugins[args.command].build_job(args), progress=progress)
except Stop:
    print("stopped")
"""


def test_a_single_process_state_continues_pipelined(tmp_path):
    """A loop cut by one process after two windows, continued with --resume by 2 ranks: window 2
    runs on rank 0 from the saved strips, the closing window's rank gets the first window's
    wrapped strips from the saved state; the bytes are one uninterrupted process's."""
    argv = ["panorama", "--width", "2304", "--height", "128", "--steps", "6", "--loop", "--seed", "2",
            "--observed", "trajectory"]
    _single(argv, tmp_path / "one.png")
    out = tmp_path / "p.png"
    res = subprocess.run([sys.executable, "-c", CUT, "2", *argv, "--out", str(out)],
                         capture_output=True, text=True, env=ONE_THREAD)
    assert res.stdout.strip() == "stopped", res.stderr[-2000:]
    manifest = json.loads((tmp_path / "p.png.longgen" / "manifest.json").read_text())
    assert manifest["windows_done"] == 2 and not out.exists()
    info = _pipelined(2, [*argv, "--resume"], out)
    assert info["pipeline"]["first_window"] == 2
    assert out.read_bytes() == (tmp_path / "one.png").read_bytes()


def test_more_ranks_than_windows_is_refused_before_sampling(tmp_path):
    out = tmp_path / "p.png"
    proc = _torchrun(3, ["panorama", "--width", "896", "--height", "128", "--steps", "2", "--observed", "trajectory"], out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    lines = [x for x in stderr.splitlines() if x.startswith("longgen panorama")]
    assert lines == ["longgen panorama: error: the output has 2 windows; a run pipelined across 3 ranks "
                     "needs at least 3: use --nproc-per-node 2 or fewer, or make the output longer"]
    assert list(tmp_path.iterdir()) == []       # nothing written, no resume folder


def test_settings_that_cannot_overlap_are_refused():
    from longgen.engine import Engine
    from longgen.pipeline import check_args, check_job

    ok = SimpleNamespace(group=1, method="alm", observed="trajectory")
    check_args(ok, 2)
    check_args(SimpleNamespace(group=1, method="ddim", observed="invert"), 2)  # plain: nothing observed
    with pytest.raises(ValueError, match=r"^--group 0: a run pipelined across 2 ranks .* pass --group 1$"):
        check_args(SimpleNamespace(group=0, method="alm", observed="trajectory"), 2)
    for observed in ("invert", "matched"):   # matched: the panorama and video default
        with pytest.raises(ValueError, match=rf"^--observed {observed}: .* needs --observed trajectory$"):
            check_args(SimpleNamespace(group=1, method="alm", observed=observed), 2)
    grid = SimpleNamespace()
    with pytest.raises(ValueError, match="a 2-D canvas .* is not pipelined"):
        check_job(grid, 2)
    eng = Engine.__new__(Engine)
    eng.wt, eng.plan = object(), [0, 1, 2]
    with pytest.raises(ValueError, match="pass --no-recentre"):
        check_job(eng, 2)
    eng.wt, eng.cfg = None, SimpleNamespace(impute="spline")
    with pytest.raises(ValueError, match="pass --impute none"):
        check_job(eng, 2)


FULL_DISK = """
import errno, os, sys
from longgen.modalities.image import writers
orig, calls = writers.PNGStripWriter.write, []
def write(self, media):
    calls.append(1)
    if len(calls) == 3:
        raise OSError(errno.ENOSPC, "No space left on device", str(self._path(self.strips)))
    return orig(self, media)
writers.PNGStripWriter.write = write
from longgen.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_full_disk_on_rank_0_stops_every_rank_and_resumes(panorama_reference, tmp_path):
    """Rank 0's third strip fails with ENOSPC: rank 0 says so in one line, the other rank stops
    (no hang: the command ends), the two finished strips and the state stay; --resume, pipelined,
    gives one process's bytes."""
    ref, _ = panorama_reference
    script, out = tmp_path / "full_disk.py", tmp_path / "p.png"
    script.write_text(FULL_DISK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           *PANORAMA, "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    lines = [x for x in res.stderr.splitlines() if x.startswith("longgen panorama")]
    assert res.returncode != 0 and lines, res.stderr[-3000:]
    assert "writing " in lines[0] and "(disk full)" in lines[0] and "continue with --resume" in lines[0]
    # rank 1 says why it stopped, unless torchrun's agent ended it first
    assert lines[1:] in ([], ["longgen panorama: error: rank 1: stopped: another rank ended the run "
                              "(its error is reported above)"]), lines
    work = tmp_path / "p.png.longgen"
    assert sorted(p.name for p in work.glob("strip_*.png")) == ["strip_00000.png", "strip_00001.png"]
    info = _pipelined(2, [*PANORAMA, "--resume"], out)
    assert info["pipeline"]["first_window"] == 2 and out.read_bytes() == ref.read_bytes()
