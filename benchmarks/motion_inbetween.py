"""Motion in-betweening on the builtin prior: keyframe error, foot skating and jitter of ALM
against SyncSDE, replacement and unconditional DDPM, through the CLI's own job builder.

Clips are procedural walks the prior was not fitted to (seeds 1000+), keyframes every N frames
(CondMDI's benchmark_sparse, N = 10 by default). Also reports the prior's own samples and the
walks themselves as the floor for skating and jitter, and (for one window, ``--frames 196``) the
prior's EXACT posterior given the keyframes: its most probable component's conditional mean meets
every keyframe exactly, and its skating and jitter show what meeting them costs on this prior
(all 263 features observed at the keyframes make the mask separable, so the conditional is closed
form: the feature covariance cancels, the time covariance is conditioned on the keyframe frames).
``--no-recentre`` samples long motions in absolute coordinates (the CLI's flag).

Longer than one window (the CLI's 196 frames at a stride of 98), each method also gets
``boundary_acceleration_ratio`` (``motion.metrics``; 1 = no trace) at the windows' ends, per clip
and its mean with a normal 95% CI; ``walks_seamless`` is the same figure for ``--reference``
procedural walks that were never windowed: how far one clip's value strays without any seam.
Prints one JSON object.

    python benchmarks/motion_inbetween.py --clips 4 --steps 100
    python benchmarks/motion_inbetween.py --clips 3 --frames 400 --methods alm
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longgen.cli import build_parser, discover
from longgen.run import run_job
from longgen.modalities.motion.builtin import builtin_motion_prior, motion_features
from longgen.modalities.motion.features import recover_from_ric_abs
from longgen.modalities.motion.metrics import boundary_acceleration_ratio, foot_skating_ratio, jitter, keyframe_error
from longgen.modalities.motion.procedural import generate_motions
from longgen.planner import plan_windows


def run_method(method: str, clip: Path, steps: int, every: int, seed: int, out: Path,
               recentre: bool = True) -> dict:
    plugins = discover()
    args = build_parser(plugins).parse_args(
        ["motion", "--input", str(clip), "--out", str(out), "--steps", str(steps), "--method", method,
         "--keyframes", f"every:{every}", "--seed", str(seed), "--no-progress", "--overwrite"]
        + ([] if recentre else ["--no-recentre"]))
    job = plugins["motion"].build_job(args)
    t0 = time.perf_counter()
    run_job(job, overwrite=True)
    return {"joints": np.load(out), "seconds": time.perf_counter() - t0, "forwards": job.engine.forwards}


def prior_figures(n: int = 32, seed: int = 0) -> dict:
    prior, norm = builtin_motion_prior(196)
    x, _ = prior.sample(n, generator=torch.Generator().manual_seed(seed))
    j = recover_from_ric_abs(norm.denormalize(x.transpose(1, 2))).numpy()
    return {"skating_ratio": float(foot_skating_ratio(j).mean()), "jitter": float(jitter(j).mean())}


def exact_posterior_figures(walks, refs, keys) -> dict:
    """Skating and jitter of the prior's exact conditional given the keyframes (one window)."""
    prior, norm = builtin_motion_prior(196)
    T = prior.factors[1][0]
    t_inv = torch.linalg.inv(T[keys][:, keys])
    f_inv = torch.linalg.inv(prior.factors[0][0])
    outs = []
    for w in walks:
        x = norm.normalize(torch.from_numpy(motion_features(w, dataset=False))).T.double()     # (263, 196)
        d = x[:, keys][None] - prior.means[:, :, keys]                          # (K, 263, n_keys)
        quad = torch.einsum("fg,kgo,op,kfp->k", f_inv, d, t_inv, d)             # equal weights, shared det
        k = int(quad.argmin())
        mean = prior.means[k] + d[k] @ t_inv @ T[keys]
        outs.append(recover_from_ric_abs(norm.denormalize(mean.T)).numpy())
    outs = np.stack(outs)
    return {"keyframe_error_m": keyframe_error(outs, np.stack(refs), keys),
            "skating_ratio": float(foot_skating_ratio(outs).mean()), "jitter": float(jitter(outs).mean())}


def seam_figures(joints, stops) -> dict:
    """Boundary acceleration ratio at ``stops`` per clip, and its mean with a normal 95% CI."""
    r = np.array([boundary_acceleration_ratio(j, stops) for j in joints])
    half = 1.96 * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
    return {"boundary_acceleration_ratio": [float(r.mean()), float(r.mean() - half), float(r.mean() + half)],
            "per_clip": [round(float(v), 3) for v in r]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=196)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--methods", default="alm,syncsde,replace,ddpm")
    p.add_argument("--no-recentre", dest="recentre", action="store_false")
    p.add_argument("--reference", type=int, default=24, help="seamless walks for the seam reference (long runs)")
    a = p.parse_args(argv)
    walks = generate_motions(a.clips, a.frames + 1, seed=1000)
    refs = [recover_from_ric_abs(torch.from_numpy(motion_features(w, dataset=False))).numpy() for w in walks]
    keys = list(range(a.frames))[::a.every]
    result = {"setup": vars(a), "walks": {"skating_ratio": float(foot_skating_ratio(np.stack(refs)).mean()),
                                          "jitter": float(jitter(np.stack(refs)).mean())},
              "prior_samples": prior_figures()}
    if a.frames == 196:
        result["exact_posterior"] = exact_posterior_figures(walks, refs, keys)
    stops = [w.stop for w in plan_windows(a.frames, 196, 98).windows[:-1]]
    if stops:
        seamless = [recover_from_ric_abs(torch.from_numpy(motion_features(w, dataset=False))).numpy()
                    for w in generate_motions(a.reference, a.frames + 1, seed=123)]
        result["walks_seamless"] = {"stops": stops, **seam_figures(seamless, stops)}
    with tempfile.TemporaryDirectory() as tmp:
        for m in [m for m in a.methods.split(",") if m]:
            outs, secs, fw = [], 0.0, 0
            for i, w in enumerate(walks):
                clip = Path(tmp) / f"clip{i}.npy"
                np.save(clip, w)
                r = run_method(m, clip, a.steps, a.every, seed=i, out=Path(tmp) / f"{m}{i}.npy",
                               recentre=a.recentre)
                outs.append(r["joints"])
                secs += r["seconds"]
                fw += r["forwards"]
            outs = np.stack(outs)
            result[m] = {"keyframe_error_m": keyframe_error(outs, np.stack(refs), keys),
                         "skating_ratio": float(foot_skating_ratio(outs).mean()),
                         "jitter": float(jitter(outs).mean()),
                         "seconds_per_clip": secs / a.clips, "forwards_per_clip": fw / a.clips,
                         **(seam_figures(outs, stops) if stops else {})}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
