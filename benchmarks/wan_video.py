"""Long video on a tiny random Wan 2.1 checkpoint: peak memory against length, and temporal seams.

The checkpoint is ``tests/fixtures/tiny_wan.py`` (UniPC flow scheduler config as Wan-AI ships it),
saved once and loaded through ``--model PATH`` as a user's would be.

* Memory: ``longgen video --model <tiny Wan>`` at 1x (81 frames, one window) and 16x the native
  length (1281 frames, 321 latent frames, 21 windows), each in a FRESH process reading its own
  high-water mark (``VmHWM``; see ``benchmarks/memory_video.py`` for why not ``ru_maxrss``). The
  engine keeps one window and the canvas tail, the causal decoder its cache and the last latent
  frames its replay needs, the writer puts frames on disk: target peak(16x) / peak(1x) <= 1.2.
* Seams (``stitch.seam_score`` along latent frames at each later window's first new latent
  frame, and ``stitch.temporal_seam_score`` of the decoded frames at the matching frame, mean over
  seeds with a bootstrap 95% CI): ALM with the video defaults; plain windows (``--method ddim``,
  paste: independent windows, the first new frame is where the next one starts); and the averaging
  that ComfyUI's context windows and FreeNoise's window fusion do -- every step, each window takes
  its Euler step and each latent frame becomes the mean of the windows covering it
  (:func:`longgen.samplers.multidiffusion` over latent frames, views at the same stride). A random
  model's content has no meaning; what the figures compare is how each method joins windows.

    python benchmarks/wan_video.py [--steps 20] [--seeds 4] [--memory-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZE = 32
NATIVE = 81
DEFAULTS = dict(w1=2.0, w2=0.001, observed="matched", blend="auto")   # the video plugin's defaults


def child(model: str, frames: int, steps: int, out: str) -> None:
    from memory_video import peak_rss_mib

    import longgen.cli

    base = peak_rss_mib()
    t0 = time.perf_counter()
    rc = longgen.cli.main(["video", "--model", model, "--frames", str(frames), "--steps", str(steps),
                           "--height", str(SIZE), "--width", str(SIZE), "--out", out, "--no-progress",
                           "--overwrite"])
    print("RESULT " + json.dumps({"rc": rc, "peak_rss_mib": peak_rss_mib(), "after_imports_mib": base,
                                  "wall_s": time.perf_counter() - t0}))


def run_child(model: str, frames: int, steps: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--child", model, "--frames", str(frames), "--memory-steps", str(steps),
           "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"{frames}-frame run failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def bootstrap(xs: list[float], n: int = 2000) -> list[float]:
    import numpy as np

    a = np.asarray(xs, dtype=float)
    g = np.random.default_rng(0)
    means = a[g.integers(0, len(a), (n, len(a)))].mean(1)
    return [float(a.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def seams(model_dir: str, frames: int, steps: int, seeds: int) -> dict:
    import torch

    from longgen.denoiser import Evaluator
    from longgen.engine import Engine, EngineConfig
    from longgen.modalities.glue import resolve_blend
    from longgen.planner import plan_windows
    from longgen.samplers import multidiffusion
    from longgen.schedule import make_schedule
    from longgen.stitch import seam_score, temporal_seam_score
    from longgen.modalities.video.wan import WAN_GUIDANCE, load_wan

    m = load_wan(model_dir)
    m.max_sequence_length = 16
    T = m.latent_frames(frames)
    plan = plan_windows(T, m.latent_frames(NATIVE), 16)
    bounds = [w.start + w.new_from for w in plan.windows[1:]]
    cond, uncond = m.encode_prompt("a mountain lake at dawn")
    shape = (m.latent_channels, plan.window, SIZE // 8, SIZE // 8)
    methods = {"alm": dict(method="alm", **DEFAULTS), "plain": dict(method="ddim", blend="paste"),
               "averaging": None}
    out = {}
    for name, cfg in methods.items():
        lat_s, pix_s = [], []
        for seed in range(seeds):
            noise = torch.randn(m.latent_channels, T, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))
            if cfg is None:
                ev = Evaluator(m.denoiser, cond=cond, uncond=uncond, guidance_scale=WAN_GUIDANCE)
                z = multidiffusion(ev, make_schedule(m.scheduler, steps), noise[None], [w.start for w in plan.windows],
                                   plan.window, -3)[0]
            else:
                cfg = {**cfg, "blend": resolve_blend(cfg["blend"], cfg.get("observed", "trajectory"), steps)}
                eng = Engine(m.denoiser, m.scheduler, plan, shape, -3,
                             EngineConfig(steps=steps, seed=seed, guidance_scale=WAN_GUIDANCE, **cfg),
                             cond=cond, uncond=uncond, latents=noise)
                z = torch.cat([c.latent for c in eng], -3)
            lat_s.append(seam_score(z, bounds, -3))
            dec = m.decoder()
            video = dec.push(z)                                               # (3, F, H, W)
            pix_s.append(temporal_seam_score(video, [4 * b - 3 for b in bounds], frame_axis=1))
        out[name] = {"latent_seam": bootstrap(lat_s), "frame_seam": bootstrap(pix_s),
                     "per_seed_latent": lat_s, "per_seed_frame": pix_s}
    return {"frames": frames, "latent_frames": T, "windows": len(plan), "boundaries_latent": bounds,
            "steps": steps, "seeds": seeds, "methods": out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="sampling steps of the seam runs")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seam-frames", type=int, default=241)
    p.add_argument("--memory-steps", type=int, default=3, help="steps of the memory runs")
    p.add_argument("--lengths", type=int, nargs="+", default=[NATIVE, 1 + 16 * (NATIVE - 1)])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=RESULTS / "wan_video.json")
    a = p.parse_args(argv)
    if a.child is not None:
        child(a.child, a.frames, a.memory_steps, a.out)
        return {}
    from tests.fixtures.tiny_wan import build_wan

    with tempfile.TemporaryDirectory() as tmp:
        model = build_wan(tmp)
        runs = {n: run_child(model, n, a.memory_steps, Path(tmp) / f"v{n}.mp4") for n in a.lengths}
        ref = runs[a.lengths[0]]["peak_rss_mib"]
        memory = {"runs": {str(n): r for n, r in runs.items()},
                  "peak_ratio_vs_1x": {str(n): r["peak_rss_mib"] / ref for n, r in runs.items()},
                  "target": "peak_ratio_vs_1x[16x] <= 1.2"}
        memory["pass"] = all(v <= 1.2 for v in memory["peak_ratio_vs_1x"].values())
        report = {"benchmark": "wan_video", "model": "tiny random Wan 2.1 (tests/fixtures/tiny_wan.py)",
                  "size": SIZE, "memory": memory, "seams": seams(model, a.seam_frames, a.steps, a.seeds)}
    print(json.dumps(report, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
