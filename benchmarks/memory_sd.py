"""Peak memory against panorama width with the tiny random SD model, longgen against diffusers.

Each run is a fresh Python process that reads its own high-water mark (VmHWM in
/proc/self/status; ru_maxrss can carry the parent's over fork/exec). Widths are 1x, 4x and 16x of
a 4-window-equivalent panorama: the tiny UNet's window is 128 px (16 latents), so 512, 2048 and
8192 px at a height of 128 px.

* ``longgen``: ``longgen panorama --model <tiny SD on disk>`` (ALM, group 1, trajectory; the
  engine keeps one window, the canvas tail and the decoder halo; PNG strips streamed to disk).
* ``diffusers``: ``StableDiffusionPanoramaPipeline`` (MultiDiffusion, views of 16 latents at a
  stride of 2, ``view_batch_size=1``) with the same components, whole-canvas latents and one
  whole-canvas VAE decode, the image saved as one PNG.

The model is saved once (``make_tiny_sd``) and loaded by both from disk. Prints JSON and writes
``benchmarks/results/memory_sd.json``::

    python benchmarks/memory_sd.py [--steps 5] [--widths 512 2048 8192]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

HWM = ('hwm = next(int(l.split()[1]) for l in open("/proc/self/status") '
       'if l.startswith("VmHWM:"))\n')

LONGGEN = r"""
import json, sys, torch
torch.set_num_threads(1)
from longgen.cli import main
rc = main(sys.argv[1:])
""" + HWM + r"""print(json.dumps({"rc": rc, "hwm_kib": hwm}))
"""

DIFFUSERS = r"""
import functools, json, sys, torch
torch.set_num_threads(1)
from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline
model, width, height, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
div = int(sys.argv[6]) if len(sys.argv) > 6 else 8   # view stride = window / div
pipe = StableDiffusionPanoramaPipeline.from_pretrained(model, safety_checker=None,
                                                       feature_extractor=None,
                                                       requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
P = pipe.unet.config.sample_size
pipe.get_views = functools.partial(StableDiffusionPanoramaPipeline.get_views, pipe,
                                   window_size=P, stride=P // div)
img = pipe("a wide mountain lake panorama", height=height, width=width, num_inference_steps=steps,
           guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
img.save(out)
""" + HWM + r"""print(json.dumps({"rc": 0, "hwm_kib": hwm}))
"""


def run_one(which: str, model: Path, width: int, height: int, steps: int, stride_div: int = 8) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "p.png"
        if which == "longgen":
            cmd = [sys.executable, "-c", LONGGEN, "panorama", "--model", str(model),
                   "--width", str(width), "--height", str(height), "--steps", str(steps),
                   "--prompt", "a wide mountain lake panorama", "--out", str(out), "--no-progress"]
        else:
            cmd = [sys.executable, "-c", DIFFUSERS, str(model), str(width), str(height), str(steps),
                   str(out), str(stride_div)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"width": width, "height": height, "peak_rss_mib": round(res["hwm_kib"] / 1024, 1),
                "wall_s": round(wall, 2), "png_bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_sd.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tiny_sd import make_tiny_sd

    report = {"steps": a.steps, "height": a.height, "threads": 1,
              "machine": "shared 2-core CPU, other jobs running", "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        model = make_tiny_sd(Path(d) / "tiny_sd")
        for which in ("longgen", "diffusers"):
            rows = []
            for w in a.widths:
                rows.append(run_one(which, model, w, a.height, a.steps))
                print(which, json.dumps(rows[-1]), file=sys.stderr, flush=True)
            base = rows[0]
            for r in rows:
                r["width_x"] = round(r["width"] / base["width"], 2)
                r["rss_ratio"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
                r["time_ratio"] = round(r["wall_s"] / base["wall_s"], 3)
            report["runs"][which] = rows
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
