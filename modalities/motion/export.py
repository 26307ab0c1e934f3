"""Motion outputs beside the ``.npy`` joints: a stick-figure mp4, BVH, a GLB body mesh per frame,
and SMPL meshes fitted to the joints.

* :func:`render_stick_mp4` draws the five t2m chains with PIL (given keyframes orange, generated
  frames blue, as the ALM paper's motion figures colour them) from a camera that follows the
  pelvis and looks across the direction of travel, and encodes H.264 with PyAV.
* :func:`export_glb` builds, per frame, a body of tapered 8-sided cylinders (one per bone) and
  writes every frame as its own node of one GLB scene (trimesh); nodes are named ``frame_0000``...
* :func:`fit_smpl` fits SMPL (smplx) to the 22 joints SMPLify-style, as MDM's ``joints2smpl``
  does for its mesh export (optimise pose, global orientation, translation and one shape for
  the clip against joint positions, L-BFGS; here with a small pose penalty, no learned prior),
  and :func:`export_smpl` writes one OBJ per frame plus the parameters (``smpl_params.npz``).
  The t2m joints are SMPL joints 0-21 (/work/shared/facts/motion.md), so the fit compares
  ``output.joints[:, :22]`` with the targets directly.

The code is ours; MDM (GuyTevet/motion-diffusion-model ``visualize/``) was read for what such
exports hold, not copied.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from .bvh import save_bvh
from .skeleton import KINEMATIC_CHAIN, N_JOINTS, PARENTS

KEYFRAME_RGB = (255, 127, 14)   # orange: given keyframes
GENERATED_RGB = (31, 119, 180)  # blue: generated frames
SMPL_PARENTS = PARENTS + (20, 21)  # SMPL adds left_hand (22) and right_hand (23) to the t2m tree
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def _check_joints(joints) -> np.ndarray:
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (N_JOINTS, 3) or j.shape[0] < 1:
        raise ValueError(f"joints must have shape (T, {N_JOINTS}, 3), got {j.shape}")
    if not np.isfinite(j).all():
        raise ValueError("joints hold NaN or inf")
    return j


def _frame_colours(n: int, keyframes: Sequence[int]) -> list[tuple[int, int, int]]:
    keys = set(int(k) for k in keyframes)
    return [KEYFRAME_RGB if t in keys else GENERATED_RGB for t in range(n)]


# --------------------------------------------------------------------------- stick figure mp4


def camera_axes(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right (3,), up (3,)) of an orthographic camera that looks across the pelvis's overall
    travel (seen from the walker's left when it moves; from +X when it stands), 15 deg above."""
    travel = joints[-1, 0, [0, 2]] - joints[0, 0, [0, 2]]
    d = travel / np.linalg.norm(travel) if np.linalg.norm(travel) > 0.2 else np.array([0.0, 1.0])
    right = np.array([d[0], 0.0, d[1]])                 # screen right = direction of travel
    view = np.array([-d[1], 0.0, d[0]])                 # horizontal viewing direction
    tilt = np.deg2rad(15.0)
    up = np.array([0.0, np.cos(tilt), 0.0]) + np.sin(tilt) * view
    return right, up


def stick_frames(joints, keyframes: Sequence[int] = (), size: int = 320) -> np.ndarray:
    """(T, 22, 3) joints -> (T, size, size, 3) uint8 drawings (PIL)."""
    from PIL import Image, ImageDraw

    j = _check_joints(joints)
    right, up = camera_axes(j)
    u = j @ right                                       # (T, 22) screen x in metres
    v = j @ up                                          # (T, 22) screen y
    floor = v.min()
    scale = 0.8 * size / max(np.ptp(v) + 0.2, 2.0)      # pixels per metre, fixed for the clip
    colours = _frame_colours(len(j), keyframes)
    out = np.empty((len(j), size, size, 3), dtype=np.uint8)
    for t in range(len(j)):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        cx = u[t, 0]
        px = size / 2 + (u[t] - cx) * scale             # follow the pelvis horizontally
        py = size * 0.9 - (v[t] - floor) * scale
        ground = size * 0.9
        draw.line([(0, ground), (size, ground)], fill=(170, 170, 170), width=1)
        for k in range(0, int(size / scale) + 2):       # floor ticks every metre scroll by
            gx = size / 2 + (np.floor(cx) + k - size / (2 * scale) - cx) * scale
            draw.line([(gx, ground), (gx, ground + 6)], fill=(170, 170, 170), width=1)
        for chain in KINEMATIC_CHAIN:
            draw.line([(px[c], py[c]) for c in chain], fill=colours[t], width=3, joint="curve")
        r = 3
        for c in range(N_JOINTS):
            draw.ellipse([px[c] - r, py[c] - r, px[c] + r, py[c] + r], fill=colours[t])
        out[t] = np.asarray(img)
    return out


