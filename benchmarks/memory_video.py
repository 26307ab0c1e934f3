"""Peak memory of ``longgen video`` against the output length: does streaming keep it flat?

Each length runs the CLI on the builtin video prior in a FRESH subprocess (so peaks do not carry
over) and reads that process's peak resident set size (``ru_maxrss``). The peer is the 104-frame
run (the paper's LaVie length): the figure of merit is peak(N) / peak(104), which should stay near
1 (target <= 1.2 at 1000 frames) because the engine keeps one window group, the canvas tail and one
decode chunk in memory, and the writer puts finished frames on disk. The temporal seam score
(stitch.temporal_seam_score: mean squared frame step across window starts / inside windows; ~1
means no visible seams) of each finished video is reported beside it, read back from the mp4.

    python benchmarks/memory_video.py [--lengths 104 416 1000 1664] [--steps 5] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image's own memory.
    ``ru_maxrss`` is not used there: Linux carries it across fork + exec, so a child would report
    its parent's peak whenever the parent was larger (it did here: the driver reading back a
    1664-frame video set the "peak" of every later child). Elsewhere ``ru_maxrss`` (KiB on Linux
    and BSD, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def child(frames: int, steps: int, size: int, out: str) -> None:
    """Run one job in this process and print its peak RSS (MiB) and the peak after imports."""
    import longgen.cli  # noqa: F401  (imports counted in the baseline)
    import longgen.modalities.video.plugin  # noqa: F401

    base = peak_rss_mib()
    t0 = time.perf_counter()
    rc = longgen.cli.main(["video", "--frames", str(frames), "--steps", str(steps), "--height", str(size),
                           "--width", str(size), "--out", out, "--no-progress", "--overwrite"])
    wall = time.perf_counter() - t0
    peak = peak_rss_mib()
    print("RESULT " + json.dumps({"rc": rc, "peak_rss_mib": peak, "after_imports_mib": base, "wall_s": wall}))


def run_length(frames: int, steps: int, size: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--child", str(frames), "--steps", str(steps), "--size", str(size),
           "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"{frames}-frame run failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def seam_of(path: Path, frames: int) -> float:
    """temporal_seam_score of the written video at the windows' first new frames."""
    import torch

    from longgen.planner import plan_windows
    from longgen.modalities.video.writers import read_video
    from longgen.stitch import temporal_seam_score

    video = torch.from_numpy(read_video(path)[0]).float()            # (F, H, W, 3)
    if len(video) != frames:
        raise RuntimeError(f"{path} has {len(video)} frames, expected {frames}")
    plan = plan_windows(frames, 16, 8)
    bounds = [w.start + w.new_from for w in plan.windows[1:]]
    return temporal_seam_score(video, bounds, frame_axis=0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[104, 416, 1000, 1664])
    p.add_argument("--steps", type=int, default=5, help="sampling steps (memory hardly depends on it)")
    p.add_argument("--size", type=int, default=128, help="frame height and width in pixels")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        child(a.child, a.steps, a.size, a.out)
        return {}
    if 104 not in a.lengths:
        a.lengths = [104, *a.lengths]
    from longgen.planner import plan_windows

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {n: Path(tmp) / f"v{n}.mp4" for n in a.lengths}
        for n in a.lengths:  # all memory runs first: this driver stays small while they run
            results[n] = run_length(n, a.steps, a.size, outs[n])
        for n in a.lengths:
            r = results[n]
            r["windows"] = len(plan_windows(n, 16, 8))
            r["mp4_bytes"] = outs[n].stat().st_size
            r["temporal_seam_score"] = seam_of(outs[n], n)
    ref = results[104]["peak_rss_mib"]
    report = {
        "benchmark": "memory_video",
        "model": "builtin", "steps": a.steps, "size": a.size, "window": 16, "stride": 8,
        "runs": {str(n): r for n, r in results.items()},
        "peak_rss_ratio_vs_104": {str(n): r["peak_rss_mib"] / ref for n, r in results.items()},
        "target": "peak_rss_ratio_vs_104['1000'] <= 1.2",
    }
    if 1000 in results:
        report["pass"] = report["peak_rss_ratio_vs_104"]["1000"] <= 1.2
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
