"""Inpaint the right half of a builtin-prior sample with each method and compare with the exact
conditional mean (the builtin prior knows the true answer).

    python examples/inpaint_builtin.py
"""

import torch
from diffusers import DDIMScheduler

import longgen
from longgen.builtin import se_kernel
from longgen.priors import PriorDenoiser, SeparableGMM

sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    steps_offset=1, set_alpha_to_one=False, clip_sample=False)
prior = SeparableGMM(torch.zeros(1, 1, 8, 32, dtype=torch.float64),
                     [torch.ones(1, 1, dtype=torch.float64), se_kernel(8, 2.0), se_kernel(32, 4.0)])
den = PriorDenoiser.for_scheduler(prior, sch)
x, _ = prior.sample(1, torch.Generator().manual_seed(0))
mask = torch.zeros_like(x)
mask[..., 16:] = 1  # generate the right half
_, mu, _ = prior.conditional(x[0], mask[0])

for method in ("alm", "alm-fused", "syncsde", "replace", "ddim"):
    out = longgen.sample(den, sch, x.expand(32, -1, -1, -1), mask, method=method,
                         num_inference_steps=50, generator=torch.Generator().manual_seed(1))
    gen = out[:, mask[0].bool()]
    obs_err = (out - x)[:, ~mask[0].bool()].pow(2).mean().sqrt().item()
    mean_err = (gen.mean(0) - mu[0]).pow(2).mean().sqrt().item()
    print(f"{method:10s} observed-region RMSE {obs_err:.4f}   distance to exact conditional mean {mean_err:.4f}")
