"""CondMDI's motion U-Net, written to load the released checkpoints with strict key matching.

The ALM motion experiments use CondMDI's *unconditional* (not keyframe-conditioned) checkpoint
``condmdi_uncond/model000500000.pt`` and the ``args.json`` saved beside it. This file rebuilds
that network from ``args.json`` so the checkpoint's state dict loads with the same module paths
and shapes, and adapts it to the ``longgen`` denoiser protocol.

Sources (read, not copied): setarehc/diffusion-motion-inbetweening
``model/mdm_unet.py`` (``MDM_UNET``, ``TemporalUnet``, ``ResidualTemporalBlock``, ``Conv1dBlock``,
``Conv1dAdaGNBlock``, ``PositionalEncoding``, ``TimestepEmbedder``),
``utils/model_util.py`` (``get_model_args``, ``load_model_wo_clip``, ``load_saved_model``,
``create_gaussian_diffusion``), ``utils/parser_util.py`` + ``configs/model.py`` (defaults, the
``motion_unet_adagn_xl`` card), ``train/training_loop.py`` (``save``: CLIP keys deleted, nested
``{"model", "model_avg"}`` when ``avg_model_beta > 0``), ``diffusion/gaussian_diffusion.py``
(``get_named_beta_schedule``). ALM ships the same ``mdm_unet.py`` (Hleephilip/ALM_public,
``alm/motion_completion/_condmdi/model/mdm_unet.py``, identical but for an import path).

The network (what ``MDM_UNET.forward_core`` computes)
------------------------------------------------------
* input ``[B, F, 1, T]`` (F = 263 HumanML3D features) -> ``[T, B, F]`` -> zero-padded at the end
  of time to 224 frames (hard-coded in ``forward_core``; every U-Net card trains at 224) ->
  ``TemporalUnet`` -> cropped back to T. GroupNorm statistics run over the padded length, so the
  pad length changes the output: we pad to ``pad_frames`` = 224 like the release, and longer
  inputs (which the released code cannot take) to the next multiple of the down factor
  ``2 ** (len(dim_mults) - 1)``.
* conditioning vector ``emb`` (B, D), D = ``latent_dim``: a sinusoidal table row ``pe[t]``
  (interleaved sin/cos, max_len 5000) -> Linear-SiLU-Linear; plus ``embed_text(text)`` (Linear
  512 -> D) of the CLIP ``encode_text`` features when the model is text-conditioned.
  Classifier-free "uncond" (``y['uncond']``) and training dropout both go through
  ``mask_cond``, which *multiplies the CLIP features by zero*: the unconditional branch is exactly
  ``embed_text(0) = embed_text.bias``. So a text row of zeros **is** the unconditional condition.
* ``TemporalUnet(input_dim=F, cond_dim=D, dim=D, dim_mults)``: channels ``int(D * m)``;
  ``time_mlp`` Linear(D, 4D)-Mish-Linear(4D, D) on ``emb``; ``len(dim_mults)`` down levels of two
  residual blocks (+ stride-2 Conv1d k3 except the last), two middle blocks, ``len - 1`` up levels
  (skip concat, two blocks, ConvTranspose1d k4 s2), final Conv1d-GroupNorm-Mish (k5) + Conv1d k1.
  Residual block = [AdaGN conv block: Conv1d k5 -> GroupNorm(8) -> x(1+scale)+shift -> Mish]
  + [Conv1d k5 -> GroupNorm(8) -> Mish] + 1x1 residual conv when channels change; scale/shift from
  Mish-Linear(D, 2C) of the U-Net's time vector (no AdaGN: Linear(D, C) added after block 0).
  Attention is off (``MDM_UNET``'s ``attention`` default; ``args.json`` has no such field), so the
  attention slots are parameter-free identities.
* keyframe-conditioned checkpoints (``keyframe_conditioned``) take ``cat([obs*m + x*(1-m), m])``:
  the first residual block sees 2F channels; the output keeps F.

Key listing matched (default card: latent_dim 512, dim_mults (2, 2, 2, 2), unet_adagn, text)
-----------------------------------------------------------------------------------------------
Top-level prefixes: ``sequence_pos_encoder.``, ``unet.``, ``embed_timestep.``, ``embed_text.``
(and ``clip_model.*`` in the live model, which the training loop deletes before saving and the
released loader tolerates as missing). 198 tensors; 233,507,079 parameters (235,122,951 with
``keyframe_conditioned``, the "Total params: 235.12M" a CondMDI training log prints).
Representative keys::

    sequence_pos_encoder.pe                          (5000, 1, 512)   buffer
    embed_timestep.sequence_pos_encoder.pe           (5000, 1, 512)   the same buffer again
    embed_timestep.time_embed.0.weight               (512, 512)
    embed_timestep.time_embed.2.weight               (512, 512)
    embed_text.weight                                (512, 512)
    unet.time_mlp.0.weight                           (2048, 512)
    unet.time_mlp.2.weight                           (512, 2048)
    unet.downs.0.0.blocks.0.block1.0.weight          (1024, 263, 5)   AdaGN conv block
    unet.downs.0.0.blocks.0.block1.2.weight          (1024,)          its GroupNorm
    unet.downs.0.0.blocks.1.block.0.weight           (1024, 1024, 5)
    unet.downs.0.0.time_mlp.1.weight                 (2048, 512)      scale & shift
    unet.downs.0.0.residual_conv.weight              (1024, 263, 1)
    unet.downs.0.3.conv.weight                       (1024, 1024, 3)  downsample
    unet.mid_block1.blocks.0.block1.0.weight         (1024, 1024, 5)
    unet.ups.0.0.blocks.0.block1.0.weight            (1024, 2048, 5)  after the skip concat
    unet.ups.0.0.residual_conv.weight                (1024, 2048, 1)
    unet.ups.0.3.conv.weight                         (1024, 1024, 4)  ConvTranspose1d
    unet.final_conv.0.block.0.weight                 (1024, 1024, 5)
    unet.final_conv.1.weight                         (263, 1024, 1)

Checked once against the released ``MDM_UNET`` class itself (its ``clip``/SMPL imports stubbed):
identical key sets and shapes for the default card, with ``keyframe_conditioned`` and without
``unet_adagn``; max-abs output difference 0.0 (cond and ``uncond`` branches, T = 196) on tiny
cards with shared random weights.

Checkpoint format: ``torch.save`` of either a state dict or, when ``avg_model_beta > 0`` (the
U-Net cards use 0.9999), ``{"model": sd, "model_avg": sd_avg}``; the released loader prefers
``model_avg``. Both are read here with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

PE_MAX_LEN = 5000  # PositionalEncoding(max_len=5000) in model/mdm_unet.py
RELEASED_PAD_FRAMES = 224  # forward_core: F.pad(x, ..., 224 - nframes)
GROUPS = 8  # Conv1dBlock / Conv1dAdaGNBlock n_groups
KERNEL = 5  # ResidualTemporalBlock kernel_size
CLIP_DIM = 512  # MDM_UNET clip_dim (ViT-B/32 encode_text width)

# Feature counts per dataset (utils/model_util.py get_model_args).
_DATASET_FEATURES = {"humanml": 263, "kit": 251, "amass": 764}
# Which datasets the released code conditions on text (get_model_args: cond_mode).
_TEXT_DATASETS = ("humanml", "kit")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CondMDIConfig:
    """What the network and its diffusion need from ``args.json`` (field names as there)."""

    arch: str = "unet"
    dataset: str = "humanml"
    latent_dim: int = 512
    dim_mults: tuple[float, ...] = (2, 2, 2, 2)
    unet_adagn: bool = True
    unet_zero: bool = True  # initialisation only
    keyframe_conditioned: bool = False
    unconstrained: bool = False
    drop_redundant: bool = False
    traj_only: bool = False
    cond_mask_prob: float = 0.1
    noise_schedule: str = "cosine"
    diffusion_steps: int = 1000
    predict_xstart: bool = True
    sigma_small: bool = True
    abs_3d: bool = True
    guidance_param: float = 2.5
    pad_frames: int = RELEASED_PAD_FRAMES  # not in args.json: hard-coded in the release

    def __post_init__(self):
        if self.arch != "unet":
            raise ValueError(
                f"unsupported arch {self.arch!r}; allowed: 'unet' (CondMDI's TemporalUnet; "
                "'unet_large', 'trans_enc' and 'dit*' checkpoints are not supported)"
            )
        if self.dataset not in _DATASET_FEATURES:
            raise ValueError(
                f"unsupported dataset {self.dataset!r}; allowed: {', '.join(_DATASET_FEATURES)}"
            )
        if not isinstance(self.latent_dim, int) or self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive int, got {self.latent_dim!r}")
        if len(self.dim_mults) < 2 or any(float(m) <= 0 for m in self.dim_mults):
            # one level leaves the release's final_conv with the wrong width: refuse it
            raise ValueError(
                f"dim_mults must hold >= 2 positive multipliers, got {self.dim_mults!r}")
        if any(int(self.latent_dim * m) % GROUPS for m in self.dim_mults):
            raise ValueError(
                f"latent_dim * dim_mults = {[int(self.latent_dim * m) for m in self.dim_mults]} "
                f"must all be multiples of the GroupNorm group count {GROUPS}"
            )
        if self.keyframe_conditioned and (self.dataset, self.input_features) not in (
            ("humanml", 263), ("amass", 764)
        ):
            raise ValueError(
                "keyframe_conditioned is supported for the full HumanML3D (263) or AMASS (764) "
                f"features only, got dataset {self.dataset!r} with {self.input_features} features"
            )
        if self.noise_schedule not in ("cosine", "linear"):
            raise ValueError(
                f"unsupported noise_schedule {self.noise_schedule!r}; allowed: cosine, linear"
            )
        if self.diffusion_steps <= 0:
            raise ValueError(f"diffusion_steps must be positive, got {self.diffusion_steps!r}")
        if self.pad_frames <= 0 or self.pad_frames % self.down_factor:
            raise ValueError(
                f"pad_frames {self.pad_frames} must be a positive multiple of the U-Net's down "
                f"factor {self.down_factor}"
            )

    # ---- derived (utils/model_util.py get_model_args)
    @property
    def input_features(self) -> int:
        """Features per frame: 263 HumanML3D, 67 without redundancy, 4 trajectory-only."""
        if self.traj_only:
            return 4
        if self.dataset == "humanml" and self.drop_redundant:
            return 4 + 21 * 3
        return _DATASET_FEATURES[self.dataset]

    @property
    def cond_mode(self) -> str:
        if self.unconstrained or self.dataset not in _TEXT_DATASETS:
            return "no_cond"
        return "text"

    @property
    def text_conditioned(self) -> bool:
        return self.cond_mode == "text"

    @property
    def added_input_channels(self) -> int:
        """Extra input channels of keyframe-conditioned models (the observation mask)."""
        return self.input_features if self.keyframe_conditioned else 0

    @property
    def channels(self) -> list[int]:
        return [int(self.latent_dim * m) for m in self.dim_mults]

    @property
    def down_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)

    def padded_length(self, frames: int) -> int:
        """Frames the U-Net runs at for ``frames`` input frames (224 as released, or more)."""
        if frames <= self.pad_frames:
            return self.pad_frames
        f = self.down_factor
        return -(-frames // f) * f

    # ---- args.json
    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "CondMDIConfig":
        """Build from an ``args.json`` dict; missing fields take the release's parser defaults."""
        if not isinstance(args, Mapping):
            raise ValueError(
                f"args must be a dict (the parsed args.json), got {type(args).__name__}")
        if args.get("xz_only"):
            raise ValueError(f"unsupported xz_only={args['xz_only']!r}; allowed: false")
        mask = args.get("train_keypoint_mask", "none")
        if mask != "none":
            raise ValueError(f"unsupported train_keypoint_mask {mask!r}; allowed: 'none'")
        # use_ddim only respaces the release's sampler (ddim100); the network is the same.
        kw = {}
        for f in fields(cls):
            if f.name in args and f.name != "pad_frames":
                kw[f.name] = args[f.name]
        if "dim_mults" in kw:
            kw["dim_mults"] = tuple(kw["dim_mults"])
        for name in ("latent_dim", "diffusion_steps"):
            if name in kw and (isinstance(kw[name], bool) or not isinstance(kw[name], int)):
                raise ValueError(f"{name} must be an int, got {kw[name]!r}")
        return cls(**kw)

    def to_args(self) -> dict[str, Any]:
        """The ``args.json`` fields this config reads (plus the fixed release values)."""
        d = asdict(self)
        d.pop("pad_frames")
        d["dim_mults"] = list(self.dim_mults)
        d.update(xz_only=False, use_ddim=False, out_mult=False, avg_model_beta=0.9999,
                 num_frames=RELEASED_PAD_FRAMES)
        return d


