"""ALM against MultiDiffusion over the same FLUX-shaped transformer: wall time and transformer
forwards / batch rows per step for one panorama, both in this run.

The transformer is built from config with random weights (speed does not depend on the weights);
text conditions are random tensors of the right shapes (the text encoders run once per prompt and
are not what is compared). Sizes:

* ``tiny``: 1 + 1 blocks, hidden 32, 16-latent windows (the test checkpoint's shape);
* ``mid`` (default): 2 double + 4 single blocks, hidden 256, 16 VAE channels, 512 px windows on a
  2048 x 512 panorama (64 x 256 latents);
* ``real``: FLUX.1-dev's published transformer config (19 + 38 blocks, hidden 3072, T5 width
  4096; about 12 B parameters), 1024 px windows on 2048 x 512: for a GPU
  (``--device cuda --dtype bf16``).

ALM runs through :class:`longgen.engine.Engine` (windows at 3/4 stride, one after another, the
released wide-image order); the peer is :func:`longgen.samplers.multidiffusion` (diffusers has no
FLUX panorama pipeline): views of the same window at a stride of 1/8 window, all in one forward per
step, averaged (StableDiffusionPanoramaPipeline's rule). Both use the FLUX pipeline's schedule for
the window size. Prints one JSON object::

    python benchmarks/flux_panorama_time.py [--size mid] [--steps 2] [--device cpu] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longgen.denoiser import Evaluator, FlowDenoiser  # noqa: E402
from longgen.engine import Engine, EngineConfig  # noqa: E402
from longgen.samplers import multidiffusion  # noqa: E402
from longgen.schedule import make_schedule  # noqa: E402
from longgen.modalities.image.flux import FluxScheduling, FluxVelocity  # noqa: E402
from longgen.modalities.image.jobs import panorama_plan  # noqa: E402

SIZES = {
    # transformer config, (height, width, window) in px, VAE factor, text tokens
    "tiny": (dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                  axes_dims_rope=(4, 6, 6), guidance_embeds=True), (32, 128, 32), 2, 16),
    "mid": (dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
                 num_attention_heads=4, joint_attention_dim=256, pooled_projection_dim=128,
                 axes_dims_rope=(16, 24, 24), guidance_embeds=True), (512, 2048, 512), 8, 64),
    "real": (dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                  axes_dims_rope=(16, 56, 56), guidance_embeds=True), (512, 2048, 1024), 8, 512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-peer", action="store_true")
    a = p.parse_args(argv)
    if a.device == "cpu" and a.dtype != "fp32":
        p.error(f"--dtype {a.dtype} is for GPUs; on a CPU use fp32")
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    cfg, (H, W, win), f, n_text = SIZES[a.size]
    dtype = DTYPES[a.dtype]
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(**cfg).to(device=a.device, dtype=dtype).eval()
    rows = {"calls": 0, "rows": 0}

    def hook(mod, args, kwargs):
        rows["calls"] += 1
        rows["rows"] += kwargs["hidden_states"].shape[0]
    tr.register_forward_pre_hook(hook, with_kwargs=True)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    C = cfg["in_channels"] // 4
    g = torch.Generator().manual_seed(1)
    cond = {"prompt_embeds": torch.randn(1, n_text, cfg["joint_attention_dim"], generator=g),
            "pooled": torch.randn(1, cfg["pooled_projection_dim"], generator=g)}
    den = FlowDenoiser(FluxVelocity(tr, 3.5))
    plan = panorama_plan(W, H, win, win * 3 // 4, f, 2 * f)
    scheduling = FluxScheduling(sched, (H // (2 * f)) * (win // (2 * f)))
    out = {"setup": {"size": a.size, "steps": a.steps, "device": a.device, "dtype": a.dtype,
                     "panorama_px": [W, H], "window_px": [win, H], "windows": len(plan),
                     "parameters": sum(p.numel() for p in tr.parameters()),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}}

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    ecfg = EngineConfig(method="alm", steps=a.steps, seed=0)
    eng = Engine(den, scheduling, plan, (C, H // f, win // f), -1, ecfg, cond=cond, dtype=dtype, device=a.device)
    sync()
    t0 = time.perf_counter()
    alm = torch.cat([c.latent for c in eng], -1)
    sync()
    secs = time.perf_counter() - t0
    out["alm"] = {"seconds": secs, "seconds_per_step": secs / a.steps,
                  "forwards_per_step": rows["calls"] / a.steps, "rows_per_step": rows["rows"] / a.steps,
                  "finite": bool(torch.isfinite(alm).all())}
    if not a.no_peer:
        rows.update(calls=0, rows=0)
        wl = win // f
        view_stride = max(1, wl // 8)
        starts = list(range(0, W // f - wl + 1, view_stride))
        if starts[-1] != W // f - wl:
            starts.append(W // f - wl)
        canvas = torch.randn(1, C, H // f, W // f, generator=torch.Generator().manual_seed(0)).to(a.device, dtype)
        ev = Evaluator(den, cond=cond)
        sync()
        t0 = time.perf_counter()
        md = multidiffusion(ev, make_schedule(scheduling, a.steps), canvas, starts, wl, -1)
        sync()
        secs = time.perf_counter() - t0
        out["multidiffusion"] = {"seconds": secs, "seconds_per_step": secs / a.steps, "views": len(starts),
                                 "forwards_per_step": rows["calls"] / a.steps,
                                 "rows_per_step": rows["rows"] / a.steps, "finite": bool(torch.isfinite(md).all())}
        out["wall_ratio_md_over_alm"] = out["multidiffusion"]["seconds"] / out["alm"]["seconds"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
