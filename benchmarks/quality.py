"""Sampler quality against exact answers on builtin Gaussian (mixture) priors, with 95% CIs.

Problems (``longgen.priors.SeparableGMM``, latents 1 x 8 x 32, SE kernels of length 2 (rows) and
4 (columns), DDIM 50 steps with SD's betas, one fixed observed sample, the right half generated):

* ``gauss``:   one zero-mean Gaussian;
* ``mixture``: three components with constant means -1.5, 0, +1.5 and the same covariance;
  the observed sample is drawn from component 0.

The exact conditional p(x_gen | x_obs) is ``SeparableGMM.conditional`` (dense). Per method, over
``--seeds`` seeds (initial noise):

* ``observed_rmse``: RMS of (output - observed) on the observed half (mean over seeds, normal CI);
* ``mean_dist``: RMS over generated positions of (sample mean - exact conditional mean);
* ``var_ratio``: mean sample variance / mean exact conditional variance over generated positions;
* ``seam_at_mask``: ``stitch.seam_score`` of the output at the mask's edge (column 16): how
  smoothly the generated half joins the observed one. The observed half is ONE fixed sample, so
  the reference is the ``exact`` row's value, not 1;
* (mixture) ``match_joint``: argmax of ``prior.responsibilities`` on the completed sample equals
  the exact conditional's most likely component; ``match_gen``: the same with the responsibilities
  of the generated half alone under its marginal prior (the observed half cannot vote);
* ``exact`` is the same statistics of samples from the exact conditional: the floor that sampling
  noise leaves (``mean_dist``) and the values an exact sampler gets (``var_ratio`` ~ 1, matches).

``mean_dist`` and ``var_ratio`` CIs are percentile bootstraps over seeds (500 resamples); rates
get normal CIs. MultiDiffusion has no notion of observed content: inside one window it is plain
DDIM (the ``ddim`` row, the unconditioned floor), so it appears only in the windowed runs.

Windowed "panoramas" (the same 1 x 8 x 32 window prior; canvas 104 columns = 4 windows at a
stride of 24; longgen's engine, group 1, observed ``trajectory``, paste): ``seam`` =
``stitch.seam_score`` at the windows' boundaries (1 = no trace), ``canvas_var_ratio`` = per-position
variance over seeds / the prior's marginal variance (1 = as varied as real samples), and for the
mixture ``coherent`` = all windows of a canvas in the same component (by ``responsibilities``).
MultiDiffusion (``longgen.samplers.multidiffusion``) averages views of 32 columns at a stride of 4
(1/8 of the window, diffusers' ratio). The exact reference is a stationary field over the whole
canvas with the same kernels (its windows have exactly the window prior's law). ``alm/feather``
is ALM with the overlap cross-faded (``blend="feather"``, the SD panorama's default) instead of
pasted; ``alm/released-g0-chained`` all windows in one group in the released order;
``alm/matched,w1=W`` observes the previous window's finished overlap noised with the window's own
noise estimate (``observed="matched"``, the panorama and video default, with w1 = 2), pasted.

Also sweeps of ALM's w1 (w2 = 0.001) and w2 (w1 = 1) on the single-window problems.

Prints JSON and writes ``benchmarks/results/quality.json``::

    python benchmarks/quality.py --seeds 256
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import longgen  # noqa: E402
from longgen.builtin import se_kernel  # noqa: E402
from longgen.denoiser import Evaluator, FunctionDenoiser  # noqa: E402
from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.planner import plan_windows  # noqa: E402
from longgen.priors import PriorDenoiser, SeparableGMM  # noqa: E402
from longgen.samplers import multidiffusion  # noqa: E402
from longgen.schedule import make_schedule  # noqa: E402
from longgen.stitch.seams import seam_score, window_boundaries  # noqa: E402

H, W, STEPS = 8, 32, 50
METHODS = ("alm", "alm-fused", "syncsde", "replace", "ddim")
MEANS = (-1.5, 0.0, 1.5)
RESULTS = ROOT / "benchmarks" / "results"
Z = 1.959964  # 95% normal quantile


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def make_prior(kind: str, width: int = W) -> SeparableGMM:
    factors = [torch.ones(1, 1, dtype=torch.float64), se_kernel(H, 2.0), se_kernel(width, 4.0)]
    if kind == "gauss":
        return SeparableGMM(torch.zeros(1, 1, H, width, dtype=torch.float64), factors)
    means = torch.tensor(MEANS, dtype=torch.float64).reshape(-1, 1, 1, 1).expand(-1, 1, H, width)
    return SeparableGMM(means.contiguous(), factors)


def marginal_prior(prior: SeparableGMM, cols: slice) -> SeparableGMM:
    """The prior of a column range: a Kronecker Gaussian's marginal keeps the sub-block."""
    f = prior.factors
    return SeparableGMM(prior.means[..., cols].contiguous(),
                        [f[0], f[1], f[2][:, cols, cols].contiguous()])


