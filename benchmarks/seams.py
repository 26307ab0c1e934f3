"""Seam scores of the builtin image and video priors per method, with bootstrap 95% CIs over
seeds, as JSON; ``--plot`` draws them (``benchmarks/results/seams.png``).

* image: 2048 x 512 px from 512-px windows at a 384-px stride (the CLI's default panorama),
  50 DDIM steps, group 1. ``alm`` is the CLI's default (observed ``matched``, pasted, w1 = 2);
  the other ALM rows change one or more of those (the previous default: trajectory, feathered,
  w1 = 1; the released merge: trajectory, pasted); SyncSDE and replacement with the same
  defaults; MultiDiffusion (``longgen.samplers.multidiffusion``, views of one window at a stride
  of 1/8 window); ``exact``: samples of the prior over the whole canvas (the floor).
* video: the CLI's default video, 104 frames from 16-frame windows at a stride of 8 (12 windows,
  11 boundaries) at 128 x 128 px (16 x 16 latents), 50 steps, the same rows with plain DDIM
  windows in place of MultiDiffusion; the score along time is ``stitch.temporal_seam_score``
  (frame-to-frame change across boundaries vs inside). ``--video-size 4`` is the earlier, cheaper
  setting (56 frames, 4 x 4 latents), where a boundary's mean over a few seeds is noisy: the exact
  field's own worst boundary is 1.10-1.20 over 8-32 seeds there.

Two figures per boundary, on the final latent (1 = no trace):

* ``seam``: ``stitch.seam_score`` at the position where the previous window ends (the pair
  (b - 1, b)), as ``grid_seams.py`` measures;
* ``near``: the largest mean squared step over the pairs from the overlap's start to 6 positions
  past its end, over the mean of the pairs at least 6 positions from any overlap. It catches a
  jump moved elsewhere by the merge and the rough first generated positions of a window.

``seam_per_boundary``: each boundary's seam averaged over seeds; ``seam_worst_boundary_mean``
its largest (the issue's "at every window boundary").

    python benchmarks/seams.py [--seeds 8] [--plot]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from flux_positions import boot_ci  # noqa: E402
from longgen.denoiser import Evaluator  # noqa: E402
from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.planner import plan_windows  # noqa: E402
from longgen.samplers import multidiffusion  # noqa: E402
from longgen.schedule import make_schedule  # noqa: E402
from longgen.stitch.seams import seam_score  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# name -> EngineConfig overrides of the CLI's panorama / video defaults (observed "matched",
# pasted, w1 = 2); "multidiffusion" and "exact" are not engine runs
DEFAULTS = dict(method="alm", observed="matched", blend="paste", w1=2.0)
METHODS = {
    "alm": {},
    "alm/matched,w1=1": {"w1": 1.0},
    "alm/trajectory,feather (before)": {"observed": "trajectory", "blend": "feather", "w1": 1.0},
    "alm/trajectory,paste (released)": {"observed": "trajectory", "blend": "paste", "w1": 1.0},
    "syncsde": {"method": "syncsde"},
    "replace": {"method": "replace"},
}
IMAGE = {**METHODS, "multidiffusion": None, "exact": None}
VIDEO = {**METHODS, "ddim": {"method": "ddim"}, "exact": None}


def boundary_figures(x: torch.Tensor, plan, axis: int) -> tuple[list[float], list[float]]:
    """Per boundary: (seam, near) of one output ``x`` (long axis ``axis``)."""
    e = torch.diff(x.double(), dim=axis).pow(2).movedim(axis, 0).reshape(x.shape[axis] - 1, -1).mean(1)
    wins = plan.windows
    far = torch.ones_like(e, dtype=torch.bool)
    for prev, w in zip(wins, wins[1:]):
        far[max(0, w.start - 6):prev.stop + 6] = False
    base = e[far].mean()
    seam = [seam_score(x, [prev.stop], axis) for prev, w in zip(wins, wins[1:])]
    near = [float(e[w.start - 1 if w.start else 0:prev.stop + 6].max() / base) for prev, w in zip(wins, wins[1:])]
    return seam, near


def image_run(name: str, cfg, seed: int, steps: int, den, sch, plan, prior) -> torch.Tensor:
    if name == "exact":   # the prior over the whole canvas: what seamless windows would give
        return prior(plan.length).sample(1, torch.Generator().manual_seed(1000 + seed))[0][0].float()
    if name == "multidiffusion":
        g = torch.Generator().manual_seed(seed)
        y = torch.randn(1, 4, 64, plan.length, generator=g)
        views = list(range(0, plan.length - plan.window + 1, plan.window // 8))
        return multidiffusion(Evaluator(den), make_schedule(sch, steps), y, views, plan.window, -1)[0]
    eng = Engine(den, sch, plan, (4, 64, plan.window), -1,
                 EngineConfig(steps=steps, seed=seed, **{**DEFAULTS, **cfg}))
    return torch.cat([c.latent for c in eng], dim=-1)


def video_run(name: str, cfg, seed: int, steps: int, den, sch, plan, prior, size: int) -> torch.Tensor:
    if name == "exact":
        return prior(plan.length).sample(1, torch.Generator().manual_seed(1000 + seed))[0][0].float()
    eng = Engine(den, sch, plan, (4, plan.window, size, size), -3,
                 EngineConfig(steps=steps, seed=seed, **{**DEFAULTS, **cfg}))
    return torch.cat([c.latent for c in eng], dim=-3)


def collect(run, methods: dict, seeds: int, plan, axis: int, **kw) -> dict:
    out = {}
    for name, cfg in methods.items():
        seam, near = [], []
        for seed in range(seeds):
            s, n = boundary_figures(run(name, cfg, seed, plan=plan, **kw), plan, axis)
            seam.append(s)
            near.append(n)
        seam_t, near_t = torch.tensor(seam), torch.tensor(near)      # (seeds, boundaries)
        per_boundary = seam_t.mean(0)
        out[name] = {"seam": boot_ci(seam_t.flatten()), "near": boot_ci(near_t.flatten()),
                     "seam_per_boundary": [round(float(v), 4) for v in per_boundary],
                     "seam_worst_boundary_mean": float(per_boundary.max())}
        print(name, json.dumps({k: out[name][k] for k in ("seam", "near", "seam_worst_boundary_mean")}),
              file=sys.stderr, flush=True)
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    for ax, (mod, rows) in zip(axes, [(k, res[k]) for k in ("image", "video")]):
        names = list(rows)
        for j, key in enumerate(("seam", "near")):
            m = [rows[n][key][0] for n in names]
            lo = [rows[n][key][0] - rows[n][key][1] for n in names]
            hi = [rows[n][key][2] - rows[n][key][0] for n in names]
            ax.bar([i + 0.38 * j for i in range(len(names))], m, 0.38, yerr=[lo, hi], capsize=3,
                   label=key, log=True)
        ax.axhline(1.2, ls="--", c="k", lw=0.8)
        ax.set_xticks([i + 0.19 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{mod}: seam score (1 = no trace; dashed 1.2)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--plot", action="store_true")
    p.add_argument("--only", choices=("image", "video"), default=None,
                   help="measure one modality; with --plot the other's figures are kept from seams.json")
    p.add_argument("--video-size", type=int, default=16, help="video latent side (default: the CLI's 16 = 128 px)")
    a = p.parse_args(argv)
    from longgen.builtin import image_prior, video_prior
    from longgen.modalities.glue import builtin_scheduler
    from longgen.priors import PriorDenoiser

    t0 = time.time()
    sch = builtin_scheduler()
    res = {"setup": {"seeds": a.seeds, "steps": a.steps, "ci": "95% bootstrap over boundaries x seeds"}}
    if a.only and a.plot and (RESULTS / "seams.json").is_file():   # keep the other modality's figures
        res = {**json.loads((RESULTS / "seams.json").read_text()), **res}
    if a.only != "video":
        img_den = PriorDenoiser.for_scheduler(image_prior(height=64, width=64), sch)
        res["image"] = collect(image_run, IMAGE, a.seeds, plan_windows(256, 64, 48), -1,
                               steps=a.steps, den=img_den, sch=sch,
                               prior=lambda n: image_prior(height=64, width=n))
        res["setup"]["image_seeds"] = a.seeds
    if a.only != "image":
        v = a.video_size
        vid_den = PriorDenoiser.for_scheduler(video_prior(frames=16, height=v, width=v), sch)
        frames = 104 if v == 16 else 56
        res["video"] = collect(video_run, VIDEO, a.seeds, plan_windows(frames, 16, 8), -3,
                               steps=a.steps, den=vid_den, sch=sch, size=v,
                               prior=lambda n: video_prior(frames=n, height=v, width=v))
        res["setup"].update(video_seeds=a.seeds, video_frames=frames, video_latent=[v, v])
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    if a.plot:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "seams.json").write_text(json.dumps(res, indent=1) + "\n")
        plot(res, RESULTS / "seams.png")
    return res


if __name__ == "__main__":
    main()
