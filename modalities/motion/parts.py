"""What both motion job paths (builtin prior, CondMDI) use: the model's clip length, the writer of
joints with its exports, the features-to-joints decoder and the per-window re-centring."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .skeleton import N_JOINTS

if TYPE_CHECKING:
    import torch

MODEL_FRAMES = 196  # CondMDI / HumanML3D: clips padded to 196 frames


class NPYWriter:
    """Joint positions (T, 22, 3) float32 streamed into a valid ``.npy``: the header is rewritten in
    place after every chunk, so a partial file always loads with the rows finished so far. The
    state records the sha256 of every chunk of rows; ``--resume`` verifies them before it goes on."""

    HEADER = 128

    def __init__(self, out: Path, reference: np.ndarray | None = None, keyframes=(), info: dict | None = None,
                 exports: dict | None = None):
        self.out, self.rows = Path(out), 0
        self.reference, self.keyframes, self.info = reference, list(keyframes), info if info is not None else {}
        self.exports = exports or {}  # keyword arguments of export.export_all, run after the .npy
        self.kf_err: list[float] = []
        self.chunks: list[list] = []  # [first row, rows, sha256 of their bytes] per written chunk

    def _header(self) -> bytes:
        d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, 3), }" % (self.rows, N_JOINTS)
        body = d.encode("latin1")
        pad = self.HEADER - 10 - len(body) - 1
        return b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def open(self, work: Path, state: dict | None) -> None:
        from longgen.run import verify_part

        self.rows = int(state["rows"]) if state else 0
        self.kf_err = list(state.get("kf_err", [])) if state else []
        self.chunks = [list(c) for c in state["sha256"]] if state else []
        row = N_JOINTS * 3 * 4
        if sum(int(c[1]) for c in self.chunks) != self.rows:
            raise ValueError(f"resume state lists digests for {sum(int(c[1]) for c in self.chunks)} rows, "
                             f"not {self.rows}")
        for first, n, digest in self.chunks:  # verify first: a refused resume changes nothing
            verify_part(self.out, digest, offset=self.HEADER + int(first) * row, size=int(n) * row,
                        what=f"finished part (frames {first}..{int(first) + int(n) - 1}) of the motion")
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
        data = joints.astype("<f4").tobytes()
        self.f.seek(self.HEADER + self.rows * N_JOINTS * 3 * 4)
        self.f.write(data)
        self.chunks.append([self.rows, len(joints), hashlib.sha256(data).hexdigest()])
        self.rows += len(joints)
        self._flush_header()

    def state(self) -> dict:
        return {"rows": self.rows, "kf_err": self.kf_err, "sha256": [list(c) for c in self.chunks]}

    def close(self) -> list[Path]:
        self.f.close()
        if self.kf_err:
            self.info["keyframe_error_m"] = float(np.mean(self.kf_err))
        paths = [self.out]
        if any(v is not None for v in self.exports.values()):
            from .export import export_all

            more, figures = export_all(np.load(self.out), self.keyframes, **self.exports)
            paths += more
            self.info.update(figures)
        return paths


def export_options(args) -> dict:
    """``export.export_all`` keywords from the motion command's output flags (checked first)."""
    from .export import check_export_args

    check_export_args(args)
    smpl_out = None
    if args.smpl_model is not None:
        out = Path(args.out)
        smpl_out = args.smpl_out or out.with_name(out.stem + "-smpl")
    return dict(render=args.render, bvh=args.bvh, mesh=args.mesh, smpl_dir=smpl_out,
                smpl_model=args.smpl_model, gender=args.smpl_gender, smpl_iters=args.smpl_iters)


def joints_decoder(norm):
    """(263, n) normalised abs-root features -> (66, n) joint positions; exact chunk by chunk
    (root position and heading are absolute in these features)."""

    from longgen.stitch import StreamingDecoder

    from .features import recover_from_ric_abs

    def decode(z):
        j = recover_from_ric_abs(norm.denormalize(z.T.double()))       # (n, 22, 3)
        return j.reshape(j.shape[0], -1).T.to(z.dtype)

    return StreamingDecoder(decode, axis=-1, halo=0, scale=1)


def window_transform(args, norm):
    """Each window re-centred on its own start (:mod:`.recentre`) unless ``--no-recentre``."""
    from .recentre import RecentreWindows

    return RecentreWindows(norm) if getattr(args, "recentre", True) else None


