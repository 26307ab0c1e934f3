"""The model families of every modality ("backends") and how a checkpoint finds its own.

A backend is one file (``image/flux.py``, ``video/wan.py``, ...) with a loader ``(path, *,
dtype, device, ...) -> model`` and, for families a diffusers pipeline object can be handed to,
a class that wraps that object. The model it returns carries the modality's small contract
(the image one: ``encode_prompt``, ``engine_parts``, ``guidance``, ``vae_encode`` /
``vae_decode``, ``vae_scale_factor``, ``pixel_multiple``, ``latent_channels``, ``image_size``,
``decode_halo``, ``device``, ``dtype``; see :mod:`longgen.modalities.image.jobs`), and the
modality's one job path runs every family through it. :data:`BACKENDS` lists them; a new family
is its file plus one line here. A checkpoint is matched by the ``_class_name`` of its
``model_index.json`` (a directory, or a hub id already in the local cache); checkpoints without
one (a LaVie ``.pt`` file, a bare UNet directory, a CondMDI ``model*.pt``) go to the modality's
:attr:`Backend.fallback` family, whose loader checks them.

Also here, because every family needs them: :func:`read_json` (a checkpoint's JSON with one
clear error when it is damaged), :func:`dtype_kwargs` and :func:`load_pipeline` (a diffusers
pipeline from a checkpoint, components saved as absent kept absent).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Backend:
    """One model family of one modality."""

    name: str                     # what --kind and messages call it
    modality: str                 # "image" | "video" | "motion"
    pipelines: tuple[str, ...]    # the model_index.json _class_name values it takes
    module: str                   # its file, relative to longgen.modalities
    loader: str                   # loader(path, **kw) -> model
    wraps: str | None = None      # wraps(pipeline object) -> model
    fallback: bool = False        # takes this modality's checkpoints that name no pipeline here

    def _attr(self, dotted: str) -> Callable:
        obj: Any = importlib.import_module(f"longgen.modalities.{self.module}")
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def load(self, path, **kw):
        return self._attr(self.loader)(path, **kw)

    def wrap(self, pipe):
        if self.wraps is None:
            raise ValueError(f"the {self.name} backend loads checkpoints only; pass its path")
        return self._attr(self.wraps)(pipe)


BACKENDS: tuple[Backend, ...] = (
    Backend("builtin", "image", (), "image.builtin", "load_builtin"),
    Backend("sd", "image", ("StableDiffusionPipeline", "StableDiffusionXLPipeline"), "image.sd",
            "load_sd", "SDModel.from_pipeline", fallback=True),
    Backend("flux", "image", ("FluxPipeline",), "image.flux", "load_flux", "FluxModel"),
    Backend("sd3", "image", ("StableDiffusion3Pipeline",), "image.sd3", "load_sd3", "SD3Model"),
    Backend("builtin", "video", (), "video.builtin", "load_builtin"),
    Backend("wan", "video", ("WanPipeline", "WanImageToVideoPipeline"), "video.wan", "load_wan"),
    Backend("cogvideox", "video", ("CogVideoXPipeline",), "video.cogvideox", "load_cogvideox"),
    Backend("ltx", "video", ("LTXPipeline",), "video.ltx", "load_ltx"),
    # ModelScope (UNet3D), AnimateDiff (a MotionAdapter) and LaVie (a .pt file): the loader tells
    # them apart from the UNet config and the options
    Backend("unet-video", "video", ("TextToVideoSDPipeline", "AnimateDiffPipeline"), "video.models",
            "load_video_model", fallback=True),
    Backend("builtin", "motion", (), "motion.builtin", "load_builtin"),
    Backend("condmdi", "motion", (), "motion.jobs", "load_condmdi_motion", fallback=True),
)

# pipelines of a modality's field that longgen knows but does not run yet (named in the refusal)
NOT_YET: dict[str, dict[str, str]] = {
    "image": {"FluxKontextPipeline": "FLUX.1 Kontext", "PixArtSigmaPipeline": "PixArt-Sigma",
              "SanaPipeline": "Sana", "HunyuanDiTPipeline": "Hunyuan-DiT"},
    "video": {"CogVideoXImageToVideoPipeline": "CogVideoX image-to-video",
              "LTXImageToVideoPipeline": "LTX-Video image-to-video",
              "LTXConditionPipeline": "LTX-Video conditioning",
              "HunyuanVideoPipeline": "HunyuanVideo", "WanVideoToVideoPipeline": "Wan video-to-video"},
}


def backends(modality: str) -> tuple[Backend, ...]:
    return tuple(b for b in BACKENDS if b.modality == modality)


def backend_named(modality: str, name: str) -> Backend:
    for b in backends(modality):
        if b.name == name:
            return b
    raise ValueError(f"no {modality} backend {name!r}; allowed: {', '.join(b.name for b in backends(modality))}")


def supported(modality: str) -> str:
    """The pipelines a modality runs, for messages: 'FluxPipeline, ...'."""
    return ", ".join(p for b in backends(modality) for p in b.pipelines)


def read_json(path: Path | str) -> dict:
    """A checkpoint's JSON file as a dict; a broken one is a ValueError that names the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged or incomplete") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object; the checkpoint is damaged")
    return data


