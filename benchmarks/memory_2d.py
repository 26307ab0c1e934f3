"""Peak memory against canvas HEIGHT (2-D canvases), longgen against diffusers' MultiDiffusion.

A canvas taller than the window is sampled as a grid, band by band (``longgen.grid``), and written
as PNG bands: the peak should not grow with the height (target: <= 1.2x at 4x the height).
Each run is a fresh process reading its own high-water mark (VmHWM), one thread.

* builtin prior, ``longgen panorama --width 2048 --height H --steps 5`` for H = 512 (one band,
  the 1-D path), 2048 (4x) and 4096 (8x);
* tiny random SD (tests/fixtures/tiny_sd.py, 128-px windows), 1024 px wide, H = 256 (1x), 1024
  (4x), 2048 (8x), longgen (ALM, group 1) against ``StableDiffusionPanoramaPipeline`` with the
  same components (it tiles views over both axes -- 16-latent views at a stride of 8 here -- and
  holds and decodes the whole canvas at once).

Prints JSON and writes ``benchmarks/results/memory_2d.json``::

    python benchmarks/memory_2d.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import memory  # noqa: E402
import memory_sd  # noqa: E402


def ratios(rows: list[dict], key: str) -> list[dict]:
    base = rows[0]
    for r in rows:
        r["height_x"] = round(r[key] / base[key], 2)
        r["rss_ratio"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_2d.json")
    a = ap.parse_args()
    from tests.fixtures.tiny_sd import make_tiny_sd

    report = {"steps": a.steps, "threads": 1, "machine": "2-core CPU", "builtin": [], "tiny_sd": {}}
    for h in (512, 2048, 4096):
        row = memory.run_one("panorama", ["--height"], h, ["--width", "2048", "--steps", str(a.steps)], "p.png")
        row["height"] = row.pop("length")
        report["builtin"].append(row)
        print("builtin", json.dumps(row), file=sys.stderr, flush=True)
    ratios(report["builtin"], "height")
    with tempfile.TemporaryDirectory() as d:
        model = make_tiny_sd(Path(d) / "tiny_sd")
        for which in ("longgen", "diffusers"):
            rows = []
            for h in (256, 1024, 2048):
                rows.append(memory_sd.run_one(which, model, 1024, h, a.steps, stride_div=2))
                print(which, json.dumps(rows[-1]), file=sys.stderr, flush=True)
            report["tiny_sd"][which] = ratios(rows, "height")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
