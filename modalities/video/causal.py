"""Windows over latent frames for video families with a causal VAE (Wan, CogVideoX, LTX-Video): the job of
``longgen video`` on such a checkpoint, written once against what the family's model object has
(:class:`~.wan.WanModel`, :class:`~.cogvideox.CogVideoXModel`).

Rules (each family sets its numbers):

* ``--frames N`` must be ``1 + frame_step * k`` (Wan: 4, the VAE's temporal factor; CogVideoX: 8,
  because its VAE decodes an even latent count to 4n frames, not 1 + 4(n - 1); LTX: 8, its VAE's
  factor); the error names the nearest valid counts. A run has ``1 + (N - 1) / temporal_factor``
  latent frames.
* The window is the pipeline's default frame count (Wan 81 = 21 latent frames, CogVideoX 49 = 13,
  LTX 161 = 21), the stride ``default_stride_latent`` latent frames (Wan 16, CogVideoX 10, LTX 16),
  given in frames as
  ``--window-frames`` / ``--stride-frames`` (a multiple of the temporal factor). The planner aligns
  the last window to the end. Default length: three windows' worth.
* ``a|b|c``: one prompt per window. ``--init clip.mp4``: the clip's first window, VAE-encoded, is
  the first window's given content (pasted; its noisy version the DDIM inversion, as for the UNet
  families). ``--image``: image-to-video checkpoints (:meth:`~.wan.WanModel.image_conditions`).
* Frames stream through :class:`longgen.stitch.CausalStreamingDecoder` with the VAE's own cache
  (Wan, CogVideoX) or a halo decoder (LTX, whose VAE decoder is not causal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CausalVideoModel:
    """What the causal-VAE families share: a diffusers pipeline (``pipe``, its ``transformer``), the
    pipeline's own prompt encoding, the latent-frame count rule. A family sets ``name``,
    ``guidance``, ``native_frames``, ``native_size``, ``default_fps``, ``default_stride_latent``,
    ``temporal_factor``, ``frame_step`` and its VAE methods (``encode_clip``, ``decoder``)."""

    causal = True
    i2v = False
    guidance = 1.0
    max_sequence_length = 512

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor

    def default_guidance(self) -> float:
        return self.guidance

    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt=None):
        """(cond, uncond): ``{"prompt_embeds": (B, L, D)}`` from the pipeline's own ``encode_prompt``
        (negative prompt "" by default, as the pipelines)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        neg = negative_prompt or ""
        negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
        emb, nemb = self.pipe.encode_prompt(prompt=prompts, negative_prompt=negs, do_classifier_free_guidance=True,
                                            num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length,
                                            device=self.device)
        return {"prompt_embeds": emb.float()}, {"prompt_embeds": nemb.float()}


def check_frame_count(name: str, frames: Any, step: int) -> int:
    """``frames`` must be ``1 + step * k``; the error names the nearest counts the model makes."""
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"--{name} must be a positive integer, got {frames!r}")
    if (frames - 1) % step:
        lo = 1 + (frames - 1) // step * step
        raise ValueError(f"--{name} {frames}: this model's causal VAE makes 1 + {step}k frames; "
                         f"nearest: {lo} or {lo + step}")
    return frames


def causal_parts(vm, args) -> tuple:
    """(engine, decoder, window, stride, height, width) of ``longgen video``; window and stride in frames."""
    from longgen.engine import Engine, Given
    from longgen.planner import plan_windows

    from ..glue import engine_config, split_prompts
    from .writers import clip_to_tensor, read_video

    f, step = vm.temporal_factor, vm.frame_step
    wl_native = vm.latent_frames(vm.native_frames)
    default = 1 + f * (wl_native - 1 + 2 * vm.default_stride_latent)
    frames = check_frame_count("frames", args.frames if args.frames is not None else default, step)
    window = check_frame_count("window-frames", args.window_frames or vm.native_frames, step)
    if window > vm.native_frames:
        raise ValueError(f"--window-frames {window} is longer than the model's native window "
                         f"({vm.native_frames} frames)")
    wl = vm.latent_frames(window)
    stride = args.stride_frames if args.stride_frames is not None else \
        f * min(vm.default_stride_latent, max(1, wl - 1))
    if not isinstance(stride, int) or stride < f or stride % f:
        raise ValueError(f"--stride-frames must be a positive multiple of {f} (one latent frame each), got {stride!r}")
    if stride // f > wl:
        raise ValueError(f"--stride-frames {stride} is longer than the window ({window} frames)")
    if frames < window:
        raise ValueError(f"--frames {frames} is fewer than one window ({window} frames); allowed: >= {window}")
    m = vm.pixel_multiple
    H, W = (args.height or vm.native_size[0]), (args.width or vm.native_size[1])
    for name, v in (("height", H), ("width", W)):
        if not isinstance(v, int) or v <= 0 or v % m:
            raise ValueError(f"--{name} must be a positive multiple of {m} pixels for {vm.name} (VAE factor "
                             f"{vm.vae_scale_factor} x transformer patch), got {v!r}")
    plan = plan_windows(vm.latent_frames(frames), wl, stride // f)
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
        raise ValueError(f"--image needs an image-to-video checkpoint (WanImageToVideoPipeline); {vm.source} "
                         f"is text-to-video ({type(vm.pipe).__name__})")
    extra: list[dict] = [{}, {}]            # what the first window and every later one are given
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
    prompts = split_prompts(args.prompt, len(plan))
    text = {p: vm.encode_prompt(p, args.negative_prompt or "") for p in dict.fromkeys(prompts)}
    pairs = [tuple({**c, **extra[min(k, 1)]} for c in text[p]) for k, p in enumerate(prompts)]
    guidance = args.guidance if args.guidance is not None else vm.default_guidance()
    cfg = engine_config(args, guidance)
    cfg.paste_given = True
    s = vm.vae_scale_factor
    shape = (vm.latent_channels, wl, H // s, W // s)
    sched = vm.scheduling(*shape[1:]) if hasattr(vm, "scheduling") else vm.scheduler   # LTX: per window size
    engine = Engine(vm.denoiser, sched, plan, shape, -3, cfg,
                    window_cond=lambda w: pairs[w.index], given=given, dtype=torch.float32,
                    device=vm.device)
    return engine, vm.decoder(plan.length), window, stride, H, W


__all__ = ["CausalVideoModel", "causal_parts", "check_frame_count"]
