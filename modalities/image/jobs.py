"""The image job path: panoramas and inpainting for every image backend (the builtin prior,
SD 1.x/2.x/XL, FLUX.1, SD3.x; :data:`longgen.modalities.backends.BACKENDS`).

Used by ``longgen panorama`` / ``longgen inpaint`` (through :func:`panorama_job` /
:func:`inpaint_job`) and from Python through :func:`panorama` and :func:`inpaint`, which take a
model (``"builtin"``, an :class:`~longgen.modalities.image.sd.SDModel` or another backend's model,
a diffusers pipeline, or a checkpoint path), in the manner of a diffusers pipeline call.

The contract every backend's model keeps: ``encode_prompt(prompts, negative, size) -> (cond,
uncond)``; ``engine_parts(config, height, width, control) -> (denoiser, scheduler, config, pixel
multiple)`` for windows of that size; ``guidance(given)`` (the family's default; builtin:
``guidance(given, prompts)``); ``vae_encode`` / ``vae_decode`` (images in [-1, 1] <-> latents);
``vae_scale_factor``, ``pixel_multiple``, ``latent_channels``, ``image_size`` (the native
window), ``decode_halo``, ``device``, ``dtype``; optionally ``window_extras(start)`` (condition
entries of a window, FLUX's canvas positions), ``window_decoder(grid)``, ``control_input`` and
``scheduler``.

Panorama: windows of the model's native size (``SDModel.image_size``: 512 px for SD 1.5 / 2.1-base,
1024 px for SDXL) along the width, at 3/4 of that stride by default (released ALM wide-image code,
Hleephilip/ALM_public ``alm/wide_image.py``: 64-latent windows, 48-latent stride), the last window
aligned to the right end so that any width that is a multiple of 8 works. ``a|b|c`` gives one
prompt per window. SDXL's micro-conditioning uses the window's size (``encode_prompt(size=...)``).
Finished latent chunks are decoded by :class:`longgen.stitch.StreamingDecoder` with a halo of
:data:`DECODE_HALO` latents and written as PNG strips while later windows are being sampled.

Why a halo and how exact it is: the SD VAE decoder is convolutional except for its mid-block
self-attention and its GroupNorm statistics, which see the whole decoded tile, so a chunk decoded
with a halo is close to, not equal to, the whole canvas decoded at once. Measured on the tiny
random VAE of ``tests/fixtures/tiny_sd.py`` (8x, mid-block attention), N(0, 1) latents 80 wide,
streamed in the engine's 12-latent chunks, unclamped output in [-1, 1] units, against one whole
decode: halo 0 -> max-abs 1.72, mean-abs 0.067; halo 4 -> 0.45 / 0.023; halo 8 (the default)
-> 0.26 / 0.017; halo 16 -> 0.22 / 0.014; halo 32 -> 0.11 / 0.0065. The error falls slowly
beyond 8 because what remains is the per-tile GroupNorm statistics, not the receptive field.
A random VAE is a harsh case (no trained smoothness); ``--decode-halo`` trades time for it, and a
halo as wide as the canvas gives the whole decode exactly (one VAE call at the end, no streaming).
``tests/test_sd_cli.py::test_streaming_decode_halo_vs_whole`` checks these bounds.

UNet forwards (what one sampling step costs; asserted by ``tests/test_sd_cli.py`` with a forward
pre-hook on the UNet; guidance != 1 doubles the rows of a guided request, never the forwards):

* panorama, ``--method alm`` (default), ``--group 1``: 2 forwards per step per window — one with
  the rows [eps_c(Y_t), eps_c(E)], one with [uncond(Y'), cond(Y')] — and 1 for the first window
  (it observes nothing): ``steps * (2 * windows - 1)`` in all; 4 rows per step per window.
* panorama, ``--method alm-fused``: 1 forward per step per window, rows [uncond(Y), cond(Y),
  cond(E)]: ``steps * windows``.
* ``--group G``: the G windows of a group share those forwards: ``alm`` 2 per step per group
  (1 for a first group of one window), ``alm-fused`` 1; ``--group 0`` = all windows at once:
  2 (``alm``) or 1 (``alm-fused``) forward per step for the whole panorama.
* inpainting: ``steps`` forwards for the DDIM inversion of the masked source (condition only)
  plus 2 per step (``alm``) or 1 (``alm-fused``): ``3 * steps`` or ``2 * steps``.

For comparison, diffusers' ``StableDiffusionPanoramaPipeline`` (MultiDiffusion, 64-latent views at
stride 8) evaluates 25 views x 2 rows = 50 UNet rows per step at 2048x512; ALM here evaluates
5 windows x 4 rows - 2 = 18.

Inpainting follows the released ``alm/inpainting.py``: the hole is blacked out in the 8-bit
image before it is mapped to [-1, 1], so the VAE sees -1 there (:func:`masked_image`); that image
is VAE-encoded (``latent_dist.mode() * scaling_factor``) and its FULL latent, hole included, is
DDIM-inverted with the conditional prediction (``Given(keep_unknown=True)``); the inversion
trajectory is the observed X_t; one window covers the image. The pixel mask is resized to the
latent grid with nearest-neighbour sampling. Beside the raw output the blended one is written
(``<out>-blended.png``, the released ``blended/``): generated pixels pasted into the source through
the released blend mask, a 21x21 Gaussian of the mask kept at 1 inside the hole
(:func:`~longgen.modalities.image.inpainting.released_blend_mask`); ``--blend-pixels R`` blends
through a box blur of radius R instead (pixels farther than R from the mask are the source's
exactly), ``--blend-pixels 0`` writes no blended file.

The builtin prior's decoder reads only the latents next to a pixel's own (``decoder_reach``), so
there inpainting generates only the latents whose pixels all lie in the hole
(:func:`reach_mask`) and keeps the others exactly, and the kept part is observed ``matched`` (the
inversion of the latent with its zeroed hole biased it): the fill joins the kept pixels with no edge.

Python API (diffusers habits): ``panorama(model, prompt, ...)`` and ``inpaint(model, image, mask,
prompt, ...)`` take ``latents=`` (the initial noise of the whole output in the VAE-latent layout:
``(C, H/8, W/8)``; replaces the seeded noise exactly, nothing is drawn for Y_T) and
``output_type="pil" | "np" | "latent"`` (``"np"``: float32 ``(H, W, 3)`` in [0, 1];
``"latent"``: the final latent ``(C, H/8, W/8)`` before decoding).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from longgen.cli import request_of
from longgen.engine import Engine, EngineConfig, Given
from longgen.grid import GridEngine, GridPlan
from longgen.planner import Plan, Window, plan_loop, plan_windows
from longgen.run import Job
from longgen.stitch import StreamingDecoder, tiled_decode

from ..glue import _seed_of, check_output_type, engine_config, resolve_blend
from .sd import SDModel, resolve_dtype

DECODE_HALO = 8  # latents of context each side of a decoded chunk (64 px for SD)


# --------------------------------------------------------------------------- model


def load_model(model: str | Path, *, dtype: str = "fp32", device: str = "cpu",
               local_files_only: bool = True, vae: Any = None, lora: Any = ()):
    """The model of whichever image backend the checkpoint's model_index.json names (a
    directory without one, or a hub id not in the cache, is read as SD); ``"builtin"`` is the
    builtin prior. ``lora``: ``FILE[:SCALE]`` strings or (path, scale) pairs, loaded with
    diffusers' LoRA loaders (:func:`~.adapters.apply_loras`)."""
    from ..backends import backend_named, find_backend
    from .adapters import apply_loras, check_lora_files, parse_lora

    if isinstance(model, str) and model == "builtin":
        return backend_named("image", "builtin").load(model, dtype=dtype, device=device)
    specs = [parse_lora(s) if isinstance(s, str) else s for s in (lora or ())]  # checked before loading
    if specs and isinstance(model, (str, Path)):
        check_lora_files(specs, model)
    backend = find_backend("image", model, local_files_only)
    if backend.name == "sd":
        m = backend.load(model, dtype=dtype, device=device, local_files_only=local_files_only, vae=vae)
    else:
        if vae is not None:
            raise ValueError(f"--vae replaces an SD VAE; {backend.name} checkpoints use their own 16-channel VAE")
        m = backend.load(Path(model).expanduser() if Path(model).expanduser().exists() else model,
                         dtype=resolve_dtype(dtype, device), device=device, local_files_only=local_files_only)
    return apply_loras(m, specs)


