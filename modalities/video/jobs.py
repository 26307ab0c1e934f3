"""``longgen video``: one job path for every video family (:data:`~longgen.modalities.backends.BACKENDS`):
the builtin exact prior (:class:`~.builtin.BuiltinVideo`), the video UNets (ModelScope UNet3D,
AnimateDiff, LaVie: :class:`~.models.VideoModel`) and the causal-VAE transformers (Wan, CogVideoX,
LTX-Video: :class:`~.causal.CausalVideoModel`), sampled in windows and streamed to mp4.

The contract a family's model carries: ``temporal_factor`` (frames per latent frame; 1 but for a
causal VAE) and ``frame_step`` (``--frames`` must be ``1 + frame_step * k``), ``native_frames``
(the default window) and ``max_window`` (the longest the model takes; None: any),
``default_frames``, ``default_stride(window_latent)``, ``default_fps``,
``default_guidance(prompts)``, ``frame_size(height, width)`` (the checked pixel size),
``encode_prompt(prompt, negative)`` -> (cond, uncond), ``encode_clip((3, F, H, W))`` -> latents,
``window_model(shape)`` -> (denoiser, scheduler) of a window, ``decoder(latent_frames)`` -> a
streaming decoder, ``latent_channels``, ``vae_scale_factor``, ``engine_dtype``, ``device``.

Windows are the model's native length at half that stride by default (the paper's LaVie setting:
12 windows of 16 frames for 104; causal families: their own stride, three windows' worth); the
planner aligns the last window to the end. ``a|b|c``: one prompt per window. An ``--init`` clip is
read with PyAV, resized and centre-cropped to the frame size, encoded, and given to the engine as
known content of the first window (pasted exactly; its noisy version the DDIM inversion of the
clip, as the released ALM inpainting code does for its source). ``--image``: the first frame of an
image-to-video checkpoint (Wan I2V), which conditions every window. Finished latent chunks are
decoded as they come and encoded to mp4 at once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from longgen.cli import request_of
from longgen.engine import Engine, Given
from longgen.planner import plan_windows
from longgen.run import Job

from ..glue import engine_config, split_prompts
from .causal import check_frame_count
from .models import resolve_dtype
from .writers import MP4Writer, clip_to_tensor, read_video


def video_parts(vm, args) -> tuple:
    """(engine, decoder, window, stride, height, width) of ``longgen video`` for a loaded video
    model of any family (the CLI job and :func:`longgen.modalities.video.video` share it); window
    and stride in frames."""
    f, step = vm.temporal_factor, vm.frame_step

    def latent(n: int) -> int:
        return 1 + (n - 1) // f

    frames = check_frame_count("frames", args.frames if args.frames is not None else vm.default_frames, step)
    window = check_frame_count("window-frames", args.window_frames or vm.native_frames, step)
    if vm.max_window is not None and window > vm.max_window:
        raise ValueError(f"--window-frames {window} is longer than the model's native window "
                         f"({vm.max_window} frames)")
    wl = latent(window)
    stride = args.stride_frames if args.stride_frames is not None else f * vm.default_stride(wl)
    if not isinstance(stride, int) or stride < f or stride % f:
        what = "integer" if f == 1 else f"multiple of {f} (one latent frame each)"
        raise ValueError(f"--stride-frames must be a positive {what}, got {stride!r}")
    if stride // f >= wl:
        raise ValueError(f"--stride-frames {stride} must be shorter than the window ({window} frames), "
                         "so that windows overlap")
    if frames < window:
        raise ValueError(f"--frames {frames} is fewer than one window ({window} frames); allowed: >= {window}")
    args.frames = frames
    H, W = vm.frame_size(args.height, args.width)
    plan = plan_windows(latent(frames), wl, stride // f)
    given = None
    if args.init is not None:
        clip, _ = read_video(args.init, max_frames=window)
        if len(clip) < window:
            raise ValueError(f"--init clip {args.init} has {len(clip)} frames; it needs at least one window "
                             f"({window} frames)")
        lat = vm.encode_clip(clip_to_tensor(clip[:window], H, W))
        given = Given(values=lat, known=torch.ones_like(lat))
    image = getattr(args, "image", None)
    i2v = getattr(vm, "i2v", False)
    if i2v and image is None:
        raise ValueError(f"{vm.source} is an image-to-video checkpoint ({type(vm.pipe).__name__}): give "
                         "--image first.png, the video's first frame")
    if image is not None and not i2v:
        pipe = getattr(vm, "pipe", None)
        raise ValueError(f"--image needs an image-to-video checkpoint (WanImageToVideoPipeline); "
                         f"{getattr(vm, 'source', args.model)} is text-to-video"
                         + (f" ({type(pipe).__name__})" if pipe is not None else ""))
    extra = None            # what the first window and every later one are given besides the text
    if image is not None:
        if given is not None:
            raise ValueError("give --image or --init, not both")
        from ..image.inpainting import read_picture

        if not Path(image).is_file():
            raise ValueError(f"--image {image} does not exist")
        conds = vm.image_conditions(read_picture(Path(image), "image", "RGB"), H, W, window)
        given = Given(values=conds["image_latent"], known=torch.ones_like(conds["image_latent"]))
        embeds = {"image_embeds": conds["image_embeds"]} if "image_embeds" in conds else {}
        extra = [{"condition": conds["first"], **embeds}, {"condition": conds["later"], **embeds}]
    prompts = split_prompts(args.prompt, len(plan))                          # a|b|c: one per window
    text = {p: vm.encode_prompt(p, args.negative_prompt or "") for p in dict.fromkeys(prompts)}
    if extra is None:
        pairs = [text[p] for p in prompts]
    else:
        pairs = [tuple({**c, **extra[min(k, 1)]} for c in text[p]) for k, p in enumerate(prompts)]
    guidance = args.guidance if args.guidance is not None else vm.default_guidance(prompts)
    cfg = engine_config(args, guidance)
    cfg.paste_given = True  # the init clip / first frame is kept as given
    s = vm.vae_scale_factor
    shape = (vm.latent_channels, wl, H // s, W // s)                          # (C, F, h, w)
    den, sched = vm.window_model(shape)
    engine = Engine(den, sched, plan, shape, -3, cfg, window_cond=lambda w: pairs[w.index],
                    given=given, dtype=vm.engine_dtype, device=vm.device)
    return engine, vm.decoder(plan.length), window, stride, H, W


def video_job(args) -> Job:
    """Build the job for ``longgen video --model builtin|CKPT ...`` (see the module docstring)."""
    if args.fps is not None and not (isinstance(args.fps, (int, float)) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number, got {args.fps!r}")
    vm = load_any(args)
    engine, decoder, window, stride, H, W = video_parts(vm, args)
    fps = args.fps or vm.default_fps
    return Job(engine, decoder, MP4Writer(args.out, fps), request_of(args), Path(args.out),
               info={"frames": args.frames, "height": H, "width": W, "kind": vm.kind,
                     "window": window, "stride": stride, "fps": fps})


def load_any(args):
    """The video model ``--model`` names, through the video backends of
    :data:`longgen.modalities.backends.BACKENDS`: a pipeline directory whose ``model_index.json``
    names a Wan, CogVideoX or LTX pipeline, else one of the UNet families of
    :func:`~.models.load_video_model` (ModelScope, AnimateDiff, LaVie)."""
    from ..backends import backend_named, backends, find_backend, pipeline_class

    if args.model == "builtin":
        return backend_named("video", "builtin").load(args.model, dtype=args.dtype, device=args.device, args=args)
    kind = getattr(args, "kind", "auto")
    cls = pipeline_class(args.model)
    backend = find_backend("video", args.model, cls=cls)
    pipelines = {b.name for b in backends("video") if b.pipelines and not b.fallback}
    if backend.name in pipelines or kind in pipelines:
        want = backend.name if backend.name in pipelines else None
        if kind != "auto" and kind != want:
            raise ValueError(f"--kind {kind} does not fit {args.model}, which has "
                             f"{cls or 'no model_index.json'}; allowed: auto" + (f", {want}" if want else ""))
        for k in ("motion_adapter", "sd_path", "ckpt"):
            if getattr(args, k, None) is not None:
                raise ValueError(f"--{k.replace('_', '-')} applies to UNet video checkpoints, not to {cls}")
        torch_dtype, dev = resolve_dtype(args.dtype, args.device)
        return backend.load(args.model, dtype=torch_dtype, device=dev)
    if getattr(args, "image", None) is not None:
        raise ValueError("--image needs an image-to-video checkpoint (WanImageToVideoPipeline); "
                         f"{args.model} is a UNet text-to-video model")
    return backend.load(args.model, kind=kind, dtype=args.dtype, device=args.device,
                        motion_adapter=_opt_str(args, "motion_adapter"), sd_path=_opt_str(args, "sd_path"),
                        ckpt=_opt_str(args, "ckpt"))


def _opt_str(args, name: str) -> str | None:
    v = getattr(args, name, None)
    return None if v is None else str(v)


__all__ = ["load_any", "video_job", "video_parts"]
