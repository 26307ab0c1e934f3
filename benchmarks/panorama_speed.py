"""Panorama sampling speed: longgen's ALM variants against MultiDiffusion, same UNet, same steps.

Output: a 2048x512-equivalent panorama, 5 windows of the UNet's native size at a 3/4 stride
(window P latents, stride 3P/4, canvas P + 4 * 3P/4 = 4P latents wide). Two random SD-shaped
models built from config (tests/fixtures/tiny_sd.py; no download):

* ``tiny``: UNet ``block_out_channels=(32, 64)``, 16-latent (128 px) windows -> 512x128 px;
* ``mid``:  UNet ``block_out_channels=(128, 256, 512)``, ``sample_size=64`` (512 px windows as
  SD 1.5 / 2.1-base) -> a real 2048x512 px panorama.

Variants (guidance 7.5 for all, DDIM, the same number of steps):

* ``md_diffusers``: diffusers' ``StableDiffusionPanoramaPipeline`` (MultiDiffusion) as shipped,
  ``view_batch_size=1`` (its default), views of P latents at a stride of P/8 (8 latents for SD,
  its ``get_views`` default; 25 views for the 4P canvas), ``output_type="latent"``. THE REFERENCE
  for every ``ratio_to_md``.
* ``md_longgen``: :func:`longgen.samplers.multidiffusion`, the same views all in one forward.
* ``alm/<observed>/g1``, ``alm-fused/<observed>/g1``: the engine one window at a time, the first
  window of each group observing the previous one by ``trajectory`` or ``invert``;
  ``.../g0``: all windows in one group (``live``, batched order).
* ``alm/released/g0-chained``: the engine with ``live="chained"``, group 0 — the released
  wide-image procedure (Hleephilip/ALM_public alm/wide_image.py), reproduced exactly
  (tests/test_engine.py::test_engine_reproduces_the_released_wide_image_procedure).
* ``alm/released-loop``: a plain loop of that procedure straight over the UNet and diffusers'
  ``DDIMScheduler`` (no engine), to price the engine's bookkeeping.

Per variant: sampler wall seconds (prompt encoding and VAE decoding excluded; the decode of the
whole canvas is timed once per model and reported apart), UNet forwards and batch rows per step
(forward pre-hook on the UNet), seconds inside the UNet (pre-hook to forward hook) and its
fraction of the wall time; ``overhead = 1 - fraction`` is everything that is not the UNet.

Prints one JSON object and writes it to ``benchmarks/results/panorama_speed_<config>.json``::

    python benchmarks/panorama_speed.py --config tiny --steps 10 --repeats 3
    python benchmarks/panorama_speed.py --config mid --steps 2 --repeats 1 --no-warmup

``--threads`` defaults to 1: on a shared 2-core CPU with other jobs running, two intra-op threads
made each UNet forward 50-100x slower and erratic (threads waiting on each other's preempted
core); one thread gives stable figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longgen.denoiser import Evaluator  # noqa: E402
from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.planner import plan_windows  # noqa: E402
from longgen.samplers import multidiffusion  # noqa: E402
from longgen.schedule import make_schedule  # noqa: E402

PROMPT = "a wide mountain lake panorama"
GUIDANCE = 7.5
CONFIGS = {"tiny": ((32, 64), 16), "mid": ((128, 256, 512), 64)}
RESULTS = ROOT / "benchmarks" / "results"


class UNetClock:
    """Forwards, batch rows and seconds spent inside one module (forward pre-hook + hook)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.rows: list[int] = []
        self.seconds = 0.0
        self._t0 = 0.0

        def pre(_m, args, kwargs):
            x = args[0] if args else kwargs["sample"]
            self.rows.append(int(x.shape[0]))
            self._t0 = time.perf_counter()

        def post(_m, _args, _kwargs, _out):
            self.seconds += time.perf_counter() - self._t0

        self._h = [self.module.register_forward_pre_hook(pre, with_kwargs=True),
                   self.module.register_forward_hook(post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self._h:
            h.remove()


def build(name: str):
    from longgen.modalities.image.sd import SDModel
    from tests.fixtures.tiny_sd import tiny_sd_components

    channels, sample_size = CONFIGS[name]
    with tempfile.TemporaryDirectory() as d:
        parts = tiny_sd_components(d, block_out_channels=channels)
    parts["unet"].register_to_config(sample_size=sample_size)  # the native window
    return SDModel.from_components(**parts)


def geometry(sd) -> tuple[int, int, int]:
    """(window P, stride 3P/4, canvas length P + 4 * stride) in latents."""
    P = sd.sample_size
    stride = P * 3 // 4
    return P, stride, P + 4 * stride


# --------------------------------------------------------------------------- the variants


def run_engine(sd, steps, cond, uncond, method, group, observed, live="batched"):
    P, stride, L = geometry(sd)
    cfg = EngineConfig(method=method, steps=steps, group=group, observed=observed, live=live,
                       guidance_scale=GUIDANCE, blend="paste", seed=0)
    eng = Engine(sd.denoiser, sd.scheduler, plan_windows(L, P, stride), (4, P, P), -1, cfg,
                 cond=cond, uncond=uncond)
    return torch.cat([c.latent for c in eng], dim=-1)[None]  # (1, 4, P, L)


def run_md_diffusers(sd, steps, cond, uncond, latents):
    from diffusers import StableDiffusionPanoramaPipeline

    P = sd.sample_size
    pipe = StableDiffusionPanoramaPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # views of the native window at 1/8 of it (diffusers' defaults 64 / 8 for SD); as shipped
    # get_views always takes 64-latent views, too large for the tiny UNet's 16-latent window
    pipe.get_views = functools.partial(StableDiffusionPanoramaPipeline.get_views, pipe,
                                       window_size=P, stride=P // 8)
    f = sd.vae_scale_factor
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=P * f,
                width=latents.shape[-1] * f, num_inference_steps=steps, guidance_scale=GUIDANCE,
                latents=latents.clone(), output_type="latent").images


def run_md_longgen(sd, steps, cond, uncond, latents):
    P = sd.sample_size
    L = latents.shape[-1]
    ev = Evaluator(sd.denoiser, cond=cond, uncond=uncond, guidance_scale=GUIDANCE)
    starts = list(range(0, L - P + 1, P // 8))
    return multidiffusion(ev, make_schedule(sd.scheduler, steps), latents, starts, P, -1)


def run_released_loop(sd, steps, cond, uncond, latents, w1=1.0, w2=0.001):
    """The released wide-image procedure (ALM_public alm/wide_image.py, ALMWideImageGenerator.
    sample) as a plain loop: eps_c of all patches in one forward, the blended evaluations one
    patch at a time from the left neighbour's updated latent, one guided forward of 2n rows,
    diffusers' DDIM step, the observed-region sync; canvas painted last patch first."""
    from diffusers import DDIMScheduler

    P, stride, L = geometry(sd)
    n = 5
    sch = DDIMScheduler.from_config(sd.scheduler.config)
    sch.set_timesteps(steps)
    y = torch.cat([latents[..., stride * k: stride * k + P] for k in range(n)])  # (n, 4, P, P)
    mask = torch.zeros_like(y[:1])
    mask[..., P - stride:] = 1
    unet = sd.unet
    ratio = sch.config.num_train_timesteps // steps
    for t in sch.timesteps:
        t = int(t)
        a_t = sch.alphas_cumprod[t]
        a_s = sch.alphas_cumprod[t - ratio] if t - ratio >= 0 else sch.final_alpha_cumprod
        sigma = ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
        eps_y = unet(y, t, encoder_hidden_states=cond.expand(n, -1, -1)).sample
        blended = []
        for k in range(1, n):
            prev = torch.zeros_like(y[k:k + 1])
            prev[..., :P - stride] = y[k - 1:k, ..., stride:]
            e = prev * (1 - mask) + y[k:k + 1] * mask
            blended.append(e)
            eps_e = unet(e, t, encoder_hidden_states=cond).sample
            y[k:k + 1] += sigma * mask * (w1 * (eps_y[k:k + 1] - eps_e) - w2 * eps_e)
        before = y.clone()
        out = unet(torch.cat([y, y]), t,
                   encoder_hidden_states=torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])).sample
        e_u, e_c = out.chunk(2)
        y = sch.step(e_u + GUIDANCE * (e_c - e_u), t, y).prev_sample
        for k, e in enumerate(blended, start=1):
            y[k:k + 1] -= w1 * sigma * (1 - mask) * (before[k:k + 1] - e)
    canvas = torch.zeros(1, 4, P, L)
    for k in range(n - 1, -1, -1):
        canvas[..., stride * k: stride * k + P] = y[k]
    return canvas


def variants():
    """name -> callable(sd, steps, cond, uncond, latents) -> latent canvas (1, 4, P, L)."""
    v = {"md_diffusers": run_md_diffusers, "md_longgen": run_md_longgen}
    for method in ("alm", "alm-fused"):
        for observed in ("trajectory", "invert"):
            v[f"{method}/{observed}/g1"] = functools.partial(
                lambda sd, s, c, u, _l, m, o: run_engine(sd, s, c, u, m, 1, o), m=method, o=observed)
        v[f"{method}/live/g0"] = functools.partial(
            lambda sd, s, c, u, _l, m: run_engine(sd, s, c, u, m, 0, "trajectory"), m=method)
    v["alm/released/g0-chained"] = lambda sd, s, c, u, _l: run_engine(
        sd, s, c, u, "alm", 0, "trajectory", live="chained")
    v["alm/released-loop"] = run_released_loop
    return v


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def timed(fn, sd, steps, cond, uncond, latents) -> tuple:
    """(wall s, UNet s, rows of each UNet forward, output) of one run."""
    with UNetClock(sd.unet) as clock:
        t0 = time.perf_counter()
        out = fn(sd, steps, cond, uncond, latents)
        wall = time.perf_counter() - t0
    return wall, clock.seconds, list(clock.rows), out


def summary(runs: list[tuple], steps: int) -> dict:
    """The best (fastest) of a variant's runs; all wall times listed."""
    walls = [r[0] for r in runs]
    wall, unet_s, rows, out = min(runs, key=lambda r: r[0])
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite latents")
    return {"wall_s": round(wall, 3), "walls_s": [round(w, 3) for w in walls],
            "unet_forwards": len(rows), "unet_forwards_per_step": round(len(rows) / steps, 2),
            "unet_rows_per_step": round(sum(rows) / steps, 2), "unet_s": round(unet_s, 3),
            "unet_fraction": round(unet_s / wall, 4), "overhead": round(1 - unet_s / wall, 4),
            "out_shape": list(out.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-warmup", action="store_true", help="skip each variant's 1-step warm-up")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sd = build(a.config)
    P, stride, L = geometry(sd)
    f = sd.vae_scale_factor
    cond, uncond = sd.encode_prompt(PROMPT)
    latents = torch.randn(1, 4, P, L, generator=torch.Generator().manual_seed(0))
    res = {"config": a.config, "unet_block_out_channels": list(CONFIGS[a.config][0]),
           "window_px": P * f, "stride_px": stride * f, "size_px": [L * f, P * f], "windows": 5,
           "md_views": len(range(0, L - P + 1, P // 8)), "steps": a.steps, "repeats": a.repeats,
           "guidance": GUIDANCE, "threads": a.threads, "warmup": not a.no_warmup,
           "machine": f"shared {os.cpu_count()}-core CPU ({platform.machine()}), other jobs running",
           "torch": torch.__version__, "wall": "best of repeats (run round robin); VAE decode excluded", "variants": {}}
    with torch.no_grad():
        run_engine(sd, 1, cond, uncond, "alm", 0, "trajectory")  # warm-up
        t0 = time.perf_counter()
        sd.vae_decode(latents)
        res["vae_decode_whole_canvas_s"] = round(time.perf_counter() - t0, 3)
    names = a.only or list(variants())
    fns = variants()
    if not a.no_warmup:
        for name in names:
            timed(fns[name], sd, 1, cond, uncond, latents)
    runs = {name: [] for name in names}
    for rep in range(a.repeats):  # round robin, so that other jobs' load falls on every variant
        for name in names:
            runs[name].append(timed(fns[name], sd, a.steps, cond, uncond, latents))
            print(rep, name, round(runs[name][-1][0], 3), file=sys.stderr, flush=True)
    for name in names:
        res["variants"][name] = summary(runs[name], a.steps)
    ref = res["variants"].get("md_diffusers")
    if ref is not None:
        best_md = min(res["variants"][k]["wall_s"] for k in ("md_diffusers", "md_longgen")
                      if k in res["variants"])
        for r in res["variants"].values():
            r["ratio_to_md"] = round(r["wall_s"] / ref["wall_s"], 3)
            r["ratio_to_best_md"] = round(r["wall_s"] / best_md, 3)
    out = a.out or RESULTS / f"panorama_speed_{a.config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