def as_image_model(model: Any, *, dtype: str = "fp32", device: str = "cpu",
                   local_files_only: bool = True, vae: Any = None):
    """A backend's model from such a model, a diffusers pipeline a backend wraps, ``"builtin"``
    or a checkpoint path / hub id."""
    from ..backends import backend_of

    if hasattr(model, "engine_parts"):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, dtype=dtype, device=device, local_files_only=local_files_only, vae=vae)
    backend = backend_of("image", model)
    if backend is not None:
        return backend.wrap(model)
    if hasattr(model, "components") and "unet" in getattr(model, "components", {}):
        return SDModel.from_pipeline(model)
    raise ValueError(f"model must be 'builtin', a longgen image model, a diffusers pipeline, a "
                     f"checkpoint path or a hub id; got {type(model).__name__}")


def run_guidance(sd: Any, given: float | None, prompts) -> float:
    """The run's guidance: the user's value, else the family's default (builtin: by the prompts)."""
    if getattr(sd, "family", None) == "builtin":
        return sd.guidance(given, prompts)
    return sd.guidance(given)


def unet_forwards(method: str, steps: int, windows: int, group: int = 1) -> int:
    """UNet forwards of a panorama of ``windows`` windows (``observed`` = trajectory or noise)."""
    G = group if 0 < group < windows else windows
    groups = math.ceil(windows / G)
    per_group = 1 if method in ("alm-fused", "syncsde", "replace", "ddim", "ddpm") else 2
    lone_first = 1 if (per_group == 2 and G == 1) else 0  # window 0 alone: nothing observed
    return steps * (per_group * groups - lone_first)


