"""2-D canvases: seam scores across the column boundaries (windows side by side) and the row
boundaries (bands one above the other), with bootstrap 95% CIs over seeds; the 1-D panorama of
the same width for comparison.

* builtin prior: 2048 x 1536 px from 512-px windows (4 bands x 5 windows), the CLI's defaults
  (ALM, 50 steps, trajectory, feathered); 1-D: 2048 x 512.
* tiny random SD (tests/fixtures/tiny_sd.py; random weights, so this says what the grid does to
  the stitching, not what a trained model draws): 512 x 384 px from its 128-px windows
  (4 bands x 5 windows), 4 steps, guidance 7.5, one prompt; 1-D: 512 x 128.

``longgen.stitch.seam_score`` on the final latent, per boundary (1 = no trace). The builtin prior
is not stationary down the window (sky above, ground below), so a band's top rows are asked to
continue the band above's ground: a harder condition than a left neighbour. Prints JSON::

    python benchmarks/grid_seams.py [--seeds 8] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from longgen.engine import EngineConfig  # noqa: E402
from longgen.grid import GridPlan  # noqa: E402
from longgen.stitch.seams import seam_score  # noqa: E402

from flux_positions import boot_ci  # noqa: E402


def scores(latent: torch.Tensor, plan) -> dict:
    cols = plan.cols if isinstance(plan, GridPlan) else plan
    out = {"columns": [seam_score(latent, [cols.windows[k - 1].stop], -1) for k in range(1, len(cols))]}
    if isinstance(plan, GridPlan):
        rows = plan.rows.windows
        out["rows"] = [seam_score(latent, [rows[k - 1].stop], -2) for k in range(1, len(rows))]
    return out


def collect(run, plans: dict, seeds: int) -> dict:
    res = {}
    for name, plan in plans.items():
        per = {}
        for seed in range(seeds):
            for kind, vals in scores(run(plan, seed), plan).items():
                per.setdefault(kind, []).extend(vals)
        res[name] = {k: boot_ci(torch.tensor(v, dtype=torch.float64)) for k, v in per.items()}
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from longgen.builtin import image_prior
    from longgen.modalities.glue import builtin_scheduler
    from longgen.modalities.image.sd import load_sd
    from longgen.modalities.image.jobs import canvas_engine, canvas_plan, panorama_parts
    from longgen.priors import PriorDenoiser
    from tests.fixtures.tiny_sd import make_tiny_sd

    t0 = time.time()
    sch = builtin_scheduler()

    def builtin(plan, seed):
        h = plan.rows.window if isinstance(plan, GridPlan) else 64
        den = PriorDenoiser.for_scheduler(image_prior(height=h, width=64), sch)
        eng = canvas_engine(den, sch, plan, 4, h, EngineConfig(steps=a.steps, blend="feather", seed=seed),
                            lambda i, y0, w: (None, None))
        return _canvas(eng, plan)

    out = {"setup": {"seeds": a.seeds, "builtin_steps": a.steps, "sd_steps": 4, "method": "alm",
                     "blend": "feather", "observed": "trajectory"}}
    out["builtin"] = collect(builtin, {"1d_2048x512": canvas_plan(2048, 512, 512, 384, 8),
                                       "2d_2048x1536": canvas_plan(2048, 1536, 512, 384, 8)}, a.seeds)
    with tempfile.TemporaryDirectory() as d:
        sd = load_sd(make_tiny_sd(Path(d) / "sd"))

        def tiny(plan, seed):
            H = 128 if not isinstance(plan, GridPlan) else plan.rows.length * 8
            eng, _ = panorama_parts(sd, ["a wide mountain lake panorama"], 512, H,
                                    EngineConfig(steps=4, guidance_scale=7.5, blend="feather", seed=seed))
            return _canvas(eng, plan)

        out["tiny_sd"] = collect(tiny, {"1d_512x128": canvas_plan(512, 128, 128, 96, 8),
                                        "2d_512x384": canvas_plan(512, 384, 128, 96, 8)}, a.seeds)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    return out


def _canvas(eng, plan) -> torch.Tensor:
    grid = isinstance(plan, GridPlan)
    parts = [c.latent for c in eng if c.latent.shape[-2 if grid else -1] > 0]
    return torch.cat(parts, dim=-2 if grid else -1).double()


if __name__ == "__main__":
    main()
