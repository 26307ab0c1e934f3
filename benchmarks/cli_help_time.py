"""How long ``longgen --help`` and ``longgen <cmd> --help`` take, each in a fresh interpreter.

Every command is run ``--runs`` times (default 5) as ``python -m longgen.cli ... --help`` in a new
subprocess (so nothing is cached in-process; the OS file cache is warm after the first run) and the
median wall time in seconds is printed as JSON, with the modules that help imported (none of
torch, diffusers, transformers, av should be among them). Usage::

    python benchmarks/cli_help_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = ([], ["panorama"], ["inpaint"], ["video"], ["motion"])
HEAVY = ("torch", "diffusers", "transformers", "av", "scipy", "trimesh", "smplx")


def time_help(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "longgen.cli", *argv, "--help"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imported() -> list[str]:
    code = ("import sys, contextlib, io, longgen.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        longgen.cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def measure(runs: int = 5) -> dict[str, float]:
    """``{"longgen --help": seconds, "longgen panorama --help": seconds, ...}`` (medians)."""
    return {" ".join(["longgen", *argv, "--help"]): round(time_help(list(argv), runs), 3) for argv in COMMANDS}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    print(json.dumps({"median_s": measure(a.runs), "runs": a.runs, "heavy_modules_imported": heavy_imported(),
                      "python": sys.version.split()[0]}, indent=1))
