"""Command-line glue every modality shares: option checks, the engine settings from the
options, the builtin priors' scheduler and scene words, and what the diffusers-style Python
functions need to build a command's job and run it in memory. Nothing here imports torch or a
model library at import time (``longgen --help`` reads the plugins)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longgen.lazy import LazyModule

torch = LazyModule("torch")

VAE_SCALE = 8   # pixels per latent of the builtin image and video priors (and SD)


def builtin_scheduler():
    """SD's DDIM config (scaled-linear betas 0.00085..0.012, steps_offset 1, no alpha-to-one)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def scene_class(prompt: str) -> int:
    """Class id of the first scene word in the prompt, -1 (unconditional) when none."""
    from longgen.builtin import SCENES

    words = prompt.lower()
    for k, name in enumerate(SCENES):
        if name in words:
            return k
    return -1


def split_prompts(prompt: str, n_windows: int) -> list[str]:
    """``a|b|c`` gives one prompt per window; a single prompt is shared."""
    parts = [p.strip() for p in prompt.split("|")]
    if len(parts) == 1:
        return parts * n_windows
    if len(parts) != n_windows:
        raise ValueError(f"--prompt has {len(parts)} '|'-separated prompts but the plan has "
                         f"{n_windows} windows; give one prompt or one per window")
    return parts


def check_pixels(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0 or value % VAE_SCALE:
        raise ValueError(f"--{name} must be a positive multiple of {VAE_SCALE} pixels, got {value}")
    return value


AUTO_PASTE_STEPS = 20


def resolve_blend(blend: str, observed: str, steps: int) -> str:
    """``--blend auto`` (the panorama and video default): ``paste`` when the overlap is observed
    ``matched`` and there are at least 20 steps -- the generated part is then fitted to the
    finished overlap itself, which paste keeps -- else ``feather``. Measured on the builtin image
    prior (``benchmarks/seams.py``, seam score): matched + paste 1.10 at 50 steps, 1.34 at 25, but
    3.5 at 10 and 11 at 4, where matched + feather gives 1.5 and 1.15."""
    if blend != "auto":
        return blend
    return "paste" if observed == "matched" and steps >= AUTO_PASTE_STEPS else "feather"


def engine_config(args, guidance: float):
    from longgen.engine import EngineConfig

    return EngineConfig(method=args.method, w1=args.w1, w2=args.w2, steps=args.steps, group=args.group,
                        observed=args.observed, live=args.live, given_path=args.given_path,
                        guidance_scale=guidance, blend=resolve_blend(args.blend, args.observed, args.steps),
                        seed=args.seed)


def builtin_dtype(dtype, device="cpu", decoder: str = "landscape") -> torch.dtype:
    """The engine dtype of a builtin prior (``"fp32"``, ``"fp64"`` or a torch dtype), which runs
    on the CPU and draws with the ``landscape`` or ``linear`` decoder; anything else is refused."""
    if not isinstance(dtype, torch.dtype):
        table = {"fp32": torch.float32, "fp64": torch.float64}
        if dtype not in table:
            raise ValueError(f"--dtype {dtype!r} is not available for the builtin prior; allowed: fp32, fp64")
        dtype = table[dtype]
    if torch.device(device).type != "cpu":
        raise ValueError(f"the builtin prior runs on the CPU; got --device {str(device)!r}")
    if decoder not in ("landscape", "linear"):
        raise ValueError(f"unknown builtin decoder {decoder!r}; allowed: landscape, linear")
    return dtype


def check_builtin_dtype(args) -> torch.dtype:
    return builtin_dtype(args.dtype, args.device)


def _seed_of(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        return int(generator.initial_seed())
    return 0 if seed is None else int(seed)


OUTPUT_TYPES = ("pil", "np", "latent")


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
    return output_type


def cli_args(command: str, model: Any, options: dict) -> tuple[Any, argparse.Namespace]:
    """(plugin, args) of ``longgen <command> --model <model>`` with ``options`` (underscored option
    names) set; an option the command does not have raises ValueError."""
    from longgen.cli import build_parser, discover

    if "guidance_scale" in options:  # the diffusers name of --guidance
        if "guidance" in options:
            raise ValueError("give guidance_scale or guidance, not both")
        options = dict(options)
        options["guidance"] = options.pop("guidance_scale")
    plugins = discover()
    if command not in plugins:
        raise ValueError(f"no modality {command!r} installed; found: {', '.join(plugins)}")
    parser = build_parser({command: plugins[command]})
    args = parser.parse_args([command, "--out", "unused.out"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    path_opts = {a.dest for a in sub.choices[command]._actions if a.type is Path}
    known = set(vars(args)) - {"command", "out", "resume", "overwrite", "no_progress", "model"}
    bad = sorted(set(options) - known)
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(bad)} for {command}; allowed: "
                         f"{', '.join(sorted(known))}")
    for k, v in options.items():
        setattr(args, k, Path(v) if (k in path_opts and isinstance(v, str)) else v)
    args.model = str(model) if isinstance(model, Path) else model
    return plugins[command], args


def run_in_memory(engine, decoder, latents: torch.Tensor | None, output_type: str):
    """Run ``engine`` (initial noise from ``latents`` when given) -> (final latent, decoded media
    or None for ``output_type='latent'``); the media is the decoder's output concatenated."""
    if latents is not None:
        engine.use_latents(latents)
    chunks = [c.latent for c in engine]
    latent = torch.cat(chunks, dim=engine.axis)
    if output_type == "latent":
        return latent, None
    parts = [m for m in (decoder.push(c) for c in chunks) if m is not None]
    tail = decoder.flush()
    if tail is not None:
        parts.append(tail)
    return latent, torch.cat(parts, dim=decoder.axis)


def _seed(options: dict, generator: torch.Generator | None, seed: int | None) -> dict:
    if generator is not None or seed is not None:
        options["seed"] = _seed_of(seed, generator)
    return options