def render_stick_mp4(path, joints, keyframes: Sequence[int] = (), fps: float = 20.0,
                     size: int = 320) -> Path:
    """Write a stick-figure H.264 mp4 of (T, 22, 3) joints; given keyframes drawn orange."""
    import av
    from fractions import Fraction

    if size % 2:
        raise ValueError(f"size must be even for H.264, got {size}")
    frames = stick_frames(joints, keyframes, size)
    path = Path(path)
    with av.open(str(path), mode="w") as box:
        s = box.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.codec_context.thread_count = 1
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                box.mux(packet)
        for packet in s.encode():
            box.mux(packet)
    return path


# --------------------------------------------------------------------------- BVH


def export_bvh(path, joints, fps: float = 20.0) -> Path:
    """(T, 22, 3) joints (m) -> BVH in centimetres (:func:`.bvh.save_bvh`)."""
    return save_bvh(path, _check_joints(joints), fps=fps)


# --------------------------------------------------------------------------- GLB


def _unit_cylinder(sections: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (2s + 2, 3) of a cylinder of radius 1 from z = 0 to z = 1 (rings, then the two
    cap centres) and its faces (outward)."""
    a = 2 * np.pi * np.arange(sections) / sections
    ring = np.stack([np.cos(a), np.sin(a)], 1)
    verts = np.concatenate([np.c_[ring, np.zeros(sections)], np.c_[ring, np.ones(sections)],
                            [[0, 0, 0], [0, 0, 1]]])
    faces = []
    for i in range(sections):
        k = (i + 1) % sections
        faces += [[i, k, sections + k], [i, sections + k, sections + i],       # side
                  [2 * sections, k, i], [2 * sections + 1, sections + i, sections + k]]  # caps
    return verts, np.array(faces)


def _frames_to(d: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors -> (N, 3, 3) rotations taking +z to each (Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, d)
    c = d @ z
    vx = np.zeros((len(d), 3, 3))
    vx[:, 0, 1], vx[:, 0, 2], vx[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    vx = vx - vx.transpose(0, 2, 1)
    k = 1.0 / np.maximum(1.0 + c, 1e-9)
    rot = np.eye(3) + vx + vx @ vx * k[:, None, None]
    flip = c < -1 + 1e-9                                # pointing down -z: rotate about x
    rot[flip] = np.diag([1.0, -1.0, -1.0])
    return rot


def body_meshes(joints, radius: float = 0.035, sections: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(T, 22, 3) joints -> per-frame vertices (T, 21 * (2s + 2), 3) and shared faces: one
    cylinder per bone (parent -> joint), ``radius`` metres (thinner toward hands and feet)."""
    j = _check_joints(joints)
    cv, cf = _unit_cylinder(sections)
    child = np.arange(1, N_JOINTS)
    parent = np.array(PARENTS[1:])
    a, b = j[:, parent], j[:, child]                    # (T, 21, 3)
    seg = b - a
    length = np.linalg.norm(seg, axis=-1)               # (T, 21)
    d = seg / np.maximum(length, 1e-9)[..., None]
    rot = _frames_to(d.reshape(-1, 3)).reshape(*d.shape[:2], 3, 3)
    thin = np.where(np.isin(child, (10, 11, 20, 21, 18, 19)), 0.6, 1.0)  # feet, forearms, hands
    r = radius * thin[None, :, None]                    # (1, 21, 1)
    scale = np.concatenate([np.broadcast_to(r, length.shape + (1,)).repeat(2, -1),
                            length[..., None]], -1)  # (T, 21, 3): radius, radius, length
    local = cv[None, None] * scale[:, :, None, :]       # (T, 21, V, 3)
    verts = np.einsum("tbij,tbvj->tbvi", rot, local) + a[:, :, None, :]
    faces = (cf[None] + np.arange(21)[:, None, None] * len(cv)).reshape(-1, 3)
    return verts.reshape(len(j), -1, 3), faces


def export_glb(path, joints, keyframes: Sequence[int] = ()) -> Path:
    """A GLB scene holding one body mesh per frame (node ``frame_0000``...); keyframes orange."""
    import trimesh

    verts, faces = body_meshes(joints)
    colours = _frame_colours(len(verts), keyframes)
    scene = trimesh.Scene()
    for t, v in enumerate(verts):
        mesh = trimesh.Trimesh(v, faces, process=False)
        mesh.visual.face_colors = np.array([*colours[t], 255], dtype=np.uint8)
        scene.add_geometry(mesh, node_name=f"frame_{t:04d}", geom_name=f"frame_{t:04d}")
    path = Path(path)
    path.write_bytes(scene.export(file_type="glb"))
    return path


# --------------------------------------------------------------------------- SMPL


def read_smpl_model(model_dir, gender: str = "neutral") -> dict:
    """The pickle smplx.create would read, ``model_dir/smpl/SMPL_{GENDER}.pkl``, checked for
    the keys and shapes smplx needs (clear errors instead of smplx's assertions)."""
    path = Path(model_dir) / "smpl" / f"SMPL_{gender.upper()}.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"no SMPL model at {path}; --smpl-model DIR must hold "
                                f"smpl/SMPL_{gender.upper()}.pkl (from smpl.is.tue.mpg.de)")
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    missing = [k for k in SMPL_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks the SMPL keys {missing}; needs {list(SMPL_KEYS)}")
    kt = np.asarray(data["kintree_table"])
    if kt.shape != (2, 24):
        raise ValueError(f"{path}: kintree_table has shape {kt.shape}; SMPL has (2, 24)")
    return data


def _vertex_ids(n_vertices: int) -> dict | None:
    """smplx's extra-joint vertex ids need SMPL's 6890 vertices; the fit uses joints 0-21 only,
    so a smaller mesh gets every extra joint pinned to vertex 0."""
    from smplx.vertex_ids import vertex_ids

    ids = vertex_ids["smplh"]
    return None if n_vertices > max(ids.values()) else {k: 0 for k in ids}


def fit_smpl(joints, model_dir, gender: str = "neutral", iters: int = 100,
             vertex_ids: dict | None = None, pose_weight: float = 1e-3) -> dict:
    """SMPLify-style fit of SMPL to (T, 22, 3) joints: global orientation, body pose, translation
    per frame and one shape for the clip, by L-BFGS on the squared joint distance (+ a small
    L2 pose penalty). Returns numpy arrays: ``global_orient (T, 3)``, ``body_pose (T, 69)``,
    ``transl (T, 3)``, ``betas (1, B)``, ``vertices (T, V, 3)``, ``faces (F, 3)``,
    ``joints (T, 22, 3)`` and the mean joint errors ``error_init`` / ``error_fit`` (m)."""
    import smplx
    import torch

    target = torch.as_tensor(_check_joints(joints), dtype=torch.float32)   # (T, 22, 3)
    T = target.shape[0]
    data = read_smpl_model(model_dir, gender)
    if vertex_ids is None:
        vertex_ids = _vertex_ids(np.asarray(data["v_template"]).shape[0])
    kw = {} if vertex_ids is None else {"vertex_ids": vertex_ids}
    body = smplx.create(str(model_dir), model_type="smpl", gender=gender, batch_size=T, **kw)
    for p in body.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        rest = body().joints[0, 0]                                         # pelvis at rest
    orient = torch.zeros(T, 3, requires_grad=True)
    pose = torch.zeros(T, 21 * 3, requires_grad=True)                      # joints 1-21
    transl = (target[:, 0] - rest).clone().requires_grad_(True)
    betas = torch.zeros(1, body.num_betas, requires_grad=True)

    def run():
        full = torch.cat([pose, torch.zeros(T, 6)], 1)                     # hands stay at rest
        return body(global_orient=orient, body_pose=full, transl=transl,
                    betas=betas.expand(T, -1))

    def err(out):
        return (out.joints[:, :N_JOINTS] - target).norm(dim=-1).mean().item()

    with torch.no_grad():
        error_init = err(run())
    opt = torch.optim.LBFGS([orient, pose, transl, betas], lr=1.0, max_iter=iters,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = run()
        # centimetres, summed over frames: keeps L-BFGS's tolerances meaningful (a metre-scale
        # mean loss of ~1e-4 would stop it on tolerance_change before converging)
        d = (out.joints[:, :N_JOINTS] - target) * 100.0
        loss = (d ** 2).sum(-1).mean(-1).sum() \
            + pose_weight * (pose ** 2).sum() + pose_weight * (betas ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        out = run()
    full = torch.cat([pose, torch.zeros(T, 6)], 1)
    return {"global_orient": orient.detach().numpy(), "body_pose": full.detach().numpy(),
            "transl": transl.detach().numpy(), "betas": betas.detach().numpy(),
            "vertices": out.vertices.numpy(), "faces": np.asarray(body.faces, dtype=np.int64),
            "joints": out.joints[:, :N_JOINTS].numpy(), "error_init": error_init,
            "error_fit": err(out)}


def export_smpl(out_dir, joints, model_dir, gender: str = "neutral", iters: int = 100,
                vertex_ids: dict | None = None) -> tuple[list[Path], dict]:
    """Fit SMPL and write ``frame_0000.obj``... and ``smpl_params.npz`` into ``out_dir``."""
    import trimesh

    fit = fit_smpl(joints, model_dir, gender, iters, vertex_ids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, v in enumerate(fit["vertices"]):
        p = out_dir / f"frame_{t:04d}.obj"
        trimesh.Trimesh(v, fit["faces"], process=False).export(p)
        paths.append(p)
    params = out_dir / "smpl_params.npz"
    np.savez(params, **{k: fit[k] for k in ("global_orient", "body_pose", "transl", "betas", "joints")})
    return paths + [params], fit


# --------------------------------------------------------------------------- from the CLI


def export_all(joints, keyframes: Sequence[int], *, render=None, bvh=None, mesh=None,
               smpl_dir=None, smpl_model=None, gender: str = "neutral", smpl_iters: int = 100,
               fps: float = 20.0) -> tuple[list[Path], dict]:
    """Write the outputs asked for; returns (paths, figures for the run's info line)."""
    paths, info = [], {}
    if render is not None:
        paths.append(render_stick_mp4(render, joints, keyframes, fps=fps))
    if bvh is not None:
        paths.append(export_bvh(bvh, joints, fps=fps))
    if mesh is not None:
        paths.append(export_glb(mesh, joints, keyframes))
    if smpl_dir is not None:
        written, fit = export_smpl(smpl_dir, joints, smpl_model, gender, smpl_iters)
        paths += written
        info.update(smpl_error_init_m=fit["error_init"], smpl_error_fit_m=fit["error_fit"])
    return paths, info


def check_export_args(args) -> None:
    """Fail before sampling, not after: output folders exist, SMPL options come together."""
    for flag in ("render", "bvh", "mesh"):
        p = getattr(args, flag, None)
        if p is not None and not Path(p).parent.exists():
            raise ValueError(f"--{flag} {p}: directory {Path(p).parent} does not exist")
    for flag, suffix in (("render", ".mp4"), ("bvh", ".bvh"), ("mesh", ".glb")):
        p = getattr(args, flag, None)
        if p is not None and Path(p).suffix.lower() != suffix:
            raise ValueError(f"--{flag} {p}: expected a {suffix} file")
    if getattr(args, "smpl_out", None) is not None and getattr(args, "smpl_model", None) is None:
        raise ValueError("--smpl-out needs --smpl-dir DIR (the folder holding smpl/SMPL_NEUTRAL.pkl)")
    if getattr(args, "smpl_model", None) is not None:
        read_smpl_model(args.smpl_model, args.smpl_gender)
