"""360-degree panoramas on the builtin image prior: the seam across the wrap edge against the
interior window boundaries, with bootstrap 95% CIs over seeds.

The CLI's panorama defaults (ALM, 50 steps, trajectory, feathered overlaps), 2048 x 512 px in
512-px windows: ``--loop`` plans 6 windows spaced evenly around the circle (``plan_loop``), the
last one observing its left neighbour and the first window. ``longgen.stitch.seam_score`` on the
final latent: at each interior boundary (where a window's new content begins) and across the
wrap edge (the canvas rolled by half, so the edge is inside). For contrast, the same edge of the
panorama made without ``--loop`` (5 windows): there it joins the two unrelated ends. Prints one
JSON object::

    python benchmarks/loop_seams.py [--seeds 16] [--steps 50] [--width 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longgen.builtin import image_prior  # noqa: E402
from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.modalities.glue import builtin_scheduler  # noqa: E402
from longgen.modalities.image.jobs import panorama_plan  # noqa: E402
from longgen.priors import PriorDenoiser  # noqa: E402
from longgen.stitch.seams import seam_score  # noqa: E402

from flux_positions import boot_ci  # noqa: E402


def canvas_of(plan, steps: int, seed: int) -> torch.Tensor:
    sch = builtin_scheduler()
    den = PriorDenoiser.for_scheduler(image_prior(height=64, width=plan.window), sch)
    eng = Engine(den, sch, plan, (4, 64, plan.window), -1,
                 EngineConfig(steps=steps, blend="feather", seed=seed))
    out = torch.zeros(4, 64, plan.length, dtype=torch.float64)
    for c in eng:
        out[..., c.start:c.stop] = c.latent
    return out


def edge_score(x: torch.Tensor) -> float:
    L = x.shape[-1]
    return seam_score(torch.roll(x, L // 2, dims=-1), [L // 2], -1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=2048)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    loop = panorama_plan(a.width, 512, 512, 384, 8, loop=True)
    flat = panorama_plan(a.width, 512, 512, 384, 8)
    bounds = [loop.windows[k - 1].stop for k in range(1, len(loop))]
    inner = [[] for _ in bounds]
    wrap, flat_edge, flat_inner = [], [], []
    for seed in range(a.seeds):
        x = canvas_of(loop, a.steps, seed)
        for k, b in enumerate(bounds):
            inner[k].append(seam_score(x, [b], -1))
        wrap.append(edge_score(x))
        y = canvas_of(flat, a.steps, seed)
        flat_edge.append(edge_score(y))
        flat_inner.append(seam_score(y, [w.start + w.new_from for w in flat.windows[1:]], -1))
    t = lambda v: boot_ci(torch.tensor(v, dtype=torch.float64))  # noqa: E731
    every = [s for row in inner for s in row]
    out = {
        "setup": {"panorama_px": [a.width, 512], "window_px": 512, "stride_px": 384,
                  "steps": a.steps, "seeds": a.seeds, "method": "alm", "blend": "feather",
                  "loop_starts_latent": [w.start for w in loop.windows], "loop_hold_latent": loop.hold,
                  "interior_boundaries_latent": bounds},
        "loop": {"wrap_edge": t(wrap), "interior_per_boundary": [t(v) for v in inner],
                 "interior_range": [min(every), max(every)]},
        "no_loop": {"edge": t(flat_edge), "interior_all": t(flat_inner)},
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
