"""``longgen motion``: one job path (:func:`motion_job`) for every motion backend — the builtin
prior (:class:`~.builtin.BuiltinMotion`) and a CondMDI U-Net (:class:`CondMDIMotion`,
``--model PATH/model000500000.pt``).

The released ALM motion setup (Hleephilip/ALM_public, docs/motion-completion.md and
``prepare.py``; /work/shared/facts/motion.md): CondMDI's unconditional (not keyframe-conditioned)
checkpoint with the ``args.json`` beside it, 1000-step DDPM with the cosine schedule and x0
prediction, w1 = 1, w2 = 0.005, the observed frames re-noised with q_sample at every step
(``--given-path noise``), CLIP text with classifier-free guidance (``guidance_param`` of
args.json, 2.5 as released). Features are CondMDI's abs_3d HumanML3D features, normalised with
``Mean_abs_3d.npy`` / ``Std_abs_3d.npy`` (beside the checkpoint, or ``--mean-std DIR``).
Motions longer than the window (196 frames) are sampled as overlapping windows along time, each
re-centred on its own first frame (:mod:`.recentre`) as the clips the model was trained on are.

Keyframes, the reference clip and the outputs are the same for both (:mod:`.keyframes`,
:mod:`.parts`, :mod:`.export`); only the denoiser, its schedule, its normaliser and the text differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from longgen.cli import request_of
from longgen.engine import Engine, EngineConfig
from longgen.planner import plan_windows
from longgen.run import Job

from ..glue import resolve_blend
from .condmdi import CondMDIDenoiser, load_condmdi, make_scheduler, null_text
from .features import N_FEATURES, Normalizer
from .keyframes import given_of, keyframe_setup

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not available; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def find_checkpoint(model: str | Path) -> Path:
    """The checkpoint file: ``model`` itself, or the newest ``model*.pt`` in a directory."""
    path = Path(model)
    if path.is_dir():
        found = sorted(path.glob("model*.pt"))
        if not found:
            raise FileNotFoundError(f"--model {path}: no model*.pt checkpoint in that directory")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: no such checkpoint (expected a CondMDI "
                                "model*.pt with args.json beside it, or 'builtin')")
    return path


def load_normalizer(ckpt: Path, mean_std: Path | None) -> Normalizer:
    """Mean_abs_3d.npy / Std_abs_3d.npy from ``--mean-std`` or the checkpoint's folder."""
    where = Path(mean_std) if mean_std is not None else ckpt.parent
    try:
        return Normalizer.from_dir(where, abs_root=True)
    except FileNotFoundError as e:
        hint = "" if mean_std is not None else " (pass --mean-std DIR, e.g. HumanML3D's data root)"
        raise FileNotFoundError(f"{e}: the abs_3d statistics of the checkpoint's dataset{hint}") from None


def text_condition(config, prompt: str, clip: str | None, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(cond, uncond) rows of CLIP features; an empty prompt loads no encoder (zeros = uncond)."""
    from .text import DEFAULT_CLIP, encode_text

    if not config.text_conditioned:
        if prompt.strip():
            raise ValueError(f"--prompt {prompt!r}: this checkpoint is not text-conditioned "
                             "(args.json: unconstrained or a dataset without text); use --prompt ''")
        return None, None
    cond = encode_text(prompt, source=clip or DEFAULT_CLIP, device="cpu")   # (1, 512)
    return cond.to(device), null_text(1, device=device)


class CondMDIMotion:
    """A loaded CondMDI U-Net checkpoint behind the motion contract (see
    :class:`~.builtin.BuiltinMotion`): its denoiser and schedule from ``args.json``, the abs_3d
    normaliser, CLIP text with classifier-free guidance."""

    kind = "condmdi"
    dataset_features = True        # HumanML3D's features, as the checkpoint was trained on
    engine_dtype = torch.float32

    def __init__(self, model, config, ckpt: Path, norm: Normalizer, device):
        self.config, self.ckpt, self.norm, self.device = config, ckpt, norm, device
        self.denoiser = CondMDIDenoiser(model, config)
        self.scheduler = make_scheduler(config)

    def conditions(self, args):
        """(cond, uncond, guidance): CLIP rows of ``--prompt``; guidance ``--guidance`` or args.json's
        ``guidance_param``, 1 without text (the guided and unguided predictions are one row)."""
        cond, uncond = text_condition(self.config, args.prompt, args.clip, args.device)
        guidance = args.guidance if args.guidance is not None else float(self.config.guidance_param)
        if cond is None or not args.prompt.strip():
            guidance = 1.0
        return cond, uncond, guidance

    def run_info(self, guidance: float) -> dict:
        return {"guidance": guidance, "checkpoint": str(self.ckpt)}


def load_condmdi_motion(model: str | Path, *, args) -> CondMDIMotion:
    """The backend's loader: ``model`` a CondMDI ``model*.pt`` (or its folder) with ``args.json``
    beside it, an unconditional HumanML3D abs_3d checkpoint."""
    dtype = model_dtype(args.dtype)
    ckpt = find_checkpoint(model)
    norm = load_normalizer(ckpt, args.mean_std)
    net, config = load_condmdi(ckpt, device=args.device, dtype=dtype)
    if config.input_features != N_FEATURES or not config.abs_3d:
        raise ValueError(f"{ckpt}: longgen motion needs a HumanML3D abs_3d checkpoint (263 features, "
                         f"abs_3d true); args.json says {config.input_features} features, abs_3d={config.abs_3d}")
    if config.keyframe_conditioned:
        raise ValueError(f"{ckpt}: keyframe_conditioned checkpoints take the keyframes as input; "
                         "longgen samples the unconditional CondMDI model (condmdi_uncond) as ALM does")
    return CondMDIMotion(net, config, ckpt, norm, args.device)


def motion_job(args) -> Job:
    """The Job of a ``longgen motion`` run, for every motion backend (builtin prior, CondMDI)."""
    from ..backends import backend_named, find_backend
    from .parts import MODEL_FRAMES, NPYWriter, export_options, joints_decoder, window_transform

    backend = backend_named("motion", "builtin") if args.model == "builtin" else find_backend("motion", args.model)
    exports = export_options(args)
    mm = backend.load(args.model, args=args)
    window = args.window_frames
    setup = keyframe_setup(args, MODEL_FRAMES, window, dataset_features=mm.dataset_features)
    cond, uncond, guidance = mm.conditions(args)
    cfg = EngineConfig(method=args.method, w1=args.w1, w2=args.w2, steps=args.steps, group=args.group,
                       observed=args.observed, live=args.live, given_path=args.given_path,
                       guidance_scale=guidance, blend=resolve_blend(args.blend, args.observed, args.steps),
                       seed=args.seed, impute=args.impute, soft_overlap=args.soft_overlap)
    plan = plan_windows(setup.length, window, args.stride_frames or window // 2)
    engine = Engine(mm.denoiser, mm.scheduler, plan, (N_FEATURES, window), -1, cfg, cond=cond, uncond=uncond,
                    given=given_of(setup, mm.norm, mm.engine_dtype), dtype=mm.engine_dtype, device=mm.device,
                    window_transform=window_transform(args, mm.norm))
    info = {"frames": setup.length, "keyframes": len(setup.frames), **mm.run_info(guidance)}
    writer = NPYWriter(args.out, setup.reference, setup.frames, info, exports)
    return Job(engine, joints_decoder(mm.norm), writer, request_of(args), Path(args.out), info=info)
