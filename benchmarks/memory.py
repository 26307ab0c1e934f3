"""Peak memory against output length on the builtin priors (one fresh process per run).

Prints JSON: for each modality and length, the peak RSS (MiB) of a `longgen` CLI run, its wall
time, and the ratios to the 1x length. The streaming engine keeps G windows, the canvas tail and
the decoder halo in memory, so the peak should not grow with the length (target: <= 1.2x at 16x)
and the time should grow linearly.

    python benchmarks/memory.py            # panorama 2048/8192/32768 px, video 104/416/1664 frames,
                                           # motion 196/784/3136 frames
    python benchmarks/memory.py --quick    # 1x and 4x only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the child's own high-water mark (VmHWM); ru_maxrss can carry the parent's over fork/exec
CHILD = r"""
import json, sys
from longgen.cli import main
rc = main(sys.argv[1:])
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "maxrss_kib": hwm}))
"""

CASES = {
    "panorama": (["--width"], [2048, 8192, 32768], ["--height", "512", "--steps", "5"], "p.png"),
    "video": (["--frames"], [104, 416, 1664], ["--steps", "5", "--height", "128", "--width", "128"], "v.mp4"),
    "motion": (["--frames"], [196, 784, 3136], ["--steps", "50", "--keyframes", "every:10"], "m.npy"),
}


def run_one(modality: str, flag: list[str], length: int, extra: list[str], name: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / name
        args = [modality, *flag, str(length), *extra, "--out", str(out), "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        summary = json.loads(proc.stdout.strip().splitlines()[-2])
        return {"length": length, "peak_rss_mib": round(res["maxrss_kib"] / 1024, 1),
                "wall_s": round(wall, 2), "windows": summary["windows"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1x and 4x lengths only")
    p.add_argument("--only", choices=list(CASES), nargs="*")
    args = p.parse_args()
    report = {}
    for modality, (flag, lengths, extra, name) in CASES.items():
        if args.only and modality not in args.only:
            continue
        rows = [run_one(modality, flag, n, extra, name) for n in (lengths[:2] if args.quick else lengths)]
        base = rows[0]
        for r in rows:
            r["rss_ratio"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
            r["time_per_window_s"] = round(r["wall_s"] / r["windows"], 3)
        report[modality] = rows
        print(json.dumps({modality: rows}), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