def model_index(model: str | Path, local_files_only: bool = True) -> dict | None:
    """The parsed model_index.json of a checkpoint directory or of a hub id in the local cache
    (with ``local_files_only=False``, fetched); None when there is none."""
    path = Path(model).expanduser()
    if path.exists():
        f = path / "model_index.json"
        return read_json(f) if path.is_dir() and f.is_file() else None
    if not HUB_ID.match(str(model)):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return read_json(hf_hub_download(str(model), "model_index.json", local_files_only=local_files_only))
    except Exception:  # noqa: BLE001 -- not cached / no such repo: the family's loader says so
        return None


def pipeline_class(model: str | Path, local_files_only: bool = True) -> str | None:
    """``_class_name`` of a checkpoint's model_index.json (None without one)."""
    index = model_index(model, local_files_only)
    return None if index is None else index.get("_class_name")


def find_backend(modality: str, model: str | Path, local_files_only: bool = True,
                 cls: str | None = None) -> Backend:
    """The backend of ``modality`` that runs ``model`` (a path or hub id). A pipeline class that
    is another modality's, not yet supported, or unknown with a transformer is refused by name."""
    cls = pipeline_class(model, local_files_only) if cls is None else cls
    own = backends(modality)
    for b in own:
        if cls in b.pipelines:
            return b
    if cls is not None:
        other = next((b for b in BACKENDS if cls in b.pipelines), None)
        if other is not None:
            raise ValueError(f"{model} is a {cls} checkpoint, a {other.modality} model; the "
                             f"{modality} commands run {supported(modality)}")
        if cls in NOT_YET.get(modality, {}):
            raise ValueError(f"{model} is a {cls} checkpoint ({NOT_YET[modality][cls]}), which longgen "
                             f"does not run yet; supported {modality} pipelines: {supported(modality)}")
        index = model_index(model, local_files_only) or {}
        if "unet" not in index:
            raise ValueError(f"{model}: model_index.json names {cls!r}, which no longgen {modality} "
                             f"backend runs; supported: {supported(modality)}")
    return next(b for b in own if b.fallback)


def backend_of(modality: str, pipe: Any) -> Backend | None:
    """The backend that wraps a loaded diffusers pipeline object (None: not a pipeline here)."""
    name = type(pipe).__name__
    return next((b for b in backends(modality) if name in b.pipelines and b.wraps), None)


def dtype_kwargs(library: str, dtype) -> dict:
    """The dtype keyword of ``from_pretrained``: torch_dtype (diffusers), dtype (transformers 5)."""
    if library == "transformers":
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            return {"dtype": dtype}
    return {"torch_dtype": dtype}


def load_pipeline(cls_name: str, model, dtype, device, local_files_only: bool):
    """``diffusers.<cls_name>.from_pretrained(model)`` on ``device``, progress bars off;
    components saved as ``[null, null]`` (an SD3 without T5) are passed as None, as diffusers wants."""
    import diffusers

    index = model_index(model, local_files_only) or {}
    absent = {k: None for k, v in index.items()
              if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    pipe = getattr(diffusers, cls_name).from_pretrained(str(model), local_files_only=local_files_only,
                                                        **absent, **dtype_kwargs("diffusers", dtype))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
