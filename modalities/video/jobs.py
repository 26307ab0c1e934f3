"""``longgen video --model CKPT``: long videos from a real video UNet (ModelScope UNet3D, AnimateDiff,
LaVie), sampled in windows of the model's native length and streamed to mp4. Checkpoints with a
causal video VAE (Wan 2.x, CogVideoX, LTX-Video; found from ``model_index.json``) take the job of
:mod:`~longgen.modalities.video.causal` instead (windows over latent frames).

The job mirrors the builtin path of :mod:`longgen.modalities.video.plugin`: windows of the model's native
length (16 frames) at half that stride (the paper's LaVie setting: 12 windows for 104 frames; the
planner aligns the last window to the end, so any length >= one window works). An ``--init`` clip
is read with PyAV, resized and centre-cropped to the model's frame size, VAE-encoded, and given to
the engine as known content of the first window (pasted exactly; its noisy version is the DDIM
inversion of the clip, as the released ALM inpainting code does for its source). Finished latent
chunks are decoded frame by frame, a bounded number of frames per VAE call (the image VAE sees each
frame on its own, so the streaming decoder needs no halo), and encoded to mp4 at once.

Defaults that come from the released models: guidance 7.5 (LaVie base/configs/sample.yaml
``guidance_scale``; diffusers ``AnimateDiffPipeline``), window 16 frames (ModelScope, AnimateDiff
v1-v3, LaVie), or a motion adapter's ``motion_max_seq_length`` when that is shorter (its temporal
position table has no rows beyond it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange

from longgen.cli import request_of
from longgen.engine import Engine, Given
from longgen.planner import plan_windows
from longgen.run import Job
from longgen.stitch import StreamingDecoder

from ..glue import engine_config, split_prompts
from .models import NATIVE_FRAMES, VideoModel, resolve_dtype
from .writers import check_frames, clip_to_tensor
from .writers import MP4Writer, read_video

DEFAULT_GUIDANCE = 7.5   # LaVie sample.yaml guidance_scale; diffusers AnimateDiffPipeline default
DECODE_CHUNK = 8         # frames per VAE call: memory is bounded by this, not by the video length


def native_frames(vm: VideoModel) -> int:
    """The window length the model was trained on: 16, or a motion adapter's shorter position table."""
    cfg = getattr(vm.unet, "config", None)
    limit = getattr(cfg, "motion_max_seq_length", None) if cfg is not None else None
    if limit is None and isinstance(cfg, dict):
        limit = cfg.get("motion_max_seq_length")
    return min(vm.frames or NATIVE_FRAMES, int(limit)) if limit else (vm.frames or NATIVE_FRAMES)


def unet_downsampling(vm: VideoModel) -> int:
    """How many times the UNet halves the latent (latent sides must be multiples of 2 ** this)."""
    cfg = vm.unet.config
    channels = cfg["block_out_channels"] if isinstance(cfg, dict) else cfg.block_out_channels
    return len(channels) - 1


def frame_size(vm: VideoModel, height: int | None, width: int | None) -> tuple[int, int]:
    """Pixel (H, W) of the output: the model's native size unless given; checked against the VAE and UNet."""
    s = vm.vae_scale_factor
    unit = s * 2 ** unet_downsampling(vm)
    out = []
    for name, value, native in (("height", height, vm.sample_size[0]), ("width", width, vm.sample_size[1])):
        px = native * s if value is None else value
        if not isinstance(px, int) or px <= 0 or px % unit:
            raise ValueError(f"--{name} must be a positive multiple of {unit} pixels for this model "
                             f"(VAE factor {s} x UNet factor {unit // s}), got {px!r}")
        out.append(px)
    return out[0], out[1]


def init_given(path: Path, vm: VideoModel, window: int, height: int, width: int) -> Given:
    """The first ``window`` frames of a clip as known latents ``(C, window, h, w)``."""
    frames, _ = read_video(path, max_frames=window)                      # (F, h0, w0, 3) uint8
    if len(frames) < window:
        raise ValueError(f"--init clip {path} has {len(frames)} frames; it needs at least one window "
                         f"({window} frames)")
    clip = clip_to_tensor(frames, height, width)                          # (3, F, H, W) in [-1, 1]
    lat = vm.encode_frames(rearrange(clip, "c f h w -> 1 f c h w"), chunk=DECODE_CHUNK)[0]  # (C, F, h, w)
    lat = lat.to(torch.float32)
    return Given(values=lat, known=torch.ones_like(lat))


