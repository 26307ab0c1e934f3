"""360-degree panoramas on the tiny random SD: longgen ``--loop`` (ALM) against diffusers'
``StableDiffusionPanoramaPipeline(circular_padding=True)`` (MultiDiffusion with views that wrap
and a circular decode), seam score across the wrap edge and at interior boundaries, wall time.

Both from the same tiny checkpoint (tests/fixtures/tiny_sd.py, random weights: this compares how
the two close a loop, not what a trained model draws), 384 x 128 px, DDIM, 4 steps, guidance 7.5,
one thread; diffusers with 16-latent views at a stride of 8 (its default stride is 8 of 64).
The pixel seam score across the wrap edge is taken on the image rolled by half; interior: at the
boundaries of longgen's windows. Prints JSON::

    python benchmarks/loop_peer.py [--seeds 6]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from flux_positions import boot_ci  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=6)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers import StableDiffusionPanoramaPipeline

    from longgen.modalities.image.sd import ddim_from, load_sd
    from longgen.modalities.image.jobs import panorama, panorama_plan
    from longgen.stitch import seam_score
    from tests.fixtures.tiny_sd import make_tiny_sd

    prompt, W, H = "a wide mountain lake panorama", 384, 128
    plan = panorama_plan(W, H, 128, 96, 8, loop=True)
    bounds = [plan.windows[k - 1].stop * 8 for k in range(1, len(plan))]

    def seams(img) -> tuple[float, list[float]]:
        x = torch.tensor(np.asarray(img), dtype=torch.float64).permute(2, 0, 1)
        return seam_score(torch.roll(x, W // 2, dims=-1), [W // 2], -1), [seam_score(x, [b], -1) for b in bounds]

    out = {"setup": {"px": [W, H], "window_px": 128, "steps": 4, "guidance": 7.5, "seeds": a.seeds}}
    with tempfile.TemporaryDirectory() as d:
        path = make_tiny_sd(Path(d) / "sd")
        sd = load_sd(path)
        pipe = StableDiffusionPanoramaPipeline.from_pretrained(str(path), safety_checker=None,
                                                               feature_extractor=None, requires_safety_checker=False)
        pipe.scheduler = ddim_from(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.get_views = functools.partial(StableDiffusionPanoramaPipeline.get_views, pipe, window_size=16, stride=8)
        runs = {
            "longgen_alm_loop": lambda s: panorama(sd, prompt, W, H, steps=4, seed=s, loop=True),
            "diffusers_circular": lambda s: pipe(prompt, height=H, width=W, num_inference_steps=4, guidance_scale=7.5,
                                                 circular_padding=True,
                                                 generator=torch.Generator().manual_seed(s)).images[0],
        }
        for name, run in runs.items():
            wrap, inner, secs = [], [], []
            for s in range(a.seeds):
                t0 = time.perf_counter()
                img = run(s)
                secs.append(time.perf_counter() - t0)
                w, i = seams(img)
                wrap.append(w)
                inner += i
            out[name] = {"wrap_edge": boot_ci(torch.tensor(wrap, dtype=torch.float64)),
                         "interior": boot_ci(torch.tensor(inner, dtype=torch.float64)),
                         "seconds_per_image": round(float(np.median(secs)), 3)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