# --------------------------------------------------------------------------- building blocks
# Sequential indices follow the release: its einops Rearrange layers (no parameters) sit at
# positions 1 and 3 around the GroupNorm; nn.Identity keeps those positions so keys match.


def _conv_norm(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    # GroupNorm over (B, C, T) equals the release's GroupNorm over (B, C, 1, T).
    return [nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.Identity(),
            nn.GroupNorm(GROUPS, cout), nn.Identity()]


class ConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish (released ``Conv1dBlock``, keys ``block.{0,2}``)."""

    def __init__(self, cin: int, cout: int, kernel: int = KERNEL, zero: bool = False):
        super().__init__()
        self.block = nn.Sequential(*_conv_norm(cin, cout, kernel), nn.Mish())
        if zero:
            nn.init.zeros_(self.block[0].weight)
            nn.init.zeros_(self.block[0].bias)

    def forward(self, x):  # (B, C, T) -> (B, C', T)
        return self.block(x)


class AdaGNConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> x(1+scale)+shift -> Mish (``Conv1dAdaGNBlock``, ``block1.{0,2}``)."""

    def __init__(self, cin: int, cout: int, kernel: int = KERNEL):
        super().__init__()
        self.block1 = nn.Sequential(*_conv_norm(cin, cout, kernel))
        self.block2 = nn.Mish()

    def forward(self, x, scale_shift):  # x (B, C, T), scale_shift (B, 2C', 1)
        scale, shift = scale_shift.chunk(2, dim=1)
        return self.block2(self.block1(x) * (1 + scale) + shift)


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks fed by the time vector, plus a (1x1 conv) skip."""

    def __init__(self, cin: int, cout: int, embed_dim: int, adagn: bool, zero: bool):
        super().__init__()
        self.adagn = adagn
        first = AdaGNConvBlock(cin, cout) if adagn else ConvBlock(cin, cout)
        self.blocks = nn.ModuleList([first, ConvBlock(cout, cout, zero=zero)])
        # Mish -> Linear (index 1, as released; its Rearrange at index 2 becomes unsqueeze)
        self.time_mlp = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, cout * 2 if adagn else cout))
        if adagn:  # identity modulation at init (guided-diffusion's zero AdaGN)
            nn.init.zeros_(self.time_mlp[1].weight)
            nn.init.zeros_(self.time_mlp[1].bias)
        self.residual_conv = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):  # x (B, C, T), c (B, D) -> (B, C', T)
        cond = self.time_mlp(c).unsqueeze(-1)  # (B, 2C' or C', 1)
        out = self.blocks[0](x, cond) if self.adagn else self.blocks[0](x) + cond
        return self.blocks[1](out) + self.residual_conv(x)


class TemporalUnet(nn.Module):
    """1-D U-Net over time (released ``TemporalUnet`` without attention)."""

    def __init__(self, cfg: CondMDIConfig):
        super().__init__()
        D, zero, adagn = cfg.latent_dim, cfg.unet_zero, cfg.unet_adagn
        dims = [cfg.input_features, *cfg.channels]
        in_out = list(zip(dims[:-1], dims[1:]))
        n = len(in_out)
        self.time_mlp = nn.Sequential(nn.Linear(D, D * 4), nn.Mish(), nn.Linear(D * 4, D))

        def block(cin, cout):
            return ResidualTemporalBlock(cin, cout, D, adagn=adagn, zero=zero)

        self.downs = nn.ModuleList()
        for i, (cin, cout) in enumerate(in_out):
            cin += cfg.added_input_channels if i == 0 else 0
            last = i == n - 1
            self.downs.append(nn.ModuleList([
                block(cin, cout), block(cout, cout), nn.Identity(),
                nn.Identity() if last else _Wrap(nn.Conv1d(cout, cout, 3, 2, 1)),
            ]))
        mid = dims[-1]
        self.mid_block1 = block(mid, mid)
        self.mid_attn = nn.Identity()
        self.mid_block2 = block(mid, mid)
        self.ups = nn.ModuleList()
        for cin, cout in reversed(in_out[1:]):  # every up level upsamples
            self.ups.append(nn.ModuleList([
                block(cout * 2, cin), block(cin, cin), nn.Identity(),
                _Wrap(nn.ConvTranspose1d(cin, cin, 4, 2, 1)),
            ]))
        width = in_out[1][0]  # the last up level's width (dims[1])
        self.final_conv = nn.Sequential(ConvBlock(width, width, KERNEL),
                                        nn.Conv1d(width, cfg.input_features, 1))
        if zero:
            nn.init.zeros_(self.final_conv[1].weight)
            nn.init.zeros_(self.final_conv[1].bias)

    def forward(self, x, emb):  # x (B, F, T), T divisible by the down factor; emb (B, D)
        c = self.time_mlp(emb)  # (B, D)
        skips = []
        for res1, res2, attn, down in self.downs:
            x = attn(res2(res1(x, c), c))
            skips.append(x)
            x = down(x)  # (B, C, T / 2) except at the last level
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, c)), c)
        for res1, res2, attn, up in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)  # (B, 2C, T')
            x = up(attn(res2(res1(x, c), c)))  # (B, C_in, 2T')
        return self.final_conv(x)  # (B, F, T)


class _Wrap(nn.Module):
    """Holds a conv under ``.conv`` (released ``Downsample1d`` / ``Upsample1d`` key paths)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """``pe[p, 0, 2i] = sin(p w_i)``, ``pe[p, 0, 2i+1] = cos(p w_i)``, ``w_i = 10000^(-2i/dim)``."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    w = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(pos * w)
    pe[:, 1::2] = torch.cos(pos * w)
    return pe[:, None, :]  # (L, 1, dim), the release's buffer layout


class _PETable(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(PE_MAX_LEN, dim))


class _TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, table: _PETable):
        super().__init__()
        self.sequence_pos_encoder = table  # shared: the key appears twice, as released
        self.time_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):  # (B,) long -> (B, D)
        return self.time_embed(self.sequence_pos_encoder.pe[t, 0])


# --------------------------------------------------------------------------- the model


class CondMDIUNet(nn.Module):
    """``MDM_UNET`` (arch ``unet``): x_t, t, CLIP text features -> prediction (x0 as released)."""

    def __init__(self, config: CondMDIConfig):
        super().__init__()
        self.config = config
        D = config.latent_dim
        self.sequence_pos_encoder = _PETable(D)
        self.unet = TemporalUnet(config)
        self.embed_timestep = _TimestepEmbedder(D, self.sequence_pos_encoder)
        if config.text_conditioned:
            self.embed_text = nn.Linear(CLIP_DIM, D)

    def condition(self, timesteps: torch.Tensor, text_emb: torch.Tensor | None,
                  uncond: torch.Tensor | bool | None) -> torch.Tensor:
        """The conditioning vector (B, D): timestep embedding + masked text embedding."""
        emb = self.embed_timestep(timesteps.long())  # (B, D)
        B = emb.shape[0]
        if not self.config.text_conditioned:
            if text_emb is not None:
                raise ValueError("this checkpoint is not text-conditioned (cond_mode 'no_cond'); "
                                 "pass text_emb=None")
            return emb
        if text_emb is None:
            text_emb = emb.new_zeros(B, CLIP_DIM)
        if text_emb.shape != (B, CLIP_DIM):
            raise ValueError(f"text_emb must be ({B}, {CLIP_DIM}), got {tuple(text_emb.shape)}")
        text_emb = text_emb.to(emb.dtype)
        if uncond is not None:  # mask_cond: unconditional rows are multiplied by zero
            keep = (~torch.as_tensor(uncond, device=emb.device).bool()).to(emb.dtype)
            text_emb = text_emb * keep.reshape(-1, 1)  # (B, 512); a bool broadcasts from (1, 1)
        return emb + self.embed_text(text_emb)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                text_emb: torch.Tensor | None = None, uncond: torch.Tensor | bool | None = None,
                obs_x0: torch.Tensor | None = None, obs_mask: torch.Tensor | None = None):
        """``x`` (B, F, 1, T) or (B, F, T) -> prediction of the same shape.

        ``uncond``: True or a (B,) bool tensor; those rows ignore ``text_emb`` (released
        ``y['uncond']``). ``obs_x0`` / ``obs_mask`` (True = observed, as released) only for
        keyframe-conditioned checkpoints.
        """
        cfg = self.config
        squeeze = x.ndim == 3
        if squeeze:
            x = x.unsqueeze(2)  # (B, F, 1, T)
        if x.ndim != 4 or x.shape[1] * x.shape[2] != cfg.input_features:
            raise ValueError(f"x must be (B, {cfg.input_features}, 1, T) or (B, "
                             f"{cfg.input_features}, T), got {tuple(x.shape)}")
        B, _, _, T = x.shape
        if timesteps.shape != (B,):
            raise ValueError(f"timesteps must be ({B},), got {tuple(timesteps.shape)}")
        in_dtype = x.dtype
        dtype = self.embed_timestep.time_embed[0].weight.dtype
        x = x.to(dtype)
        if cfg.keyframe_conditioned:
            if obs_x0 is None or obs_mask is None:
                raise ValueError("a keyframe-conditioned checkpoint needs obs_x0 and obs_mask")
            obs_x0 = obs_x0.reshape(x.shape).to(dtype)
            m = obs_mask.reshape(x.shape).to(dtype)
            x = torch.cat([obs_x0 * m + x * (1 - m), m], dim=1)  # (B, 2F, 1, T)
        elif obs_x0 is not None or obs_mask is not None:
            raise ValueError("obs_x0/obs_mask given to a checkpoint without keyframe_conditioned")
        emb = self.condition(timesteps, text_emb, uncond)  # (B, D)
        h = x.flatten(1, 2)  # (B, F, T)
        h = F.pad(h, (0, cfg.padded_length(T) - T))  # zero frames at the end, as released
        out = self.unet(h, emb)[..., :T]  # (B, F, T)
        out = out.unsqueeze(2) if not squeeze else out
        return out.to(in_dtype)


# --------------------------------------------------------------------------- checkpoints

CLIP_PREFIX = "clip_model."  # deleted by the training loop's save, tolerated missing on load


def _read_args(args_path: Path) -> dict:
    if not args_path.is_file():
        raise FileNotFoundError(f"CondMDI args.json not found: {args_path}")
    with open(args_path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{args_path} is not valid JSON ({e})") from None


def unwrap_state_dict(obj: Any, use_avg: bool = True) -> dict[str, torch.Tensor]:
    """The state dict inside a released file: ``model_avg`` (preferred), ``model``, or raw."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"a CondMDI checkpoint holds a dict, got {type(obj).__name__}")
    if use_avg and "model_avg" in obj:
        obj = obj["model_avg"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    return {k: v for k, v in obj.items() if not k.startswith(CLIP_PREFIX)}


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse any missing, unexpected or misshapen key (CLIP keys are removed beforehand)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            "CondMDI checkpoint does not match the args.json architecture: "
            f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(expected[k].shape):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"CondMDI checkpoint key {k!r} has shape {got}; "
                             f"the args.json architecture needs {tuple(expected[k].shape)}")


def load_condmdi(ckpt_path: str | Path, args_path: str | Path | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 use_avg: bool = True) -> tuple[CondMDIUNet, CondMDIConfig]:
    """Load a released CondMDI U-Net checkpoint (``args.json`` beside it unless given); eval."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"CondMDI checkpoint not found: {ckpt_path}")
    args_path = Path(args_path) if args_path is not None else ckpt_path.parent / "args.json"
    config = CondMDIConfig.from_args(_read_args(args_path))
    try:
        raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for custom classes, RuntimeError for a damaged zip
        raise ValueError(f"cannot load the checkpoint {ckpt_path} with torch.load(weights_only=True) "
                         f"({type(e).__name__}): it must hold tensors and plain containers only (a released "
                         "CondMDI model*.pt does); a pickle of other objects is refused, it could run code") from None
    state = unwrap_state_dict(raw, use_avg=use_avg)
    with torch.device("meta"):
        model = CondMDIUNet(config)  # shapes only: no random init of 233M parameters
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)  # the file's tensors, pe included
    return model.to(device=device, dtype=dtype).eval(), config


def save_condmdi(model: CondMDIUNet, config: CondMDIConfig, directory: str | Path,
                 step: int = 0, nested: bool = True) -> Path:
    """Write ``model{step:09d}.pt`` + ``args.json`` as the release's training loop does.

    ``nested`` writes ``{"model": sd, "model_avg": sd}`` (the U-Net cards' ``avg_model_beta``
    0.9999 format); otherwise the bare state dict. Returns the checkpoint path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    obj = {"model": state, "model_avg": state} if nested else state
    path = directory / f"model{step:09d}.pt"
    torch.save(obj, path)
    with open(directory / "args.json", "w") as f:
        json.dump(config.to_args(), f, indent=4, sort_keys=True)
    return path


# --------------------------------------------------------------------------- schedule + denoiser


def make_scheduler(config: CondMDIConfig):
    """A diffusers ``DDPMScheduler`` set up as the checkpoint was trained.

    ``create_gaussian_diffusion``: ``get_named_beta_schedule(noise_schedule, 1000)`` (cosine =
    guided-diffusion's ``betas_for_alpha_bar`` with cos^2(((t + 0.008) / 1.008) pi / 2) and
    beta <= 0.999, which diffusers calls ``squaredcos_cap_v2``), x0 prediction, FIXED_SMALL
    variance when ``sigma_small`` (the posterior variance, diffusers ``fixed_small``), no
    clipping by the scheduler (the release clamps nothing in p_mean_variance for START_X without
    ``clip_denoised``).
    """
    from diffusers import DDPMScheduler

    T = config.diffusion_steps
    kw: dict[str, Any] = {"beta_schedule": "squaredcos_cap_v2"}
    if config.noise_schedule == "linear":  # Ho et al. linear, scaled to T steps
        kw = {"beta_schedule": "linear", "beta_start": 0.0001 * 1000 / T,
              "beta_end": 0.02 * 1000 / T}
    return DDPMScheduler(
        num_train_timesteps=T,
        prediction_type="sample" if config.predict_xstart else "epsilon",
        clip_sample=False,
        variance_type="fixed_small" if config.sigma_small else "fixed_large",
        **kw,
    )


def null_text(batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The unconditional text condition: zero CLIP features (what ``mask_cond`` feeds)."""
    return torch.zeros(batch, CLIP_DIM, device=device, dtype=dtype)


class CondMDIDenoiser:
    """Adapts :class:`CondMDIUNet` to the denoiser protocol (``longgen/denoiser.py``).

    * ``x``: (B, F, T) normalised features x frames (F = 263); ``t``: (B,) long;
    * ``cond``: ``None`` (all unconditional), a (B, 512) tensor of CLIP ``encode_text`` features
      where a **row of zeros is the unconditional condition** (exactly the release's masked
      branch, see the module docstring), or for keyframe-conditioned checkpoints a dict
      ``{"text": (B, 512) or None, "obs_x0": (B, F, T), "obs_mask": (B, F, T) bool}``.
      Tensors and dicts of tensors batch by concatenation along dim 0 (``cat_cond``).
    * returns the x0 prediction (``prediction_type = "sample"``) of shape (B, F, T).
    """

    def __init__(self, model: CondMDIUNet, config: CondMDIConfig | None = None):
        self.model = model
        self.config = config or model.config
        self.prediction_type = "sample" if self.config.predict_xstart else "epsilon"

    @property
    def sample_shape(self) -> tuple[int, None]:
        """Per-sample latent shape (features, frames); frames are free."""
        return (self.config.input_features, None)

    def schedule(self):
        return make_scheduler(self.config)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(
                f"x must be (B, {self.config.input_features}, T), got {tuple(x.shape)}")
        obs_x0 = obs_mask = None
        text = cond
        if isinstance(cond, Mapping):
            unknown = set(cond) - {"text", "obs_x0", "obs_mask"}
            if unknown:
                raise ValueError(f"unknown condition keys {sorted(unknown)}; "
                                 "allowed: text, obs_x0, obs_mask")
            text, obs_x0, obs_mask = cond.get("text"), cond.get("obs_x0"), cond.get("obs_mask")
        if text is not None and not self.config.text_conditioned:
            if torch.count_nonzero(text) == 0:
                text = None  # a null text for a model without text: nothing to condition
        p = next(self.model.parameters())
        if text is not None:
            text = text.to(device=p.device)
        out = self.model(x.to(p.device), t.to(p.device), text,
                         obs_x0=None if obs_x0 is None else obs_x0.to(p.device),
                         obs_mask=None if obs_mask is None else obs_mask.to(p.device))
        return out.to(device=x.device, dtype=x.dtype)
