"""Video modality: ``longgen video`` — windows of the model's native length at half that stride
(builtin and the video UNets: 16 frames at 8, the paper's LaVie setting, 12 windows for 104
frames), decoded as they finish and encoded to mp4. ``--init clip.mp4`` gives the first frames,
which the following windows extend. This file declares the options; every family
(``--model builtin``, video UNets, Wan, CogVideoX, LTX) runs the one job path of
:mod:`longgen.modalities.video.jobs`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longgen.run import Job


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
        from .jobs import video_job  # torch and the models: only when a command runs

        return video_job(args)
