"""Motion modality: ``longgen motion`` — keyframe in-betweening / completion over HumanML3D
features (absolute root, as CondMDI and the released ALM motion code use), windows along time
when the motion is longer than the model's 196 frames.

``--model builtin`` samples the builtin motion prior (:mod:`.builtin`) with CondMDI's diffusion
(1000-step cosine DDPM, x0 prediction) and the released ALM motion settings (w1 = 1, w2 = 0.005,
observed frames re-noised with q_sample every step). Without ``--input`` the keyframes are taken
from a procedural walk, so the run has a reference to measure against.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from longgen.cli import request_of
from longgen.engine import Engine, EngineConfig, Given
from longgen.planner import KEYFRAME_MODES, keyframe_frames, plan_windows
from longgen.priors import PriorDenoiser
from longgen.run import Job
from stitch import StreamingDecoder

from .features import N_FEATURES, recover_from_ric_abs
from .keyframes import feature_mask, load_motion
from .skeleton import N_JOINTS

MODEL_FRAMES = 196  # CondMDI / HumanML3D: clips padded to 196 frames


def parse_keyframes(spec: str, length: int) -> list[int]:
    """``every:N`` | ``first_half`` | ``last_half`` | ``middle_half`` | ``frames:0,10,20``."""
    mode, _, arg = spec.partition(":")
    if mode == "every":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"--keyframes every:N needs an integer N, got {arg!r}") from None
        return keyframe_frames("every", length, every=n)
    if mode == "frames":
        try:
            frames = [int(f) for f in arg.split(",") if f.strip()]
        except ValueError:
            raise ValueError(f"--keyframes frames:... needs integers, got {arg!r}") from None
        return keyframe_frames("frames", length, frames=frames)
    if mode in KEYFRAME_MODES:
        return keyframe_frames(mode, length)
    raise ValueError(f"unknown --keyframes {spec!r}; allowed: every:N, first_half, last_half, middle_half, frames:a,b,c")


class NPYWriter:
    """Joint positions (T, 22, 3) float32 streamed into a valid ``.npy``: the header is rewritten in
    place after every chunk, so a partial file always loads with the rows finished so far."""

    HEADER = 128

    def __init__(self, out: Path, reference: np.ndarray | None = None, keyframes=(), info: dict | None = None):
        self.out, self.rows = Path(out), 0
        self.reference, self.keyframes, self.info = reference, list(keyframes), info if info is not None else {}
        self.kf_err: list[float] = []

    def _header(self) -> bytes:
        d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, 3), }" % (self.rows, N_JOINTS)
        body = d.encode("latin1")
        pad = self.HEADER - 10 - len(body) - 1
        return b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def open(self, work: Path, state: dict | None) -> None:
        self.rows = int(state["rows"]) if state else 0
        self.kf_err = list(state.get("kf_err", [])) if state else []
        mode = "r+b" if (state and self.out.exists()) else "w+b"
        self.f = open(self.out, mode)
        self.f.truncate(self.HEADER + self.rows * N_JOINTS * 3 * 4)
        self._flush_header()

    def _flush_header(self):
        self.f.seek(0)
        self.f.write(self._header())
        self.f.flush()
        os.fsync(self.f.fileno())

    def write(self, media: torch.Tensor) -> None:
        joints = media.detach().float().T.reshape(-1, N_JOINTS, 3).cpu().numpy()  # (66, n) -> (n, 22, 3)
        if self.reference is not None:
            for f in self.keyframes:
                if self.rows <= f < self.rows + len(joints):
                    d = np.linalg.norm(joints[f - self.rows] - self.reference[f], axis=-1).mean()
                    self.kf_err.append(float(d))
        self.f.seek(self.HEADER + self.rows * N_JOINTS * 3 * 4)
        self.f.write(joints.astype("<f4").tobytes())
        self.rows += len(joints)
        self._flush_header()

    def state(self) -> dict:
        return {"rows": self.rows, "kf_err": self.kf_err}

    def close(self) -> list[Path]:
        self.f.close()
        if self.kf_err:
            self.info["keyframe_error_m"] = float(np.mean(self.kf_err))
        return [self.out]


class Motion:
    name = "motion"
    help = "human motion from keyframes (HumanML3D 263-dim features, 20 fps), in-betweening and completion"
    defaults = dict(w2=0.005, steps=1000, observed="noise", given_path="noise")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=None, help="motion length in frames (default: the input's, or 196)")
        p.add_argument("--input", type=Path, default=None,
                       help="motion to take keyframes from: .npy joints (T,22,3) / features (T,263), or .bvh")
        p.add_argument("--keyframes", default="every:10",
                       help="every:N | first_half | last_half | middle_half | frames:a,b,c (default: %(default)s)")
        p.add_argument("--joints", default=None, help="observe only these joints at keyframes, e.g. 'root' or '0,10,11'")
        p.add_argument("--window-frames", type=int, default=MODEL_FRAMES)
        p.add_argument("--stride-frames", type=int, default=None, help="default: half the window")
        p.add_argument("--prompt", default="")

    def build_job(self, args) -> Job:
        if args.model != "builtin":
            from .jobs import condmdi_job

            return condmdi_job(args)
        from ..image.plugin import check_builtin_dtype
        from .builtin import builtin_motion_prior, ddpm_scheduler, motion_features

        dtype = check_builtin_dtype(args)
        window = args.window_frames
        reference, feats = self._reference(args)
        length = feats.shape[0]
        if args.frames is not None and args.frames != length:
            raise ValueError(f"--frames {args.frames} differs from the input's {length} frames")
        if length < window:
            raise ValueError(f"the motion has {length} frames, fewer than the window ({window}); pass --window-frames <= {length}")
        frames = parse_keyframes(args.keyframes, length)
        joints_sel = None
        if args.joints:
            joints_sel = ["root"] if args.joints == "root" else [int(j) for j in args.joints.split(",")]
        gen_mask = feature_mask(frames, length, joints=joints_sel)          # (263, L), 1 = generated
        prior, norm = builtin_motion_prior(window)
        values = norm.normalize(torch.from_numpy(feats)).T.to(dtype)        # (263, L)
        given = Given(values=values, known=(1 - gen_mask.to(dtype)))
        plan = plan_windows(length, window, args.stride_frames or window // 2)
        sch = ddpm_scheduler()
        den = PriorDenoiser.for_scheduler(prior, sch)
        cfg = EngineConfig(method=args.method, w1=args.w1, w2=args.w2, steps=args.steps, group=args.group,
                           observed=args.observed, live=args.live, given_path=args.given_path,
                           guidance_scale=1.0, blend=args.blend, seed=args.seed)
        engine = Engine(den, sch, plan, (N_FEATURES, window), -1, cfg, given=given, dtype=dtype)

        def decode(z):  # (263, n) normalised features -> (66, n) joint positions
            j = recover_from_ric_abs(norm.denormalize(z.T.double()))
            return j.reshape(j.shape[0], -1).T.to(z.dtype)

        decoder = StreamingDecoder(decode, axis=-1, halo=0, scale=1)
        info = {"frames": length, "keyframes": len(frames)}
        writer = NPYWriter(args.out, reference, frames, info)
        return Job(engine, decoder, writer, request_of(args), Path(args.out), info=info)

    @staticmethod
    def _reference(args):
        """(reference joints (L, 22, 3) in the canonical frame, absolute-root features (L, 263))."""
        from .builtin import motion_features
        from .features import to_abs_root
        from .procedural import generate_motions

        if args.input is None:
            L = args.frames or MODEL_FRAMES
            if L < 1:
                raise ValueError(f"--frames must be a positive integer, got {L}")
            joints = generate_motions(1, L + 1, seed=args.seed + 1)[0]
            feats = motion_features(joints)
        else:
            m = load_motion(args.input)
            feats = motion_features(m.data) if m.kind == "joints" else np.asarray(to_abs_root(m.data))
        ref = recover_from_ric_abs(torch.from_numpy(feats)).numpy()
        return ref, feats
