"""longgen: long and wide generation with pretrained diffusion models, windows sampled with ALM."""

from .api import sample
from .denoiser import (CountingDenoiser, Denoiser, Evaluator, FunctionDenoiser, Request, cat_cond,
                       to_eps, to_x0)
from .priors import PriorDenoiser, SeparableGMM, SharedBasisGMM
from .samplers import METHODS
from .schedule import Schedule, make_schedule

__all__ = ["sample", "Denoiser", "Evaluator", "Request", "FunctionDenoiser", "CountingDenoiser",
           "cat_cond", "to_eps", "to_x0", "SeparableGMM", "SharedBasisGMM", "PriorDenoiser", "METHODS", "Schedule",
           "make_schedule"]
__version__ = "0.1.0"
