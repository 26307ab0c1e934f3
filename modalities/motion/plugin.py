"""Motion modality: ``longgen motion`` — keyframe in-betweening / completion over HumanML3D
features (absolute root, as CondMDI and the released ALM motion code use), windows along time
when the motion is longer than the model's 196 frames.

``--model builtin`` samples the builtin motion prior (:mod:`.builtin`) with CondMDI's diffusion
(1000-step cosine DDPM, x0 prediction) and the released ALM motion settings (w2 = 0.005,
observed frames re-noised with q_sample every step). Without ``--input`` the keyframes are taken
from a procedural walk, so the run has a reference to measure against. Any other ``--model`` is
a CondMDI checkpoint. Both run the one job path :func:`.jobs.motion_job`; every window is re-centred on its
own first frame (origin, heading +Z) while it is sampled, and handed the previous window's
overlap moved rigidly onto its keyframes (:mod:`.recentre`; ``--no-recentre`` keeps absolute
coordinates). Keyframe parsing and the reference clip live in
:mod:`.keyframes` (shared by both paths); ``--render/--bvh/--mesh/--smpl-dir`` are written by
:mod:`.export` after the ``.npy`` is complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longgen.run import Job

# torch and the feature code are imported when a command runs, not for ``longgen --help``;
# these names stay importable from here (parse_keyframes is public here too).
_LAZY = {"N_FEATURES": ".features", "recover_from_ric_abs": ".features", "given_of": ".keyframes",
         "keyframe_setup": ".keyframes", "parse_keyframes": ".keyframes"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

from .parts import MODEL_FRAMES, NPYWriter, export_options, joints_decoder, window_transform  # noqa: E402,F401


class Motion:
    name = "motion"
    help = "human motion from keyframes (HumanML3D 263-dim features, 20 fps), in-betweening and completion"
    # feather: windows cross-fade over their overlap; pasted seams made long motions jump
    # (600 frames, builtin prior, 100 steps: jitter 603 -> 73 m/s^3, skating 0.46 -> 0.40)
    # w1 = 3 with --impute spline and --soft-overlap 60 (400 frames, 100 steps, seeds 0-2): boundary
    # acceleration ratio 1.03 (w1 = 2: 1.18; without them, w1 = 2: 1.76)
    defaults = dict(w1=3.0, w2=0.005, steps=1000, observed="noise", given_path="noise", blend="feather")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=None, help="motion length in frames (default: the input's, or 196)")
        p.add_argument("--input", type=Path, default=None,
                       help="motion to take keyframes from: .npy joints (T,22,3) / features (T,263), or .bvh")
        p.add_argument("--keyframes", default="every:10",
                       help="every:N | first_half | last_half | middle_half | frames:a,b,c (default: %(default)s)")
        p.add_argument("--joints", default=None, help="observe only these joints at keyframes, e.g. 'root' or '0,10,11'")
        p.add_argument("--window-frames", type=int, default=MODEL_FRAMES)
        p.add_argument("--stride-frames", type=int, default=None, help="default: half the window")
        p.add_argument("--no-recentre", dest="recentre", action="store_false",
                       help="keep every window in the motion's absolute coordinates (default: each window is "
                            "re-centred on its own first frame, origin and heading, while it is sampled, and the "
                            "overlap it is handed is moved rigidly onto its keyframes)")
        p.add_argument("--impute", choices=("none", "spline"), default="spline",
                       help="spline: every step's predicted clean motion is moved onto the keyframes and the "
                            "finished overlap, the difference spread between them by a cubic spline, so the "
                            "keyframes are met (default: %(default)s; none: ALM alone)")
        p.add_argument("--soft-overlap", type=int, default=60,
                       help="frames at the end of each window's overlap observed ever less (mask ramp), so a "
                            "window turns from its neighbour's motion into its own without a jump at the "
                            "overlap's end (default: %(default)s; 0: a hard mask)")
        p.add_argument("--prompt", default="", help="text for a CondMDI checkpoint ('' = unconditional, no CLIP loaded)")
        p.add_argument("--clip", default=None, help="CLIP text encoder: directory or hub id (default: openai/clip-vit-base-patch32)")
        p.add_argument("--mean-std", type=Path, default=None,
                       help="directory with Mean_abs_3d.npy/Std_abs_3d.npy (default: beside the checkpoint)")
        o = p.add_argument_group("extra outputs (written after the .npy)")
        o.add_argument("--render", type=Path, default=None, help="stick-figure .mp4 (keyframes orange, generated blue)")
        o.add_argument("--bvh", type=Path, default=None, help=".bvh of the joints (cm)")
        o.add_argument("--mesh", type=Path, default=None, help=".glb with one body mesh per frame")
        o.add_argument("--smpl-dir", dest="smpl_model", type=Path, default=None,
                       help="folder with the SMPL model files (smpl/SMPL_{GENDER}.pkl): fit SMPL to the joints "
                            "and export its meshes (OBJ per frame)")
        o.add_argument("--smpl-out", type=Path, default=None, help="folder for the SMPL meshes (default: <out>-smpl/)")
        o.add_argument("--smpl-gender", default="neutral", choices=("neutral", "male", "female"))
        o.add_argument("--smpl-iters", type=int, default=100, help="L-BFGS iterations of the SMPL fit (default: %(default)s)")

    def build_job(self, args) -> Job:
        from .jobs import motion_job  # torch and the models: only when a command runs

        return motion_job(args)
