"""Stable Diffusion (1.x, 2.x, XL) adapted to the longgen denoiser protocol.

What this file gives the image plugin:

* :func:`load_sd` reads a diffusers checkpoint (a local directory, or a hub id already in the
  cache) into an :class:`SDModel`: UNet, text encoder(s), tokenizer(s), VAE (``AutoencoderKL``, or
  an ``AutoencoderTiny`` for fast previews) and a ``DDIMScheduler`` built from the checkpoint's
  own scheduler config (its betas, ``steps_offset`` and ``prediction_type``);
* :meth:`SDModel.encode_prompt` turns prompts into the condition the denoiser takes: a
  ``(B, 77, D)`` tensor for SD 1.x/2.x, a dict of tensors for SDXL, both batchable with
  :func:`longgen.denoiser.cat_cond`;
* :class:`SDDenoiser` (``SDModel.denoiser``) is the ``(x, t, cond) -> output`` callable;
* :meth:`SDModel.vae_encode` / :meth:`SDModel.vae_decode` move between images in [-1, 1] and
  scaled latents, a chunk of the batch at a time.

Conventions follow diffusers 0.42 (huggingface/diffusers):
``pipelines/stable_diffusion/pipeline_stable_diffusion.py`` ``encode_prompt`` (SD 1/2: the text
encoder's last hidden state, an attention mask only when the text encoder config asks for one),
``pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py`` ``encode_prompt`` and
``_get_add_time_ids`` (SDXL: penultimate hidden states of both encoders concatenated on the
feature axis, the pooled projection of ``text_encoder_2``, time ids = original size + crop
top-left + target size, zeros for an absent negative prompt when
``force_zeros_for_empty_prompt``), and ``vae_scale_factor = 2 ** (len(block_out_channels) - 1)``.
Latents are ``latent_dist.mode() * scaling_factor`` as in the released ALM inpainting code
(Hleephilip/ALM_public, ``alm/inpainting.py``); ``AutoencoderTiny`` latents are already in that
scaled space (its config has ``scaling_factor = 1``).

diffusers and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from longgen.denoiser import check_prediction_type, expand_cond

from ..backends import HUB_ID as _HUB_ID, dtype_kwargs as _dtype_kwargs, read_json as _read_json  # noqa: F401

SD_GUIDANCE = 7.5  # released ALM wide-image and inpainting default (Hleephilip/ALM_public)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
EXPECTED_LAYOUT = (
    "a diffusers checkpoint directory: model_index.json plus the folders unet/, vae/, "
    "text_encoder/, tokenizer/, scheduler/ (and text_encoder_2/, tokenizer_2/ for SDXL)"
)


# --------------------------------------------------------------------------- small helpers


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or a torch dtype) -> torch dtype, refusing fp16 on CPU."""
    if isinstance(dtype, torch.dtype):
        name = {v: k for k, v in DTYPES.items()}.get(dtype)
    else:
        name = _DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if name == "fp16" and torch.device(device).type == "cpu":
        raise ValueError("dtype 'fp16' is not supported on CPU; use 'fp32' or 'bf16' there")
    return DTYPES[name]


def _not_found(model: str, local_files_only: bool) -> str:
    hint = (
        " (local_files_only=True: only the local hub cache was searched; pass "
        "local_files_only=False to allow a download)" if local_files_only else ""
    )
    return (
        f"model {model!r} not found: it is not an existing directory and no hub checkpoint of "
        f"that id could be read{hint}. Provide either the path of {EXPECTED_LAYOUT}, "
        "or a hub id such as 'stabilityai/stable-diffusion-2-1-base' that is in the cache."
    )


