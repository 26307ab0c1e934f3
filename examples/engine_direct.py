"""Drive the streaming engine directly: plan windows, sample them in groups, take finished chunks
as they come (here: just report them). The CLI does the same plus decoding, writing and resume.

    python examples/engine_direct.py
"""

import torch
from diffusers import DDIMScheduler

from longgen.builtin import image_prior
from longgen.engine import Engine, EngineConfig
from longgen.planner import plan_windows
from longgen.priors import PriorDenoiser

sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    steps_offset=1, set_alpha_to_one=False, clip_sample=False)
den = PriorDenoiser.for_scheduler(image_prior(height=32, width=64), sch)
plan = plan_windows(length=512, window=64, stride=48)  # 512 latents = 4096 px wide
cfg = EngineConfig(method="alm", steps=20, group=2, observed="trajectory", blend="feather",
                   guidance_scale=3.0, seed=0)
engine = Engine(den, sch, plan, shape=(4, 32, 64), axis=-1, config=cfg,
                cond=torch.tensor([1]), uncond=torch.tensor([-1]))  # class 1 = sunset
for chunk in engine:
    print(f"finished latents {chunk.start:4d}..{chunk.stop:4d} after {chunk.windows_done}/{len(plan)} windows,"
          f" canvas holds {engine.canvas.buffered} positions")