def canvas_forwards(method: str, steps: int, plan, group: int = 1) -> int:
    """UNet forwards of a panorama plan (``observed`` = trajectory, matched or noise): 1-D as
    :func:`unet_forwards`; 2-D, every band's but the first has no lone first window (it observes
    the band above)."""
    if not isinstance(plan, GridPlan):
        return unet_forwards(method, steps, len(plan), group)
    band = unet_forwards(method, steps, len(plan.cols), group)
    G = group if 0 < group < len(plan.cols) else len(plan.cols)
    lone = steps if (method not in ("alm-fused", "syncsde", "replace", "ddim", "ddpm") and G == 1) else 0
    return band + (len(plan.rows) - 1) * (band + lone)


# --------------------------------------------------------------------------- panorama


def _check_multiple(name: str, value: int, f: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % f:
        raise ValueError(f"{name} must be a positive multiple of {f} pixels, got {value!r}")
    return value


def panorama_plan(width: int, height: int, window: int, stride: int, f: int = 8,
                  multiple: int | None = None, loop: bool = False) -> Plan:
    """Windows (latent units, ``f`` px each) for a ``width`` x ``height`` panorama of
    ``window``-px windows; sizes must be multiples of ``multiple`` px (default ``f``; FLUX: 16).
    ``loop``: a 360-degree panorama whose right edge continues into its left edge
    (:func:`longgen.planner.plan_loop`)."""
    m = multiple or f
    _check_multiple("width", width, m)
    _check_multiple("height", height, m)
    _check_multiple("window", window, m)
    _check_multiple("stride", stride, m)
    if stride >= window:
        raise ValueError(f"stride {stride} px must be smaller than the window {window} px so that "
                         "windows overlap")
    if width < window:
        raise ValueError(f"width {width} px is narrower than one window ({window} px); "
                         f"allowed: width >= {window}")
    if loop:
        if width <= window:
            raise ValueError(f"--loop needs a canvas wider than one window: width {width} px = the "
                             f"window ({window} px); allowed: width > {window}")
        if 2 * stride <= window:
            raise ValueError(f"--loop needs a stride above half the window: stride {stride} px, window "
                             f"{window} px; allowed: stride > {window // 2}")
        return plan_loop(width // f, window // f, stride // f)
    return plan_windows(width // f, window // f, stride // f)


def loop_roll(plan: Plan, halo: int, f: int) -> int:
    """Pixels a loop's decoded stream is rolled by (it starts at latent ``hold + halo``), 0 otherwise."""
    return (plan.hold + halo) * f if plan.loop else 0


def default_stride(window: int, f: int = 8) -> int:
    """3/4 of the window, in whole latents (384 px for 512, 96 px for the tiny 128)."""
    return (window // f) * 3 // 4 * f


def _take(cond: Any, k: int) -> Any:
    """Row k of a condition (tensor or dict of tensors), keeping the batch dim."""
    if isinstance(cond, dict):
        return {key: v[k:k + 1] for key, v in cond.items()}
    return cond[k:k + 1]


def canvas_plan(width: int, height: int, window: int, stride: int, f: int = 8,
                multiple: int | None = None, loop: bool = False) -> Plan | GridPlan:
    """A panorama's plan: windows along the width (``panorama_plan``) when the canvas is no taller
    than a window (the window is then the canvas's height), else a 2-D grid of square windows
    (:class:`longgen.grid.GridPlan`): row bands at the same stride, the last one at the bottom."""
    cols = panorama_plan(width, height, window, stride, f, multiple, loop=loop)
    if height <= window:
        return cols
    return GridPlan(plan_windows(height // f, window // f, stride // f), cols)


def window_height(plan: Plan | GridPlan, height: int, f: int) -> int:
    """The windows' height in latents: the canvas's (1-D) or the grid's row window (2-D)."""
    return plan.rows.window if isinstance(plan, GridPlan) else height // f


def expand_prompts(prompts: list[str], plan: Plan | GridPlan) -> list[str]:
    """One prompt per window in raster order from 1, one per window, or (2-D) one per column."""
    n = len(plan)
    if len(prompts) == 1:
        return prompts * n
    if isinstance(plan, GridPlan) and len(prompts) == len(plan.cols):
        return prompts * len(plan.rows)
    if len(prompts) != n:
        per_col = f", one per column ({len(plan.cols)})" if isinstance(plan, GridPlan) else ""
        raise ValueError(f"{len(prompts)} prompts for {n} windows; give one prompt{per_col} or one "
                         "per window")
    return prompts


def canvas_engine(den, sched, plan: Plan | GridPlan, channels: int, h: int, config: EngineConfig,
                  window_cond: Callable[[int, int, Window], tuple[Any, Any]], *, dtype=torch.float32,
                  device="cpu", latents: torch.Tensor | None = None):
    """The engine of a panorama plan; ``window_cond(index, first_row, window)`` with the window's
    raster index and its first latent row on the canvas."""
    if isinstance(plan, GridPlan):
        ncols, rows = len(plan.cols), plan.rows.windows
        return GridEngine(den, sched, plan, channels, config,
                          window_cond=lambda r, w: window_cond(r * ncols + w.index, rows[r].start, w),
                          dtype=dtype, device=device, latents=latents)
    return Engine(den, sched, plan, (channels, h, plan.window), -1, config,
                  window_cond=lambda w: window_cond(w.index, 0, w), dtype=dtype, device=device,
                  latents=latents)


def canvas_decoder(decode_one: Callable[[torch.Tensor], torch.Tensor], plan: Plan | GridPlan,
                   halo: int, f: int) -> StreamingDecoder:
    """1-D: chunks of columns, decoded with a halo (around a loop too). 2-D: chunks of latent rows
    of the full width, each decoded in window-wide tiles with the same halo (circular for a loop)."""
    if isinstance(plan, GridPlan):
        tile = plan.cols.window

        def band(z):
            return tiled_decode(decode_one, z, axis=-1, tile=tile, halo=halo, scale=f, circular=plan.loop)
        return StreamingDecoder(band, axis=-2, halo=halo, scale=f)
    return StreamingDecoder(decode_one, axis=-1, halo=halo, scale=f, loop=plan.loop)


def canvas_writer(out, plan: Plan | GridPlan, halo: int, f: int):
    from .writers import PNGStripWriter

    if isinstance(plan, GridPlan):
        return PNGStripWriter(out, along="height")
    return PNGStripWriter(out, roll=loop_roll(plan, halo, f))


def panorama_parts(sd: Any, prompts: list[str], width: int, height: int, config: EngineConfig,
                   *, window: int | None = None, stride: int | None = None,
                   negative_prompt: str | None = None, halo: int | None = None,
                   device: str | torch.device | None = None,
                   latents: torch.Tensor | None = None,
                   loop: bool = False, control: tuple | None = None) -> tuple[Engine, StreamingDecoder]:
    """The engine and streaming decoder of a panorama; ``prompts`` has 1 or one per window (2-D:
    or one per column); ``latents`` (C, height/8, width/8): the initial noise, given; ``loop``:
    360 degrees; ``control``: (ControlNetModel, control image (1, 3, height, width) in [0, 1],
    scale) -- each window's condition gets its crop of the image. A canvas taller than the
    window is a 2-D grid (:func:`canvas_plan`). ``halo``: latents each side of a streamed decode
    (default: the model's ``decode_halo``)."""
    f = sd.vae_scale_factor
    window = sd.image_size if window is None else window
    win_h = min(height, window)
    if control is not None:
        cn, control_image, scale = control
        if tuple(control_image.shape[-2:]) != (height, width):
            raise ValueError(f"the control image is {tuple(control_image.shape[-2:])} px; the canvas is "
                             f"{(height, width)}")
    den, sched, config, multiple = sd.engine_parts(config, win_h, window,
                                                   None if control is None else (cn, scale))
    stride = default_stride(window, multiple) if stride is None else stride
    plan = canvas_plan(width, height, window, stride, f, multiple, loop=loop)
    per_window = expand_prompts(prompts, plan)
    unique = sorted(set(per_window), key=per_window.index)
    cond, uncond = sd.encode_prompt(unique, negative_prompt, size=(win_h, window))
    row = {p: k for k, p in enumerate(unique)}
    uncond0 = None if uncond is None else _take(uncond, 0)
    extras = getattr(sd, "window_extras", lambda start: {})
    h = window_height(plan, height, f)
    length = plan.cols.length if isinstance(plan, GridPlan) else plan.length

    def as_dict(c):
        return c if isinstance(c, dict) else {"encoder_hidden_states": c}

    def window_cond(index, y0, w):
        c, more = _take(cond, row[per_window[index]]), dict(extras(w.start))
        if control is not None:  # this window's crop, for the guided and the unguided row alike
            from .adapters import window_crop

            crop = window_crop(control_image[..., y0 * f:(y0 + h) * f, :], w.start, w.size, length, f)
            more["control"] = sd.control_input(crop, cn)
        if more:
            c = {**as_dict(c), **more}
            return c, (None if uncond0 is None else {**as_dict(uncond0), **more})
        return c, uncond0
    engine = canvas_engine(den, sched, plan, sd.latent_channels, h, config, window_cond,
                           dtype=engine_dtype(sd), device=device if device is not None else sd.device,
                           latents=latents)
    grid = isinstance(plan, GridPlan)
    decode_one = sd.window_decoder(grid) if hasattr(sd, "window_decoder") else (lambda z: sd.vae_decode(z[None])[0])
    decoder = canvas_decoder(decode_one, plan, sd.decode_halo if halo is None else halo, f)
    return engine, decoder


def engine_dtype(sd: Any) -> torch.dtype:
    """The engine's state dtype: float32 over a network (whatever its weights' dtype), the
    builtin prior's own (fp32 or fp64)."""
    return sd.dtype if getattr(sd, "family", None) == "builtin" else torch.float32


def image_output(img: torch.Tensor, output_type: str):
    """(3, H, W) in [-1, 1] -> a PIL image (8-bit, rounded) or float32 (H, W, 3) in [0, 1]."""
    if output_type == "np":
        return ((img.detach().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    from PIL import Image

    from .writers import to_uint8

    return Image.fromarray(to_uint8(img))


@torch.no_grad()
def panorama(model: Any, prompt: str | list[str], width: int = 2048, height: int = 512, *,
             steps: int = 50, method: str = "alm", w1: float = 2.0, w2: float = 0.001,
             guidance_scale: float | None = None, group: int = 1, negative_prompt: str | None = None,
             window: int | None = None, stride: int | None = None, observed: str = "matched",
             blend: str = "auto", generator: torch.Generator | None = None,
             seed: int | None = None, halo: int | None = None,
             callback: Callable[[int, torch.Tensor], None] | None = None,
             latents: torch.Tensor | None = None, output_type: str = "pil", loop: bool = False,
             controlnet: Any = None, control_image: Any = None,
             controlnet_conditioning_scale: float = 1.0):
    """A ``width`` x ``height`` panorama as a ``PIL.Image`` (``output_type="pil"``), a float32
    ``(H, W, 3)`` array in [0, 1] (``"np"``) or the final latent ``(C, H/8, W/8)`` (``"latent"``).

    ``model``: ``"builtin"``, a backend's model (:class:`SDModel`, ...), a diffusers pipeline a
    backend wraps or a checkpoint path. ``prompt``: one string (``a|b|c`` = one per window) or a list with one per window.
    ``generator`` / ``seed``: the run's seed (a generator contributes its ``initial_seed()``).
    ``callback(window_index, latent_chunk)`` is called for every finished latent chunk
    ``(C, h, n)``, with the index of the last window it waited for. The same arguments give the
    same pixels as ``longgen panorama``. ``latents``: the initial noise of the whole panorama,
    ``(C, height/8, width/8)``, used instead of the seeded noise (nothing is drawn for Y_T).
    ``loop``: a 360-degree panorama, its right edge continuing into its left edge (the chunks
    given to ``callback`` then start after the wrapped part and end with it).
    ``controlnet`` (a ``ControlNetModel`` or its directory) with ``control_image`` (a PIL image or
    path of the canvas's aspect, resized to ``width`` x ``height``): every window is conditioned
    on its own crop of it, scaled by ``controlnet_conditioning_scale``.
    """
    check_output_type(output_type)
    sd = as_image_model(model)
    if isinstance(prompt, str):
        prompts = [p.strip() for p in prompt.split("|")]
    else:
        prompts = list(prompt)
    cfg = EngineConfig(method=method, w1=w1, w2=w2, steps=steps, group=group, observed=observed,
                       guidance_scale=run_guidance(sd, guidance_scale, prompts),
                       blend=resolve_blend(blend, observed, steps), seed=_seed_of(seed, generator))
    control = None
    if (controlnet is None) != (control_image is None):
        raise ValueError("controlnet and control_image go together; give both or neither")
    if controlnet is not None:
        from .adapters import control_tensor, load_controlnet

        cn = load_controlnet(controlnet, sd) if isinstance(controlnet, (str, Path)) else controlnet
        control = (cn, control_tensor(control_image, width, height, sd.vae_scale_factor),
                   controlnet_conditioning_scale)
    engine, decoder = panorama_parts(sd, prompts, width, height, cfg, window=window, stride=stride,
                                     negative_prompt=negative_prompt, halo=halo, latents=latents,
                                     loop=loop, control=control)
    parts, lats = [], []
    for chunk in engine:
        if callback is not None:
            callback(chunk.windows_done - 1, chunk.latent)
        if output_type == "latent":
            lats.append(chunk.latent)
            continue
        media = decoder.push(chunk.latent)
        if media is not None:
            parts.append(media)
    grid = isinstance(engine.plan, GridPlan)   # 2-D: chunks are rows
    if output_type == "latent":  # a loop's chunks start at hold: roll them back
        if grid:
            return torch.cat(lats, dim=-2)
        return torch.cat(lats, dim=-1).roll(engine.plan.hold, dims=-1)
    tail = decoder.flush()
    if tail is not None:
        parts.append(tail)
    img = torch.cat(parts, dim=-2 if grid else -1)
    shift = 0 if grid else loop_roll(engine.plan, decoder.halo, decoder.scale)
    return image_output(img.roll(shift, dims=-1) if shift else img, output_type)


def _load_for(args):
    if args.model == "builtin":
        refuse_checkpoint_options(args)
    else:
        resolve_dtype(args.dtype, args.device)  # fp16 on a CPU fails before any loading
    return load_model(args.model, dtype=args.dtype, device=args.device,
                      local_files_only=getattr(args, "local_files_only", True),
                      vae=getattr(args, "vae", None), lora=getattr(args, "lora", None) or ())


def checkpoint_request(args) -> dict:
    """The resume request of a checkpoint job: the arguments, and the sha256 of the files they
    name whose content shapes the output (LoRA files, a control image), so that a resume with a
    changed file is refused as a different request."""
    from .adapters import file_digests, parse_lora

    req = request_of(args)
    if getattr(args, "lora", None):
        req["lora_sha256"] = file_digests([parse_lora(s)[0] for s in args.lora])
    if getattr(args, "control", None):
        req["control_sha256"] = file_digests([args.control])
    return req


def refuse_checkpoint_options(args) -> None:
    """The builtin prior has no weights to adapt: checkpoint-only options are refused by name."""
    for opt in ("lora", "controlnet", "control", "vae"):
        if getattr(args, opt, None):
            raise ValueError(f"--{opt} needs a checkpoint model (--model DIR); the builtin prior has "
                             "no UNet, transformer or VAE to adapt")


def _check_window_args(args) -> None:
    """Window/stride checks that need no model (so bad values fail before loading)."""
    for name in ("window", "stride"):
        v = getattr(args, name, None)
        if v is not None:
            _check_multiple(f"--{name}", v, 8)
    if args.window is not None and args.stride is not None and args.stride >= args.window:
        raise ValueError(f"--stride {args.stride} must be smaller than --window {args.window} "
                         "so that windows overlap")


def _check_control_args(args) -> None:
    """--controlnet / --control checks that need no model: both given, the ControlNet's config
    fits the checkpoint's family, the image's aspect fits the canvas."""
    from .adapters import check_control_aspect, check_controlnet, checkpoint_family
    from .inpainting import read_picture
    from .sd import _read_json

    cn, img = getattr(args, "controlnet", None), getattr(args, "control", None)
    if cn is None and img is None:
        return
    if cn is None or img is None:
        raise ValueError("--controlnet DIR and --control IMAGE go together; give both")
    family = checkpoint_family(args.model)
    unet_cfg = Path(args.model).expanduser() / "unet" / "config.json"
    cross = _read_json(unet_cfg).get("cross_attention_dim") if unet_cfg.is_file() else None
    check_controlnet(cn, family, cross)
    if not Path(img).is_file():
        raise ValueError(f"--control {img}: no such file")
    check_control_aspect(read_picture(Path(img), "control image", "RGB").size, args.width, args.height,
                         f"--control {img}")
    if not math.isfinite(args.control_scale):
        raise ValueError(f"--control-scale must be a finite number, got {args.control_scale}")


def panorama_job(args) -> Job:
    """The :class:`~longgen.run.Job` of ``longgen panorama``, for every image backend."""
    if args.model == "builtin":
        refuse_checkpoint_options(args)
    _check_window_args(args)
    _check_control_args(args)
    sd = _load_for(args)
    control = None
    if getattr(args, "controlnet", None):
        from .adapters import control_tensor, load_controlnet

        control = (load_controlnet(args.controlnet, sd),
                   control_tensor(args.control, args.width, args.height, sd.vae_scale_factor),
                   args.control_scale)
    window = args.window or sd.image_size
    multiple = sd.pixel_multiple
    stride = args.stride or default_stride(window, multiple)
    if args.stride is None and stride <= 0:
        raise ValueError(f"--window {window} is too small for a 3/4 stride; give --stride")
    loop = getattr(args, "loop", False)
    plan = canvas_plan(args.width, args.height, window, stride, sd.vae_scale_factor, multiple, loop=loop)
    prompts = expand_prompts([p.strip() for p in args.prompt.split("|")], plan)
    guidance = run_guidance(sd, args.guidance, prompts)
    engine, decoder = panorama_parts(
        sd, prompts, args.width, args.height, engine_config(args, guidance), window=window,
        stride=stride, negative_prompt=args.negative_prompt,
        halo=getattr(args, "decode_halo", None), device=args.device, loop=loop, control=control)
    info = {"width": args.width, "height": args.height, "window": window, "stride": stride,
            "unet_forwards": canvas_forwards(args.method, args.steps, plan, args.group)}
    writer = canvas_writer(args.out, plan, decoder.halo, decoder.scale)
    return Job(engine, decoder, writer, checkpoint_request(args), Path(args.out), info=info)


# --------------------------------------------------------------------------- inpainting


def latent_mask(mask: torch.Tensor, f: int) -> torch.Tensor:
    """Pixel mask ``(1, H, W)`` (1 = generate) -> latent mask ``(1, H/f, W/f)`` by nearest
    sampling: latent (i, j) takes pixel (i * f, j * f), as ``F.interpolate(mode='nearest')``."""
    if mask.ndim != 3 or mask.shape[-2] % f or mask.shape[-1] % f:
        raise ValueError(f"mask must be (1, H, W) with H, W multiples of {f}; got {tuple(mask.shape)}")
    h, w = mask.shape[-2] // f, mask.shape[-1] // f
    return torch.nn.functional.interpolate(mask[None].float(), size=(h, w), mode="nearest")[0]


def reach_mask(mask: torch.Tensor, f: int, reach: int) -> torch.Tensor:
    """The latents to generate for pixel mask ``mask`` (1, H, W) under a decoder whose pixels read
    the latents within ``reach`` of their own: those whose every pixel of influence lies in the
    hole (the 8 x 8 blocks wholly inside it, eroded by ``reach``; the image's edges do not erode).
    Every unmasked pixel then decodes from given latents only, so pasting the source there
    leaves no step at the hole's edge."""
    import torch.nn.functional as F

    inside = (-F.max_pool2d(-mask[None].float(), f, f))        # 1 where a block is all hole
    if reach > 0:
        k = 2 * reach + 1
        inside = -F.max_pool2d(F.pad(-inside, (reach,) * 4, value=-1.0), k, 1)
    return inside[0]


def masked_image(source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the VAE sees: ``source`` (3, H, W) in [-1, 1] with the hole (``mask`` = 1) at -1.

    The released code multiplies the 8-bit image by (1 - mask) and then maps it to [-1, 1], so the
    hole is black (-1), not grey (0); outside the hole the values are ``u8 / 127.5 - 1`` as they
    were, so this equals the released input exactly for an image read from 8 bits.
    """
    return torch.where(mask.bool().expand_as(source), torch.full_like(source, -1.0), source)


def inpaint_parts(sd: Any, source: torch.Tensor, mask: torch.Tensor, prompt: str,
                  config: EngineConfig, *, negative_prompt: str | None = None,
                  device: str | torch.device | None = None,
                  latents: torch.Tensor | None = None,
                  known_latent: torch.Tensor | None = None) -> tuple[Engine, StreamingDecoder]:
    """Engine and decoder filling ``mask`` (1, H, W) of ``source`` (3, H, W) in [-1, 1];
    ``latents`` (C, H/8, W/8): the initial noise, given. ``known_latent`` (C, H/8, W/8): the
    source's latent when it is known exactly (the builtin demo: its prior sample), used (its
    hole set to zero) instead of the VAE encoding of the masked source. A model with a
    ``decoder_reach`` (builtin) generates the latents of :func:`reach_mask` and keeps the others
    exactly (``paste_given``)."""
    f = sd.vae_scale_factor
    H, W = source.shape[-2:]
    den, sched, config, multiple = sd.engine_parts(config, H, W)
    _check_multiple("image height", H, multiple)
    _check_multiple("image width", W, multiple)
    if mask.shape[-2:] != source.shape[-2:]:
        raise ValueError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {W}x{H}; "
                         "they must match")
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must be binary (0 = keep, 1 = generate)")
    if known_latent is None:
        latent = sd.vae_encode(masked_image(source, mask)[None])[0]  # as released: (C, h, w)
    else:
        latent = known_latent
    reach = getattr(sd, "decoder_reach", None)
    if reach is None:
        lmask = latent_mask(mask, f).to(latent.dtype)  # (1, h, w), as released
    else:
        lmask = reach_mask(mask, f, reach).to(latent.dtype)
        config = replace(config, paste_given=True)
    if known_latent is not None:
        latent = latent * (1 - lmask)   # the hole's latent is zero, as the masked image's would be
    h, w = latent.shape[-2:]
    plan = plan_windows(w, w, max(1, w - 1)) if w > 1 else plan_windows(1, 1, 1)  # one window
    cond, uncond = sd.encode_prompt(prompt, negative_prompt, size=(H, W))
    # the FULL latent of the masked image is inverted (hole included), as released
    given = Given(values=latent, known=(1 - lmask).expand_as(latent).contiguous(), keep_unknown=True)
    engine = Engine(den, sched, plan, tuple(latent.shape), -1, config, cond=cond,
                    uncond=uncond, given=given, dtype=engine_dtype(sd),
                    device=device if device is not None else sd.device, latents=latents)
    # a VAE: one chunk (a halo as wide as the image makes it a single whole-image call, its
    # GroupNorms see the whole image); a decoder that streams exactly (builtin) streams
    halo = sd.decode_halo if getattr(sd, "exact_stream", False) else w
    decoder = StreamingDecoder(lambda z: sd.vae_decode(z[None])[0], axis=-1, halo=halo, scale=f)
    return engine, decoder


@torch.no_grad()
def inpaint(model: Any, image, mask, prompt: str = "", *, steps: int = 50, method: str = "alm",
            w1: float = 1.0, w2: float = 0.005, guidance_scale: float | None = None,
            negative_prompt: str | None = None, given_path: str = "invert",
            generator: torch.Generator | None = None, seed: int | None = None,
            blend_pixels: int = 0, latents: torch.Tensor | None = None,
            output_type: str = "pil", return_blended: bool = False):
    """Fill the white part of ``mask`` in ``image`` (PIL images or paths).

    ``model``: a backend's model (:class:`SDModel`, ...), a diffusers pipeline a backend wraps or a
    checkpoint path (for ``"builtin"`` see :func:`longgen.modalities.image.inpaint`).
    ``latents``: the initial noise ``(C, H/8, W/8)`` (replaces the seeded noise; nothing drawn).
    ``output_type``: ``"pil"`` (a ``PIL.Image``), ``"np"`` (float32 ``(H, W, 3)`` in [0, 1]) or
    ``"latent"`` (the final latent ``(C, H/8, W/8)`` before decoding).
    ``blend_pixels`` > 0: return the image pasted into the source through a box blur of that
    radius instead of the raw one. ``return_blended=True``: return ``(raw, blended)``, blended as
    the CLI's ``<out>-blended.png`` (the released 21x21 Gaussian blend, or the box blur of
    ``blend_pixels`` when > 0).
    """
    from .inpainting import blend_with_source

    check_output_type(output_type)
    if output_type == "latent" and (return_blended or blend_pixels):
        raise ValueError("output_type='latent' returns the latent only; blending needs 'pil' or 'np'")
    if isinstance(blend_pixels, bool) or not isinstance(blend_pixels, int) or blend_pixels < 0:
        raise ValueError(f"blend_pixels must be an integer >= 0, got {blend_pixels!r}")
    sd = as_image_model(model)
    source = _image_tensor(image)
    msk = _mask_tensor(mask, tuple(source.shape[-2:]))
    cfg = EngineConfig(method=method, w1=w1, w2=w2, steps=steps, given_path=given_path,
                       guidance_scale=run_guidance(sd, guidance_scale, [prompt]), seed=_seed_of(seed, generator))
    engine, decoder = inpaint_parts(sd, source, msk, prompt, cfg, negative_prompt=negative_prompt,
                                    latents=latents)
    chunks = [c.latent for c in engine]
    if output_type == "latent":
        return torch.cat(chunks, dim=-1)
    parts = [m for m in (decoder.push(c) for c in chunks) if m is not None]
    tail = decoder.flush()
    img = torch.cat(parts + ([tail] if tail is not None else []), dim=-1)
    if not (return_blended or blend_pixels):
        return image_output(img, output_type)
    from PIL import Image

    blended = blend_with_source(img, source, msk, blend_pixels or None)  # (H, W, 3) uint8
    blended = Image.fromarray(blended) if output_type == "pil" else blended.astype("float32") / 255
    if not return_blended:
        return blended
    return image_output(img, output_type), blended


def _image_tensor(image) -> torch.Tensor:
    """A PIL image or path -> (3, H, W) in [-1, 1]."""
    import numpy as np

    from .inpainting import load_image

    if isinstance(image, (str, Path)):
        return load_image(Path(image))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _mask_tensor(mask, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image or path -> (1, H, W) with 1 = generate, checked binary and of ``size``."""
    import tempfile

    from .inpainting import load_mask

    if isinstance(mask, (str, Path)):
        return load_mask(Path(mask), size)
    with tempfile.TemporaryDirectory() as d:  # one validation path for files and images
        p = Path(d) / "mask.png"
        mask.convert("L").save(p)
        return load_mask(p, size)


def inpaint_job(args) -> Job:
    """The :class:`~longgen.run.Job` of ``longgen inpaint``, for every image backend. Without
    ``--image`` the builtin prior inpaints its demo (:func:`~.builtin.demo_source`) and writes
    every unmasked pixel of it exactly."""
    from .inpainting import InpaintWriter, check_blend_pixels, load_image, load_mask

    builtin = args.model == "builtin"
    x0 = None
    if args.image is None:
        if not builtin:
            raise ValueError("--image is required with a checkpoint model (--model "
                             f"{args.model!r}); give the source image PNG")
        from .builtin import demo_source

        source, x0 = demo_source(args.seed)
    else:
        source = load_image(args.image)
    H, W = source.shape[-2:]
    _check_multiple("image height", H, 8)
    _check_multiple("image width", W, 8)
    if args.mask is None and x0 is not None:
        # the demo: the centre half of the landscape's width, top to bottom (its decoder draws
        # ridges from whole latent columns, so a band is a hole it can fill without an edge)
        mask = torch.zeros(1, H, W)
        mask[:, :, W // 4:3 * W // 4] = 1
    elif args.mask is None:
        mask = torch.zeros(1, H, W)  # the centre square
        mask[:, H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
    else:
        mask = load_mask(args.mask, (H, W))
    check_blend_pixels(args.blend_pixels)
    sd = _load_for(args)
    known = None
    if builtin:
        # the demo's hole is zero in latent space (the prior's scale, no colour): the builtin
        # has no VAE, so "black before the VAE" (as released for SD) has no counterpart, and
        # the latent of black, far outside the prior, made the filled hole brighter than its
        # surroundings. A user's image goes through the linear map and its least-squares inverse.
        if x0 is None:
            sd.decoder = "linear"
        else:
            known = x0.to(sd.dtype)
    if args.given_path is None:   # the family's: invert as released; builtin: matched
        args.given_path = getattr(sd, "inpaint_given_path", "invert")
    guidance = run_guidance(sd, args.guidance, [args.prompt])
    engine, decoder = inpaint_parts(sd, source, mask, args.prompt, engine_config(args, guidance),
                                    negative_prompt=args.negative_prompt, device=args.device,
                                    known_latent=known)
    # the demo keeps every unmasked pixel of its source exactly; a user's image is written as
    # decoded (the builtin's linear map cannot reproduce a photograph) and blended beside it
    writer = InpaintWriter(Path(args.out), source, mask, args.blend_pixels, keep_source=x0 is not None)
    base = 1 if args.method in ("alm-fused", "syncsde", "replace", "ddim", "ddpm") else 2
    inv = args.steps if (args.given_path == "invert" and args.method not in ("ddim", "ddpm")) else 0
    info = {"width": W, "height": H, "unet_forwards": inv + base * args.steps}
    return Job(engine, decoder, writer, checkpoint_request(args), Path(args.out), info=info)