def locate_checkpoint(model: str | Path, local_files_only: bool = True) -> tuple[str, dict]:
    """(where to load from, parsed model_index.json) for a local directory or a hub id."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file; expected {EXPECTED_LAYOUT}")
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise ValueError(
                f"{str(path)!r} is not a diffusers checkpoint (no model_index.json); "
                f"expected {EXPECTED_LAYOUT}"
            )
        index = _read_json(index_file)
        missing = [c for c in ("unet", "scheduler") if not (path / c).is_dir()]
        if "unet" not in index:
            missing = sorted(set(missing) | {"unet"})
        if missing:
            raise ValueError(
                f"{str(path)!r} is not a Stable Diffusion checkpoint: missing "
                f"{', '.join(missing)}; "
                f"expected {EXPECTED_LAYOUT}"
            )
        return str(path), index
    model = str(model)
    if not _HUB_ID.match(model):
        raise FileNotFoundError(_not_found(model, local_files_only))
    from huggingface_hub import hf_hub_download

    try:
        index_file = hf_hub_download(model, "model_index.json", local_files_only=local_files_only)
    except Exception as err:  # the hub raises several types for "not there"
        raise FileNotFoundError(_not_found(model, local_files_only)) from err
    index = _read_json(Path(index_file))
    if "unet" not in index:
        raise ValueError(f"hub checkpoint {model!r} has no unet; expected {EXPECTED_LAYOUT}")
    return model, index


def _vae_class(source: str, local_files_only: bool) -> tuple[str, str | None]:
    """(class name, subfolder) of a VAE given as a directory or hub id (its own or a pipeline's)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _read_json(path / "config.json").get("_class_name", ""), None
        if (path / "vae" / "config.json").is_file():
            cfg = _read_json(path / "vae" / "config.json")
            return cfg.get("_class_name", ""), "vae"
        raise ValueError(f"vae {source!r} has no config.json (nor vae/config.json)")
    if not _HUB_ID.match(source):
        raise FileNotFoundError(f"vae {source!r} not found: give a VAE directory or a hub id")
    from huggingface_hub import hf_hub_download

    try:
        cfg_file = hf_hub_download(source, "config.json", local_files_only=local_files_only)
    except Exception as err:
        raise FileNotFoundError(_not_found(source, local_files_only)) from err
    return _read_json(Path(cfg_file)).get("_class_name", ""), None


def load_vae(source: str | Path, *, dtype: torch.dtype = torch.float32, device="cpu",
             local_files_only: bool = True):
    """An ``AutoencoderKL`` or ``AutoencoderTiny`` (picked by its config's ``_class_name``)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    source = str(source)
    name, subfolder = _vae_class(source, local_files_only)
    cls = AutoencoderTiny if name == "AutoencoderTiny" else AutoencoderKL
    kw = {"subfolder": subfolder} if subfolder else {}
    vae = cls.from_pretrained(source, local_files_only=local_files_only,
                              **_dtype_kwargs("diffusers", dtype), **kw)
    return _upcast_if_asked(vae, dtype).to(device).eval()


def _upcast_if_asked(vae, dtype: torch.dtype):
    """Keep a VAE in fp32 under fp16 when its config asks for it (SDXL's ``force_upcast``)."""
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return vae.float()
    return vae


def ddim_from(scheduler_or_config: Any):
    """A ``DDIMScheduler`` with the betas/offsets/prediction type of any diffusers scheduler.

    Keys a non-DDIM config lacks take Stable Diffusion's values, not DDIM's defaults: latents are
    never clipped (``clip_sample=False``) and the last step uses alphas_cumprod[0]
    (``set_alpha_to_one=False``), as in SD's own scheduler configs.
    """
    from diffusers import DDIMScheduler

    config = dict(getattr(scheduler_or_config, "config", scheduler_or_config))
    config.setdefault("clip_sample", False)
    config.setdefault("set_alpha_to_one", False)
    return DDIMScheduler.from_config(config)


# --------------------------------------------------------------------------- the denoiser


def _to(v: Any, device, dtype) -> Any:
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.to(device=device, dtype=dtype)
    if isinstance(v, torch.Tensor):
        return v.to(device=device)
    return v


class SDDenoiser:
    """``(x (B, 4, h, w), t (B,), cond) -> UNet output (B, 4, h, w)`` in ``x``'s dtype.

    ``cond`` is what :meth:`SDModel.encode_prompt` returns, or a :func:`cat_cond` batch of them:
    SD 1/2 a ``(B, 77, D)`` tensor; SDXL a dict with ``encoder_hidden_states (B, 77, D)``,
    ``text_embeds (B, P)`` and ``time_ids (B, 6)``. Parts with batch 1 are expanded to ``B``.

    With a ``controlnet`` the condition is a dict that also holds ``control (B, 3, H, W)`` in
    [0, 1] (each row its window's crop); the ControlNet sees the same latents, timestep, text
    states (and SDXL's added conditions) as the UNet, and the UNet adds its residuals scaled by
    ``control_scale``, as ``StableDiffusion(XL)ControlNetPipeline`` passes them.
    """

    def __init__(self, unet, prediction_type: str = "epsilon", sdxl: bool = False,
                 controlnet=None, control_scale: float = 1.0):
        self.unet = unet
        self.prediction_type = check_prediction_type(prediction_type)
        self.sdxl = sdxl
        self.controlnet = controlnet
        self.control_scale = float(control_scale)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        dev, dt = self.unet.device, self.unet.dtype
        B = x.shape[0]
        t = torch.as_tensor(t, device=dev)
        t = t.expand(B) if t.ndim == 0 else t.to(dev)
        cond = expand_cond(cond, B)
        if isinstance(cond, dict):
            ehs = cond["encoder_hidden_states"]
            added = {k: _to(cond[k], dev, dt) for k in ("text_embeds", "time_ids") if k in cond}
        else:
            ehs, added = cond, {}
        if self.sdxl and set(added) != {"text_embeds", "time_ids"}:
            raise ValueError(
                "an SDXL UNet needs a dict condition with keys encoder_hidden_states, text_embeds, "
                f"time_ids; got {sorted(cond) if isinstance(cond, dict) else type(cond).__name__}"
            )
        x_in, ehs_in, residuals = x.to(device=dev, dtype=dt), _to(ehs, dev, dt), {}
        if self.controlnet is not None:
            control = cond.get("control") if isinstance(cond, dict) else None
            if control is None:
                raise ValueError("a ControlNet denoiser needs the window's control image in its "
                                 "condition (key 'control')")
            cn = self.controlnet
            down, mid = cn(x_in.to(cn.dtype), t, encoder_hidden_states=ehs_in.to(cn.dtype),
                           controlnet_cond=control.to(device=cn.device, dtype=cn.dtype),
                           conditioning_scale=self.control_scale,
                           added_cond_kwargs={k: v.to(cn.dtype) for k, v in added.items()} or None,
                           return_dict=False)
            residuals = {"down_block_additional_residuals": [d.to(dt) for d in down],
                         "mid_block_additional_residual": mid.to(dt)}
        out = self.unet(
            x_in, t, encoder_hidden_states=ehs_in,
            added_cond_kwargs=added or None, return_dict=False, **residuals,
        )[0]
        return out.to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------- the model


class SDModel:
    """A Stable Diffusion checkpoint in the shapes longgen uses (see the module docstring)."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, text_encoder_2=None,
                 tokenizer_2=None, force_zeros_for_empty_prompt: bool | None = None,
                 source: str | None = None):
        if text_encoder is None or tokenizer is None:
            raise ValueError("text_encoder and tokenizer are required (SDXL refiner-style "
                             "checkpoints with only text_encoder_2 are not supported)")
        if scheduler is None:
            raise ValueError("a scheduler (or its config) is required: it carries the betas")
        wants_text_time = getattr(unet.config, "addition_embed_type", None) == "text_time"
        if wants_text_time != (text_encoder_2 is not None and tokenizer_2 is not None):
            raise ValueError(
                "SDXL needs both a UNet with addition_embed_type='text_time' and "
                "text_encoder_2/tokenizer_2; got addition_embed_type="
                f"{getattr(unet.config, 'addition_embed_type', None)!r}, text_encoder_2 "
                f"{'present' if text_encoder_2 is not None else 'absent'}"
            )
        if vae.config.latent_channels != unet.config.out_channels:
            raise ValueError(
                f"the VAE has {vae.config.latent_channels} latent channels but the UNet predicts "
                f"{unet.config.out_channels}; they must match"
            )
        self.unet, self.vae = unet.eval(), vae.eval()
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.text_encoder_2 = text_encoder_2.eval() if text_encoder_2 is not None else None
        self.tokenizer_2 = tokenizer_2
        self.scheduler = ddim_from(scheduler)
        if force_zeros_for_empty_prompt is None:
            force_zeros_for_empty_prompt = self.is_sdxl  # the SDXL pipeline's default
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.source = source
        self.denoiser = SDDenoiser(unet, self.prediction_type, sdxl=self.is_sdxl)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_components(cls, *, unet, vae, text_encoder, tokenizer, scheduler,
                        text_encoder_2=None, tokenizer_2=None,
                        force_zeros_for_empty_prompt: bool | None = None) -> "SDModel":
        """From in-memory diffusers/transformers modules (``scheduler`` may be any scheduler)."""
        return cls(unet, vae, text_encoder, tokenizer, scheduler, text_encoder_2, tokenizer_2,
                   force_zeros_for_empty_prompt)

    @classmethod
    def from_pipeline(cls, pipe) -> "SDModel":
        """From a ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``."""
        c = pipe.components
        return cls(c["unet"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"],
                   c.get("text_encoder_2"), c.get("tokenizer_2"),
                   pipe.config.get("force_zeros_for_empty_prompt"))

    # ------------------------------------------------------------------ the image contract

    family = "sd"
    decode_halo = 8       # latents of context each side of a streamed VAE decode (see image.jobs)

    def guidance(self, given: float | None) -> float:
        """The run's guidance: ``given``, else 7.5 (the released ALM wide-image and inpainting
        default), classifier-free in the engine."""
        return SD_GUIDANCE if given is None else given

    def engine_parts(self, config, height: int, width: int, control: tuple | None = None):
        """(denoiser, scheduler, engine config, pixel multiple) of a window: the UNet denoiser
        (with a ControlNet when ``control`` = (ControlNet, scale)), the DDIM scheduler of the
        checkpoint's config, classifier-free guidance in the engine."""
        den = self.controlled(*control) if control is not None else self.denoiser
        return den, self.scheduler, config, self.vae_scale_factor

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor

    # ------------------------------------------------------------------ facts

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def control_input(self, crop: torch.Tensor, controlnet=None) -> torch.Tensor:
        """A window's control pixels (1, 3, H, W) in [0, 1], as the SD ControlNets take them."""
        return crop

    def controlled(self, controlnet, scale: float = 1.0) -> SDDenoiser:
        """This model's denoiser with a ControlNet (the UNet is shared, not copied)."""
        return SDDenoiser(self.unet, self.prediction_type, sdxl=self.is_sdxl, controlnet=controlnet.eval(),
                          control_scale=scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``(num_train_timesteps,)`` float32, the schedule the UNet was trained with."""
        return self.scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: 2 ** (number of VAE blocks - 1), 8 for SD."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        """The UNet's native latent side (64 for SD 1.5 / 2.1-base, 128 for SDXL)."""
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    @property
    def image_size(self) -> int:
        """The native image side in pixels."""
        return self.sample_size * self.vae_scale_factor

    # ------------------------------------------------------------------ text

    @staticmethod
    def _tokens(tokenizer, prompts: list[str]):
        """Token ids padded/truncated to the tokenizer's length (77 for CLIP), as in diffusers."""
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")

    @torch.no_grad()
    def _encode_sd(self, prompts: list[str]) -> torch.Tensor:
        """SD 1/2: last hidden state ``(B, 77, D)`` (diffusers StableDiffusionPipeline)."""
        enc = self.text_encoder
        tok = self._tokens(self.tokenizer, prompts)
        mask = None
        if getattr(enc.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(enc.device)
        return enc(tok.input_ids.to(enc.device), attention_mask=mask)[0]

    @torch.no_grad()
    def _encode_sdxl(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: penultimate states of both encoders, concatenated ``(B, 77, D1 + D2)``, and the
        pooled projection of ``text_encoder_2`` ``(B, P)``."""
        states = []
        for tok, enc in ((self.tokenizer, self.text_encoder),
                         (self.tokenizer_2, self.text_encoder_2)):
            ids = self._tokens(tok, prompts).input_ids.to(enc.device)
            out = enc(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
        pooled = out.text_embeds  # (B, P) from CLIPTextModelWithProjection
        return torch.cat(states, dim=-1), pooled

    def time_ids(self, size: tuple[int, int] | None = None, *,
                 original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None) -> torch.Tensor:
        """SDXL micro-conditioning ``(1, 6)``: original (h, w), crop (top, left), target (h, w).

        ``size`` is the (height, width) in pixels of the WINDOW the UNet sees; original and target
        default to it (the SDXL pipeline's defaults).
        """
        size = tuple(size) if size is not None else (self.image_size, self.image_size)
        if len(size) != 2:
            raise ValueError(f"size must be (height, width) in pixels; got {size!r}")
        ids = [*(original_size or size), *crops_coords_top_left, *(target_size or size)]
        if len(ids) != 6:
            raise ValueError(f"time ids need 2 + 2 + 2 numbers; got {ids!r}")
        proj = int(self.text_encoder_2.config.projection_dim)
        passed = int(self.unet.config.addition_time_embed_dim) * 6 + proj
        expected = int(self.unet.add_embedding.linear_1.in_features)
        if passed != expected:
            raise ValueError(
                f"the UNet expects an added embedding of length {expected}, but 6 time ids and a "
                f"{proj}-dim pooled text embedding give {passed}; check the checkpoint configs"
            )
        return torch.tensor([ids], dtype=self.text_encoder_2.dtype, device=self.device)

    def encode_prompt(self, prompt: str | Sequence[str],
                      negative_prompt: str | Sequence[str] | None = None, *,
                      size: tuple[int, int] | None = None,
                      original_size: tuple[int, int] | None = None,
                      crops_coords_top_left: tuple[int, int] = (0, 0),
                      target_size: tuple[int, int] | None = None) -> tuple[Any, Any]:
        """``(cond, uncond)``, each with batch ``B = len(prompt)``.

        SD 1/2: tensors ``(B, 77, D)``. SDXL: dicts ``{"encoder_hidden_states": (B, 77, D1 + D2),
        "text_embeds": (B, P), "time_ids": (B, 6)}`` with time ids for a window of ``size``
        (height, width) pixels. ``negative_prompt=None`` is the pipelines' default: SDXL
        checkpoints with ``force_zeros_for_empty_prompt`` get all-zero uncond embeddings, every
        other model encodes ``""``. An explicit ``""`` is always encoded.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"prompt must be a string or a non-empty list of strings; got {prompt!r}")
        B = len(prompts)
        zeros = negative_prompt is None and self.is_sdxl and self.force_zeros_for_empty_prompt
        negative_prompt = "" if negative_prompt is None else negative_prompt
        negs = [negative_prompt] * B if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != B:
            raise ValueError(
                f"negative_prompt has {len(negs)} entries; allowed: 1 or {B} (one per prompt)")
        if not self.is_sdxl:
            cond, uncond = self._encode_sd(prompts), self._encode_sd(negs)
            return cond.to(self.dtype), uncond.to(self.dtype)
        ehs, pooled = self._encode_sdxl(prompts)
        if zeros:
            n_ehs, n_pooled = torch.zeros_like(ehs), torch.zeros_like(pooled)
        else:
            n_ehs, n_pooled = self._encode_sdxl(negs)
        ids = self.time_ids(size, original_size=original_size,
                            crops_coords_top_left=crops_coords_top_left,
                            target_size=target_size).expand(B, 6)
        def pack(states, pooled_embeds):
            return {"encoder_hidden_states": states.to(self.dtype),
                    "text_embeds": pooled_embeds.to(self.dtype), "time_ids": ids.to(self.dtype)}

        return pack(ehs, pooled), pack(n_ehs, n_pooled)

    # ------------------------------------------------------------------ VAE

    @property
    def _vae_is_tiny(self) -> bool:
        return type(self.vae).__name__ == "AutoencoderTiny"

    def _vae_scale_shift(self) -> tuple[float, float]:
        cfg = self.vae.config
        scale = getattr(cfg, "scaling_factor", None)
        shift = getattr(cfg, "shift_factor", None)
        return float(1.0 if scale is None else scale), float(0.0 if shift is None else shift)

    @torch.no_grad()
    def vae_encode(self, images: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> float32 latents ``(B, C, H/f, W/f)``:
        ``(mode - shift) * scaling_factor`` (``AutoencoderTiny``: its latents as they are)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
        f = self.vae_scale_factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {f}")
        scale, shift = self._vae_scale_shift()
        dev, dt = self.vae.device, self.vae.dtype
        outs = []
        for part in images.split(max(1, int(chunk))):
            enc = self.vae.encode(part.to(device=dev, dtype=dt))
            z = enc.latents if self._vae_is_tiny else enc.latent_dist.mode()
            outs.append(((z.float() - shift) * scale).to(images.device))
        return torch.cat(outs, dim=0)

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor, chunk: int = 1, clamp: bool = True) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` -> float32 images ``(B, 3, h*f, w*f)`` in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, h, w); got {tuple(latents.shape)}"
            )
        scale, shift = self._vae_scale_shift()
        dev, dt = self.vae.device, self.vae.dtype
        outs = []
        for part in latents.split(max(1, int(chunk))):
            z = part.float() / scale + shift
            img = self.vae.decode(z.to(device=dev, dtype=dt)).sample.float()
            outs.append((img.clamp(-1, 1) if clamp else img).to(latents.device))
        return torch.cat(outs, dim=0)


# --------------------------------------------------------------------------- loading


def load_sd(model: str | Path, *, dtype: str | torch.dtype = "fp32",
            device: str | torch.device = "cpu", local_files_only: bool = True,
            vae: Any = None, variant: str | None = None) -> SDModel:
    """Load a Stable Diffusion 1.x/2.x/XL diffusers checkpoint as an :class:`SDModel`.

    ``model``: a checkpoint directory or a hub id (read from the cache unless
    ``local_files_only=False``). ``dtype``: "fp32", "fp16" (GPU only) or "bf16". ``vae``: another
    VAE to use instead of the checkpoint's (a directory or hub id of an ``AutoencoderKL`` or
    ``AutoencoderTiny``, or a module). ``variant``: weight file variant, e.g. "fp16".
    The VAE stays in fp32 when the checkpoint's VAE asks for it (``force_upcast``) under fp16.
    """
    torch_dtype = resolve_dtype(dtype, device)
    root, index = locate_checkpoint(model, local_files_only)
    unet_class = (index.get("unet") or [None, None])[1]
    if unet_class != "UNet2DConditionModel":
        raise ValueError(
            f"{root!r} has a unet of class {unet_class!r}; allowed: UNet2DConditionModel")
    sdxl = "text_encoder_2" in index and (index.get("text_encoder_2") or [None])[0] is not None
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = {"local_files_only": local_files_only}
    if variant:
        common["variant"] = variant
    dkw = {**common, **_dtype_kwargs("diffusers", torch_dtype)}
    tkw = {**common, **_dtype_kwargs("transformers", torch_dtype)}
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **dkw).to(device)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **tkw).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer",
                                              local_files_only=local_files_only)
    text_encoder_2 = tokenizer_2 = None
    if sdxl:
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", **tkw).to(device)
        tokenizer_2 = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2",
                                                    local_files_only=local_files_only)
    if vae is None:
        vae_model = _upcast_if_asked(AutoencoderKL.from_pretrained(root, subfolder="vae", **dkw),
                                     torch_dtype)
    elif isinstance(vae, (str, Path)):
        vae_model = load_vae(vae, dtype=torch_dtype, local_files_only=local_files_only)
    elif isinstance(vae, torch.nn.Module):
        vae_model = vae
    else:
        raise ValueError(
            f"vae must be None, a path or hub id, or a module; got {type(vae).__name__}")
    vae_model = vae_model.to(device)
    from diffusers import DDIMScheduler

    # the checkpoint's scheduler config, whatever its class (PNDM for SD 1.5, Euler for SDXL)
    config = DDIMScheduler.load_config(root, subfolder="scheduler",
                                       local_files_only=local_files_only)
    scheduler = ddim_from(config)
    return SDModel(unet, vae_model, text_encoder, tokenizer, scheduler, text_encoder_2, tokenizer_2,
                   index.get("force_zeros_for_empty_prompt"), source=str(model))