def frame_decoder(vm: VideoModel):
    """Latent chunk ``(C, F, h, w)`` -> frames ``(3, F, H, W)`` in [-1, 1], DECODE_CHUNK frames per VAE call."""
    def decode(z: torch.Tensor) -> torch.Tensor:
        video = vm.decode_frames(z[None], chunk=DECODE_CHUNK)[0]           # (F, 3, H, W)
        return rearrange(video, "f c h w -> c f h w").cpu()
    return decode


def check_model_options(args) -> None:
    if args.model == "builtin":
        given = [f"--{k.replace('_', '-')}" for k in ("motion_adapter", "sd_path", "ckpt", "image")
                 if getattr(args, k, None) is not None]
        if getattr(args, "kind", "auto") != "auto":
            given.append("--kind")
        if given:
            raise ValueError(f"{', '.join(given)} apply to a real video checkpoint, not to --model builtin")


def video_parts(vm, args) -> tuple:
    """(engine, decoder, window, stride, height, width) of ``longgen video`` for a loaded
    :class:`VideoModel` or a causal-VAE family's model (Wan, CogVideoX, LTX; the CLI job and
    :func:`longgen.modalities.video.video` share it)."""
    if getattr(vm, "causal", False):   # windows over latent frames
        from .causal import causal_parts

        return causal_parts(vm, args)
    if args.frames is None:
        args.frames = 104
    native = native_frames(vm)
    window = args.window_frames or native
    stride = args.stride_frames or window // 2
    if window > native:
        raise ValueError(f"--window-frames {window} is longer than the model's native window ({native})")
    check_frames(args, window)
    H, W = frame_size(vm, args.height, args.width)
    s = vm.vae_scale_factor
    plan = plan_windows(args.frames, window, stride)
    given = init_given(args.init, vm, window, H, W) if args.init is not None else None
    prompts = split_prompts(args.prompt, len(plan))                          # a|b|c: one per window
    text = {p: vm.encode_prompt(p, args.negative_prompt or "") for p in dict.fromkeys(prompts)}  # (1, 77, D) each
    guidance = args.guidance if args.guidance is not None else DEFAULT_GUIDANCE
    cfg = engine_config(args, guidance)
    cfg.paste_given = True  # the init clip is kept as given
    shape = (vm.latent_channels, window, H // s, W // s)                      # (C, F, h, w)
    engine = Engine(vm.denoiser, vm.scheduler, plan, shape, -3, cfg, window_cond=lambda w: text[prompts[w.index]],
                    given=given, dtype=torch.float32, device=vm.device)
    decoder = StreamingDecoder(frame_decoder(vm), axis=-3, halo=0, scale=1)
    return engine, decoder, window, stride, H, W


def video_job(args) -> Job:
    """Build the job for ``longgen video --model CKPT ...`` (see the module docstring)."""
    vm = load_any(args)
    engine, decoder, window, stride, H, W = video_parts(vm, args)
    fps = args.fps or getattr(vm, "default_fps", 8.0)
    return Job(engine, decoder, MP4Writer(args.out, fps), request_of(args), Path(args.out),
               info={"frames": args.frames, "height": H, "width": W, "kind": vm.kind,
                     "window": window, "stride": stride, "fps": fps})


def load_any(args):
    """The video model ``--model`` names, through the video backends of
    :data:`longgen.modalities.backends.BACKENDS`: a pipeline directory whose ``model_index.json``
    names a Wan, CogVideoX or LTX pipeline, else one of the UNet families of
    :func:`~.models.load_video_model` (ModelScope, AnimateDiff, LaVie)."""
    from ..backends import backends, find_backend, pipeline_class

    kind = getattr(args, "kind", "auto")
    cls = pipeline_class(args.model)
    backend = find_backend("video", args.model, cls=cls)
    pipelines = {b.name for b in backends("video") if not b.fallback}
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


__all__ = ["video_job", "video_parts", "native_frames", "frame_size", "init_given", "frame_decoder", "DEFAULT_GUIDANCE"]
