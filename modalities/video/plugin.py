"""Video modality: ``longgen video`` — 16-frame windows at an 8-frame stride (the paper's LaVie
setting: 12 windows for 104 frames), decoded frame by frame and encoded to mp4 as they finish.

``--model builtin`` samples the exact landscape video prior; ``--init clip.mp4`` gives the first
frames, which the following windows extend. Real checkpoints (video UNets; Wan, CogVideoX, LTX, windows
over latent frames): :mod:`longgen.modalities.video.jobs`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from longgen.cli import request_of
from longgen.run import Job

from ..glue import (VAE_SCALE, builtin_scheduler, check_builtin_dtype, check_pixels, engine_config, scene_class,
                    split_prompts)
from .writers import MP4Writer, check_frames, clip_to_tensor, read_video  # noqa: F401


DEFAULT_FRAMES = 104   # the paper's LaVie length: 12 windows of 16 at stride 8
DEFAULT_FPS = 8.0


class Video:
    name = "video"
    help = "long videos: 16-frame windows at an 8-frame stride, streamed to mp4"
    defaults = dict(w1=2.0, w2=0.001, steps=50, observed="matched", blend="auto")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=None,
                       help="output length in frames (default: 104; Wan 209 = three 81-frame windows, counts "
                            "1 + 4k; CogVideoX 129, counts 1 + 8k; LTX 417, counts 1 + 8k)")
        p.add_argument("--window-frames", type=int, default=None,
                       help="window length (default: the model's, 16; Wan 81; CogVideoX 49; LTX 161)")
        p.add_argument("--stride-frames", type=int, default=None,
                       help="window stride (default: half the window; Wan 64 frames = 16 latent frames; CogVideoX 40; "
                            "LTX 128)")
        p.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's; builtin 128)")
        p.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's; builtin 128)")
        p.add_argument("--fps", type=float, default=None, help="output frame rate (default: 8; Wan 16; LTX 25)")
        p.add_argument("--init", type=Path, default=None, help="a clip whose first window-length frames start the video")
        p.add_argument("--image", type=Path, default=None,
                       help="first frame for an image-to-video checkpoint (Wan I2V): conditions every window")
        p.add_argument("--prompt", default="")
        p.add_argument("--negative-prompt", default=None)
        m = p.add_argument_group("real video checkpoints (see modalities.video.jobs)")
        m.add_argument("--kind", choices=("auto", "unet3d", "animatediff", "lavie", "wan", "cogvideox", "ltx"), default="auto",
                       help="model family; auto = from the checkpoint (default: %(default)s)")
        m.add_argument("--motion-adapter", type=Path, default=None,
                       help="AnimateDiff MotionAdapter directory (with an SD checkpoint as --model)")
        m.add_argument("--sd-path", type=Path, default=None,
                       help="SD-1.x directory giving VAE/text encoder/scheduler (LaVie, or a bare UNet)")
        m.add_argument("--ckpt", type=Path, default=None, help="LaVie's lavie_base.pt (with the SD-1.4 directory as --model)")

    def build_job(self, args) -> Job:
        if args.fps is not None and not (isinstance(args.fps, (int, float)) and args.fps > 0):
            raise ValueError(f"--fps must be a positive number, got {args.fps!r}")
        from .jobs import check_model_options, video_job  # torch and the models: only when a command runs

        if args.model != "builtin":
            return video_job(args)
        check_model_options(args)
        import torch

        if args.frames is None:
            args.frames = DEFAULT_FRAMES
        fps = args.fps or DEFAULT_FPS
        from longgen.builtin import LandscapeRGB, LatentRGB, video_prior
        from longgen.engine import Engine, Given
        from longgen.planner import plan_windows
        from longgen.priors import PriorDenoiser
        from longgen.stitch import StreamingDecoder

        dtype = check_builtin_dtype(args)
        window = args.window_frames or 16
        stride = args.stride_frames or window // 2
        check_frames(args, window)
        H = check_pixels("height", args.height or 128)
        W = check_pixels("width", args.width or 128)
        plan = plan_windows(args.frames, window, stride)
        h, w = H // VAE_SCALE, W // VAE_SCALE
        rgb = LatentRGB()
        given = None
        if args.init is not None:
            frames, _ = read_video(args.init, max_frames=window)
            if len(frames) < window:
                raise ValueError(f"--init clip has {len(frames)} frames; it needs at least one window ({window})")
            clip = clip_to_tensor(frames[:window], H, W)                     # (3, F, H, W)
            lat = rgb.encode(clip[None].double())[0].to(dtype)                # (4, F, h, w)
            given = Given(values=lat, known=torch.ones_like(lat))
        sch = builtin_scheduler()
        den = PriorDenoiser.for_scheduler(video_prior(frames=window, height=h, width=w), sch)
        classes = [scene_class(p) for p in split_prompts(args.prompt, len(plan))]   # a|b|c: one per window
        guidance = args.guidance if args.guidance is not None else (3.0 if max(classes) >= 0 else 1.0)
        cfg = engine_config(args, guidance)
        cfg.paste_given = True  # the init clip is kept as given
        engine = Engine(den, sch, plan, (4, window, h, w), -3, cfg,
                        window_cond=lambda win: (torch.tensor([classes[win.index]]), torch.tensor([-1])),
                        given=given, dtype=dtype)
        if given is None:  # the demo: the landscape, panned with parallax (frame numbers)
            scene = LandscapeRGB()
            decoder = StreamingDecoder(lambda z, f: scene.decode(z[None], f)[0], axis=-3, halo=0, scale=1,
                                       positional=True)
        else:  # an init clip: the linear map it was encoded with
            decoder = StreamingDecoder(lambda z: rgb.decode(z[None])[0], axis=-3, halo=0, scale=1)
        return Job(engine, decoder, MP4Writer(args.out, fps), request_of(args), Path(args.out),
                   info={"frames": args.frames, "height": H, "width": W})