# --------------------------------------------------------------------------- statistics


def normal_ci(v: torch.Tensor) -> list[float]:
    m, s = v.mean().item(), v.std().item() / math.sqrt(len(v))
    return [m, m - Z * s, m + Z * s]


def rate_ci(hits: torch.Tensor) -> list[float]:
    p, n = hits.double().mean().item(), len(hits)
    s = math.sqrt(max(p * (1 - p), 1e-12) / n)
    return [p, max(0.0, p - Z * s), min(1.0, p + Z * s)]


def boot_ci(stat, n: int, reps: int = 500, seed: int = 0) -> list[float]:
    """Percentile bootstrap over seeds of ``stat(index)``; first entry = the full-sample value."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([stat(torch.randint(0, n, (n,), generator=g)) for _ in range(reps)])
    return [stat(torch.arange(n)), vals.quantile(0.025).item(), vals.quantile(0.975).item()]


def rounded(d):
    if isinstance(d, dict):
        return {k: rounded(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [rounded(v) for v in d]
    return round(d, 5) if isinstance(d, float) else d


# --------------------------------------------------------------------------- single window


def problem(kind: str) -> dict:
    prior, sch = make_prior(kind), scheduler()
    g = torch.Generator().manual_seed(123)
    if kind == "gauss":
        x, _ = prior.sample(1, g)
    else:  # a sample of component 0
        x = prior._rotate(torch.randn(1, 1, H, W, dtype=torch.float64, generator=g)
                          * prior.lam[0].sqrt(), 0, inverse=True) + prior.means[0]
    mask = torch.zeros(1, 1, H, W, dtype=torch.float64)
    mask[..., W // 2:] = 1
    w, mu, cov = prior.conditional(x[0], mask[0])
    mean = (w[:, None] * mu).sum(0)                                           # (G,)
    var = (w[:, None] * (cov.diagonal(dim1=1, dim2=2) + mu ** 2)).sum(0) - mean ** 2
    return dict(kind=kind, prior=prior, sch=sch, den=PriorDenoiser.for_scheduler(prior, sch), x=x,
                mask=mask, w=w, mu=mu, cov=cov, mean=mean, var=var,
                k_obs=int(w.argmax()), gen_prior=marginal_prior(prior, slice(W // 2, W)))


def exact_samples(p: dict, n: int) -> torch.Tensor:
    """n completed samples: observed half = x, generated half ~ the exact conditional."""
    g = torch.Generator().manual_seed(7)
    comp = torch.multinomial(p["w"], n, replacement=True, generator=g)
    G = p["mu"].shape[1]
    chol = torch.linalg.cholesky(p["cov"] + 1e-10 * torch.eye(G, dtype=torch.float64))
    z = torch.randn(n, G, dtype=torch.float64, generator=g)
    gen = p["mu"][comp] + (chol[comp] @ z[..., None])[..., 0]
    out = p["x"].expand(n, -1, -1, -1).clone()
    m = p["mask"][0].bool()
    out[:, m] = gen
    return out


def single_metrics(p: dict, out: torch.Tensor) -> dict:
    n = out.shape[0]
    m = p["mask"][0].bool()
    obs = p["x"].expand_as(out)
    gen = out[:, m]                                                           # (n, G)
    res = {"observed_rmse": normal_ci((out - obs)[:, ~m].pow(2).mean(1).sqrt()),
           "mean_dist": boot_ci(lambda ix: (gen[ix].mean(0) - p["mean"]).pow(2).mean().sqrt().item(), n),
           "var_ratio": boot_ci(lambda ix: (gen[ix].var(0).mean() / p["var"].mean()).item(), n),
           "seam_at_mask": boot_ci(lambda ix: seam_score(out[ix], [W // 2], -1), n, reps=200)}
    if p["prior"].K > 1:
        joint = p["prior"].responsibilities(out).argmax(1)
        alone = p["gen_prior"].responsibilities(out[..., W // 2:]).argmax(1)
        res["match_joint"] = rate_ci(joint == p["k_obs"])
        res["match_gen"] = rate_ci(alone == p["k_obs"])
    return res


def run_single(p: dict, method: str, seeds: int, w1: float = 1.0, w2: float = 0.001) -> torch.Tensor:
    obs = p["x"].expand(seeds, -1, -1, -1)
    y = torch.randn(obs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return longgen.sample(p["den"], p["sch"], obs, p["mask"], method=method, w1=w1, w2=w2,
                          observed_path="invert", num_inference_steps=STEPS, latents=y)


# --------------------------------------------------------------------------- windowed


def batched_denoiser(den: PriorDenoiser, seeds: int) -> FunctionDenoiser:
    """The window prior over an engine window that carries all seeds on a leading axis:
    x (B, S, 1, H, P) -> the prior on (B * S, 1, H, P)."""
    def fn(x, t, cond):
        B = x.shape[0]
        out = den(x.reshape(B * seeds, *x.shape[2:]), t.repeat_interleave(seeds), cond)
        return out.reshape(x.shape)
    return FunctionDenoiser(fn, den.prediction_type)


def run_windowed(kind: str, method: str, seeds: int, length: int, stride: int, group: int = 1,
                 live: str = "batched", blend: str = "paste", observed: str = "trajectory",
                 w1: float = 1.0) -> tuple[torch.Tensor, list[int]]:
    """(S, 1, H, length) canvases and the window starts."""
    prior, sch = make_prior(kind), scheduler()
    den = PriorDenoiser.for_scheduler(prior, sch)
    plan = plan_windows(length, W, stride)
    starts = [w.start for w in plan.windows]
    if method == "multidiffusion":
        y = torch.randn(seeds, 1, H, length, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
        views = list(range(0, length - W + 1, W // 8))
        return multidiffusion(Evaluator(den), make_schedule(sch, STEPS), y, views, W, -1), starts
    cfg = EngineConfig(method=method, steps=STEPS, group=group, observed=observed, live=live,
                       blend=blend, seed=0, w1=w1)
    eng = Engine(batched_denoiser(den, seeds), sch, plan, (seeds, 1, H, W), -1, cfg,
                 dtype=torch.float64)
    return torch.cat([c.latent for c in eng], dim=-1), starts


def exact_canvas(kind: str, seeds: int, length: int) -> torch.Tensor:
    x, _ = make_prior(kind, length).sample(seeds, torch.Generator().manual_seed(11))
    return x


def windowed_metrics(kind: str, canvas: torch.Tensor, starts: list[int]) -> dict:
    n = canvas.shape[0]
    bounds = window_boundaries(starts, [W] * len(starts))
    v = marginal_var(kind)
    res = {"seam": boot_ci(lambda ix: seam_score(canvas[ix], bounds, -1), n, reps=200),
           "canvas_var_ratio": boot_ci(lambda ix: (canvas[ix].var(0).mean() / v).item(), n, reps=200)}
    if kind == "mixture":
        wp = make_prior(kind)
        comps = torch.stack([wp.responsibilities(canvas[..., s:s + W]).argmax(1) for s in starts], 1)
        res["coherent"] = rate_ci((comps == comps[:, :1]).all(1))
    return res


def marginal_var(kind: str) -> float:
    """The prior's per-position marginal variance (SE kernels: var 1 + jitter per axis, so
    (1 + 1e-3)^2; the mixture adds the variance of the component means)."""
    base = (1 + 1e-3) ** 2
    if kind == "gauss":
        return base
    mu = torch.tensor(MEANS, dtype=torch.float64)
    return base + mu.var(unbiased=False).item()


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-windowed", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = {"seeds": a.seeds, "steps": STEPS, "shape": [1, H, W], "generated": "right half",
           "observed_path": "invert", "w1": 1.0, "w2": 0.001, "ci": "95%", "single": {},
           "windowed": {}, "sweep": {}}
    for kind in ("gauss", "mixture"):
        p = problem(kind)
        rows = {"exact": single_metrics(p, exact_samples(p, a.seeds))}
        for method in METHODS:
            rows[method] = single_metrics(p, run_single(p, method, a.seeds))
            print(kind, method, json.dumps(rounded(rows[method])), file=sys.stderr, flush=True)
        info = {"exact_component_weights": p["w"].tolist(), "observed_component": p["k_obs"],
                "exact_cond_var_mean": p["var"].mean().item()}
        res["single"][kind] = {"info": info, "methods": rows}
        if not a.no_sweep:
            sweep = {}
            for w1 in (0.0, 0.5, 1.0, 2.0, 4.0):
                sweep[f"w1={w1},w2=0.001"] = single_metrics(p, run_single(p, "alm", a.seeds, w1, 0.001))
            for w2 in (0.0, 0.001, 0.005, 0.02, 0.1):
                key = f"w1=1.0,w2={w2}"
                if key not in sweep:
                    sweep[key] = single_metrics(p, run_single(p, "alm", a.seeds, 1.0, w2))
            res["sweep"][kind] = sweep
            print(kind, "sweep done", file=sys.stderr, flush=True)
    if not a.no_windowed:
        length, stride = W + 3 * 24, 24
        for kind in ("gauss", "mixture"):
            starts = [w.start for w in plan_windows(length, W, stride).windows]
            rows = {"exact": windowed_metrics(kind, exact_canvas(kind, a.seeds, length), starts)}
            for method in (*METHODS, "multidiffusion"):
                canvas, starts = run_windowed(kind, method, a.seeds, length, stride)
                rows[method] = windowed_metrics(kind, canvas, starts)
                print(kind, "windowed", method, json.dumps(rounded(rows[method])), file=sys.stderr,
                      flush=True)
            canvas, starts = run_windowed(kind, "alm", a.seeds, length, stride, group=0, live="chained")
            rows["alm/released-g0-chained"] = windowed_metrics(kind, canvas, starts)
            canvas, starts = run_windowed(kind, "alm", a.seeds, length, stride, blend="feather")
            rows["alm/feather"] = windowed_metrics(kind, canvas, starts)
            for w1 in (1.0, 2.0):  # the overlap's finished X_0 noised with the window's own noise
                canvas, starts = run_windowed(kind, "alm", a.seeds, length, stride, observed="matched", w1=w1)
                rows[f"alm/matched,w1={w1:g}"] = windowed_metrics(kind, canvas, starts)
            res["windowed"][kind] = {"length": length, "window": W, "stride": stride,
                                     "md_view_stride": W // 8, "methods": rows}
    res["seconds"] = time.perf_counter() - t0
    res = rounded(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
