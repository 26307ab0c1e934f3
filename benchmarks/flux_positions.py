"""FLUX windows with their own image positions (ids from 0) or their place on the canvas: seam
score at the window boundaries of an ALM panorama, with bootstrap 95% CIs over seeds.

The tiny random FLUX transformer of the tests (random weights: this says what the position
choice does to the sampler's stitching, not what a trained model draws), a 128 x 32 px panorama
in 5 windows of 32 px at a 16-px stride, the CLI's defaults (ALM, paste), random text
conditions. ``longgen.stitch.seam_score`` on the final latent: 1 = no trace of the boundaries.
Prints one JSON object::

    python benchmarks/flux_positions.py [--seeds 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.denoiser import FlowDenoiser  # noqa: E402
from longgen.stitch.seams import seam_score, window_boundaries  # noqa: E402
from longgen.modalities.image.flux import FluxScheduling, FluxVelocity  # noqa: E402
from longgen.modalities.image.jobs import panorama_plan  # noqa: E402

from flux_panorama_time import SIZES  # noqa: E402


def boot_ci(values: torch.Tensor, reps: int = 1000, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    n = values.numel()
    means = torch.stack([values[torch.randint(0, n, (n,), generator=g)].mean() for _ in range(reps)])
    return [float(values.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    cfg, (H, W, win), f, n_text = SIZES["tiny"]
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(**cfg).eval()
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    plan = panorama_plan(W, H, win, win // 2, f, 2 * f)
    bounds = window_boundaries([w.start for w in plan.windows], [plan.window] * len(plan))
    g = torch.Generator().manual_seed(1)
    base = {"prompt_embeds": torch.randn(1, n_text, cfg["joint_attention_dim"], generator=g),
            "pooled": torch.randn(1, cfg["pooled_projection_dim"], generator=g)}
    out = {"setup": {"panorama_px": [W, H], "window_px": win, "windows": len(plan), "steps": a.steps,
                     "seeds": a.seeds, "boundaries_latent": bounds}}
    for positions in ("local", "canvas"):
        scores = []
        for seed in range(a.seeds):
            vel = FluxVelocity(tr, 3.5)

            def window_cond(w, positions=positions):
                c = dict(base)
                if positions == "canvas":
                    c["col0"] = torch.tensor([w.start // 2])
                return c, None
            eng = Engine(FlowDenoiser(vel), FluxScheduling(sched, (H // (2 * f)) * (win // (2 * f))), plan,
                         (cfg["in_channels"] // 4, H // f, win // f), -1,
                         EngineConfig(method="alm", steps=a.steps, seed=seed), window_cond=window_cond)
            lat = torch.cat([c.latent for c in eng], -1)
            scores.append(seam_score(lat, bounds, -1))
        out[positions] = {"seam_score": boot_ci(torch.tensor(scores, dtype=torch.float64))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
