"""LaVie's base text-to-video UNet, written by us so the released ``lavie_base.pt`` loads strictly.

Source of the layout (read, not copied): Vchitect/LaVie, ``base/models/unet.py``
(``UNet3DConditionModel``, ``from_pretrained_2d``), ``unet_blocks.py``, ``resnet.py``,
``attention.py`` (``Transformer3DModel``, ``BasicTransformerBlock``, ``TemporalAttention``,
``RelativePositionBias``), ``base/download.py`` (``find_model``) and ``base/pipelines/sample.py``.
LaVie has no ``rotary.py``: its temporal attention takes ``RotaryEmbedding(32)`` from the
``rotary_embedding_torch`` package (lucidrains/rotary-embedding-torch), one instance shared by
every temporal attention of the UNet.

The network is SD-1.4's 2-D UNet with every convolution applied frame by frame ("inflated") and one
temporal self-attention inserted in each transformer block. It is built from the SD UNet config
(``from_pretrained_2d`` reads ``unet/config.json`` and swaps the 2-D block names for 3-D ones).
LaVie passes SD's ``attention_head_dim`` (8) on as the *number of heads* (the old diffusers
quirk), so a block of ``C`` channels has 8 heads of ``C // 8`` channels. The resnet GroupNorms
and ``conv_norm_out`` normalise the 5-D tensor, so their statistics span all frames of a sample;
the transformers' GroupNorm runs per frame. With the temporal output projections at zero and one
frame, the network is SD's UNet exactly (tests check this against diffusers' UNet2DConditionModel).

Forward, per transformer block on ``(B*F, H*W, C)`` tokens (eval mode, ``use_image_num = 0``)::

    h = attn1(norm1(h)) + h                         # spatial self-attention, per frame
    h = attn2(norm2(h), text) + h                   # cross-attention, text repeated per frame
    h -> (B*H*W, F, C);  h = attn_temp(norm_temp(h)) + h;  h -> (B*F, H*W, C)
    h = ff(norm3(h)) + h                            # GEGLU feed-forward

``attn_temp`` scores are ``q k^T / sqrt(d) + bias[head, i, j]`` with rotary position embeddings
rotating the first 32 channels of every head's q and k (interleaved pairs, angles
``pos * freqs``, ``freqs = 10000 ** (-arange(0, 32, 2) / 32)``) and a T5-style bucketed relative
position bias (32 buckets, max distance 32, bidirectional) learned per head.

State-dict keys (SD-1.4 config: block_out_channels (320, 640, 1280, 1280), 8 heads,
cross_attention_dim 768, layers_per_block 2). Top-level prefixes: ``conv_in``, ``time_embedding``
(``linear_1``, ``linear_2``), ``down_blocks.{0..3}``, ``mid_block``, ``up_blocks.{0..3}``,
``conv_norm_out``, ``conv_out``. 830 keys: the 686 of SD-1.4's UNet with the same names and
shapes, plus 9 per transformer block (16 blocks) for the temporal layer. Representative ones::

    conv_in.weight                                                   (320, 4, 3, 3)
    time_embedding.linear_1.weight                                   (1280, 320)
    down_blocks.0.resnets.0.conv1.weight                             (320, 320, 3, 3)
    down_blocks.0.attentions.0.proj_in.weight                        (320, 320, 1, 1)
    down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight   (320, 768)
    down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight (2560, 320)
    down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight (320, 320)
    down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_out.0.bias (320,)
    down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.rotary_emb.freqs (16,)
    down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.time_rel_pos_bias.relative_attention_bias.weight (32, 8)
    down_blocks.0.attentions.0.transformer_blocks.0.norm_temp.weight (320,)
    down_blocks.0.downsamplers.0.conv.weight                         (320, 320, 3, 3)
    mid_block.attentions.0.transformer_blocks.0.attn_temp.to_v.weight (1280, 1280)
    up_blocks.3.resnets.0.conv1.weight                               (320, 960, 3, 3)
    up_blocks.3.resnets.2.conv1.weight                               (320, 640, 3, 3)
    up_blocks.0.upsamplers.0.conv.weight                             (1280, 1280, 3, 3)
    conv_out.weight                                                  (4, 320, 3, 3)

The rotary ``freqs`` is one parameter shared by all temporal attentions, so the checkpoint holds
one copy per block (a ``torch.nn.Module.state_dict`` does not de-duplicate shared modules).

Checkpoint: LaVie's ``find_model`` takes ``checkpoint["ema"]`` when that key exists and the whole
file otherwise, then calls a strict ``load_state_dict``; :func:`read_lavie_checkpoint` does the
same with ``torch.load(weights_only=True)`` (public conversion scripts read ``lavie_base.pt`` as
``torch.load(...)["ema"]``, so the released file is the wrapped form).

Not verified here (no real weights on this machine): the key listing against the released file
itself (it is derived from LaVie's module code and the ``rotary_embedding_torch`` versions of
2023-2025, all of which keep ``freqs`` as a parameter); outputs against LaVie's own code, which
needs diffusers 0.16 and ``rotary_embedding_torch``. Under fp16 LaVie computes rotary angles in
half precision; we compute them in float32, a difference of the order of fp16 rounding.
Training-only paths (``use_image_num`` image frames, gradient checkpointing, xformers) and the
unused options (``use_relative_position``, ``use_first_frame``, class embeddings) are left out.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

ROTARY_DIM = 32            # LaVie base/models/unet.py: RotaryEmbedding(32), shared
REL_POS_BUCKETS = 32       # LaVie attention.py: RelativePositionBias(heads, max_distance=32)
REL_POS_MAX_DISTANCE = 32
TRANSFORMER_NORM_EPS = 1e-6  # Transformer3DModel's GroupNorm

_DOWN_TYPES = {"CrossAttnDownBlock2D": "CrossAttnDownBlock3D", "CrossAttnDownBlock3D": "CrossAttnDownBlock3D",
               "DownBlock2D": "DownBlock3D", "DownBlock3D": "DownBlock3D"}
_UP_TYPES = {"CrossAttnUpBlock2D": "CrossAttnUpBlock3D", "CrossAttnUpBlock3D": "CrossAttnUpBlock3D",
             "UpBlock2D": "UpBlock3D", "UpBlock3D": "UpBlock3D"}
_MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock3DCrossAttn")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LaVieConfig:
    """The fields of SD's UNet config that LaVie's ``from_pretrained_2d`` uses."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    layers_per_block: int = 2
    heads: tuple[int, ...] = (8, 8, 8, 8)  # SD's `attention_head_dim`, used as a head count
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    sample_size: int = 64

    @classmethod
    def from_sd_unet_config(cls, cfg: Mapping[str, Any]) -> "LaVieConfig":
        """SD ``unet/config.json`` -> LaVie config; options LaVie's base model never uses are refused."""
        _refuse(cfg, "use_linear_projection", (False, None))
        _refuse(cfg, "class_embed_type", (None,))
        _refuse(cfg, "num_class_embeds", (None,))
        _refuse(cfg, "resnet_time_scale_shift", ("default", None))
        _refuse(cfg, "dual_cross_attention", (False, None))
        _refuse(cfg, "only_cross_attention", (False, None))
        _refuse(cfg, "upcast_attention", (False, None))
        _refuse(cfg, "center_input_sample", (False, None))
        _refuse(cfg, "act_fn", ("silu", None))
        _refuse(cfg, "transformer_layers_per_block", (1, None))
        _refuse(cfg, "addition_embed_type", (None,))
        _refuse(cfg, "encoder_hid_dim", (None,))
        _refuse(cfg, "time_cond_proj_dim", (None,))
        mid = cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
        if mid not in _MID_TYPES:
            raise ValueError(f"mid_block_type {mid!r} is not supported; allowed: {', '.join(_MID_TYPES)}")
        down = tuple(_map_type(t, _DOWN_TYPES, "down_block_types") for t in cfg["down_block_types"])
        up = tuple(_map_type(t, _UP_TYPES, "up_block_types") for t in cfg["up_block_types"])
        channels = tuple(int(c) for c in cfg["block_out_channels"])
        if not (len(down) == len(up) == len(channels)):
            raise ValueError(f"down_block_types ({len(down)}), up_block_types ({len(up)}) and "
                             f"block_out_channels ({len(channels)}) must have the same length")
        heads = cfg.get("attention_head_dim", 8)
        heads = tuple(int(h) for h in heads) if isinstance(heads, (list, tuple)) else (int(heads),) * len(channels)
        if len(heads) != len(channels):
            raise ValueError(f"attention_head_dim has {len(heads)} entries; allowed: one per block ({len(channels)})")
        layers = cfg.get("layers_per_block", 2)
        if not isinstance(layers, int):
            raise ValueError(f"layers_per_block {layers!r} must be one int for LaVie")
        return cls(
            in_channels=int(cfg.get("in_channels", 4)), out_channels=int(cfg.get("out_channels", 4)),
            block_out_channels=channels, down_block_types=down, up_block_types=up,
            layers_per_block=layers, heads=heads,
            cross_attention_dim=int(cfg.get("cross_attention_dim", 768)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)), norm_eps=float(cfg.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)), freq_shift=int(cfg.get("freq_shift", 0)),
            downsample_padding=int(cfg.get("downsample_padding", 1)),
            mid_block_scale_factor=float(cfg.get("mid_block_scale_factor", 1.0)),
            sample_size=int(cfg.get("sample_size") or 64),
        )

    def check(self) -> None:
        for i, (c, h) in enumerate(zip(self.block_out_channels, self.heads)):
            if c % h:
                raise ValueError(f"block {i}: {c} channels do not split into {h} heads")
            if c // h < ROTARY_DIM:
                raise ValueError(f"block {i}: head width {c // h} < {ROTARY_DIM}, the rotary width LaVie "
                                 f"applies to every head; allowed: channels / heads >= {ROTARY_DIM}")


def _refuse(cfg: Mapping[str, Any], key: str, allowed: tuple) -> None:
    if key in cfg and cfg[key] not in allowed:
        raise ValueError(f"UNet config {key}={cfg[key]!r} is not used by LaVie's base model; allowed: {allowed}")


def _map_type(name: str, table: dict[str, str], what: str) -> str:
    if name not in table:
        raise ValueError(f"{what} entry {name!r} is not supported; allowed: {', '.join(table)}")
    return table[name]


def _as_config(config: LaVieConfig | Mapping[str, Any]) -> LaVieConfig:
    cfg = config if isinstance(config, LaVieConfig) else LaVieConfig.from_sd_unet_config(config)
    cfg.check()
    return cfg


# --------------------------------------------------------------------------- position terms


def rotary_angles(freqs: torch.Tensor, n: int) -> torch.Tensor:
    """Rotary angles ``pos * freq`` for positions 0..n-1, each repeated for its channel pair. (n, 2*len(freqs))"""
    pos = torch.arange(n, device=freqs.device, dtype=torch.float32)
    ang = pos[:, None] * freqs.float()[None, :]            # (n, R/2)
    return repeat(ang, "n r -> n (r two)", two=2)          # (n, R), pairs interleaved


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``angles.shape[-1]`` channels of ``x (..., n, d)`` in interleaved pairs."""
    r = angles.shape[-1]
    head, tail = x[..., :r].float(), x[..., r:]
    pairs = rearrange(head, "... (k two) -> ... k two", two=2)
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1)  # (x0, x1) -> (-x1, x0)
    swapped = rearrange(swapped, "... k two -> ... (k two)")
    out = head * angles.cos() + swapped * angles.sin()
    return torch.cat((out.to(x.dtype), tail), dim=-1)


def relative_position_bucket(rel: torch.Tensor, num_buckets: int = REL_POS_BUCKETS,
                             max_distance: int = REL_POS_MAX_DISTANCE) -> torch.Tensor:
    """Bidirectional T5-style buckets of ``rel = key_pos - query_pos`` (LaVie's RelativePositionBias).

    Half the buckets hold keys after the query; within a half, distances below a quarter of the
    buckets get their own bucket and larger ones share log-spaced buckets up to ``max_distance``.
    """
    half = num_buckets // 2
    n = -rel                                   # query - key
    bucket = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    safe = n.clamp(min=1).float()
    large = exact + (torch.log(safe / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(n < exact, n, large)


# --------------------------------------------------------------------------- layers


class FrameConv2d(nn.Conv2d):
    """A 2-D convolution applied to every frame of ``(B, C, F, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.shape[2]
        y = super().forward(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", f=f)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = FrameConv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = FrameConv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = FrameConv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W), (B, T)
        # GroupNorm of the 5-D tensor, as LaVie does: statistics over (group, F, H, W), across frames
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (skip + h) / self.scale


class Attention(nn.Module):
    """Multi-head attention with LaVie's (diffusers 0.11) names: to_q, to_k, to_v, to_out.0."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b n (h d) -> b h n d", h=self.heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # (N, L, C)
        ctx = x if context is None else context
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(ctx)), self._heads(self.to_v(ctx))
        out = F.scaled_dot_product_attention(q, k, v)          # (N, h, L, d)
        return self.to_out[0](rearrange(out, "b h n d -> b n (h d)"))


class RotaryEmbedding(nn.Module):
    """Holds the rotary frequencies as a (frozen) parameter named ``freqs``, as rotary_embedding_torch does."""

    def __init__(self, dim: int = ROTARY_DIM, theta: float = 10000.0):
        super().__init__()
        freqs = theta ** (-torch.arange(0, dim, 2).float() / dim)   # (dim/2,)
        self.freqs = nn.Parameter(freqs, requires_grad=False)


class RelativePositionBias(nn.Module):
    def __init__(self, heads: int):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(REL_POS_BUCKETS, heads)

    def forward(self, n: int) -> torch.Tensor:  # -> (heads, n, n)
        pos = torch.arange(n, device=self.relative_attention_bias.weight.device)
        rel = pos[None, :] - pos[:, None]                      # key - query, (n, n)
        return rearrange(self.relative_attention_bias(relative_position_bucket(rel)), "i j h -> h i j")


class TemporalAttention(Attention):
    """Self-attention over frames with rotary positions and a learned relative position bias."""

    def __init__(self, dim: int, heads: int, rotary: RotaryEmbedding):
        super().__init__(dim, heads)
        self.time_rel_pos_bias = RelativePositionBias(heads)
        self.rotary_emb = rotary

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # (N, F, C)
        n = x.shape[1]
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(x)), self._heads(self.to_v(x))
        ang = rotary_angles(self.rotary_emb.freqs, n)          # (F, 32)
        q, k = apply_rotary(q, ang), apply_rotary(k, ang)
        bias = self.time_rel_pos_bias(n).to(q.dtype)           # (h, F, F)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out[0](rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.0 = GEGLU, net.1 = dropout (no weights), net.2 = output projection (diffusers names)
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int, rotary: RotaryEmbedding):
        super().__init__()
        self.attn1 = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, rotary)
        self.norm_temp = nn.LayerNorm(dim)
        nn.init.zeros_(self.attn_temp.to_out[0].weight)       # LaVie starts the temporal path at ~0
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:  # (B*F, HW, C)
        h = self.attn1(self.norm1(h)) + h
        h = self.attn2(self.norm2(h), context) + h
        d = h.shape[1]
        t = rearrange(h, "(b f) d c -> (b d) f c", f=frames)
        t = self.attn_temp(self.norm_temp(t)) + t
        h = rearrange(t, "(b d) f c -> (b f) d c", d=d)
        return self.ff(self.norm3(h)) + h


class Transformer3D(nn.Module):
    def __init__(self, channels: int, heads: int, context_dim: int, groups: int, rotary: RotaryEmbedding):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim, rotary)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W), (B, L, D)
        b, c, f, hh, ww = x.shape
        x2 = rearrange(x, "b c f h w -> (b f) c h w")
        ctx = repeat(context, "b n d -> (b f) n d", f=f)
        h = rearrange(self.proj_in(self.norm(x2)), "n c h w -> n (h w) c")
        for block in self.transformer_blocks:
            h = block(h, ctx, f)
        h = self.proj_out(rearrange(h, "n (h w) c -> n c h w", h=hh))
        return rearrange(h + x2, "(b f) c h w -> b c f h w", f=f)


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        f = x.shape[2]
        x2 = rearrange(x, "b c f h w -> (b f) c h w")
        x2 = F.interpolate(x2, scale_factor=2.0, mode="nearest") if size is None else \
            F.interpolate(x2, size=size, mode="nearest")
        return self.conv(rearrange(x2, "(b f) c h w -> b c f h w", f=f))


class DownBlock(nn.Module):
    """``CrossAttnDownBlock3D`` when ``attention`` else ``DownBlock3D``."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: LaVieConfig, heads: int, attention: bool,
                 downsample: bool, rotary: RotaryEmbedding):
        super().__init__()
        g, eps, L = cfg.norm_num_groups, cfg.norm_eps, cfg.layers_per_block
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, temb, g, eps) for i in range(L)])
        if attention:
            self.attentions = nn.ModuleList(
                [Transformer3D(cout, heads, cfg.cross_attention_dim, g, rotary) for _ in range(L)])
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample(cout, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, emb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, temb: int, cfg: LaVieConfig, heads: int, rotary: RotaryEmbedding):
        super().__init__()
        g, eps, s = cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, temb, g, eps, s) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer3D(channels, heads, cfg.cross_attention_dim, g, rotary)])

    def forward(self, x, emb, context):
        x = self.resnets[0](x, emb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, emb)


class UpBlock(nn.Module):
    """``CrossAttnUpBlock3D`` when ``attention`` else ``UpBlock3D`` (layers_per_block + 1 resnets)."""

    def __init__(self, cin: int, cprev: int, cout: int, temb: int, cfg: LaVieConfig, heads: int,
                 attention: bool, upsample: bool, rotary: RotaryEmbedding):
        super().__init__()
        g, eps, L = cfg.norm_num_groups, cfg.norm_eps, cfg.layers_per_block + 1
        resnets = []
        for i in range(L):
            skip = cin if i == L - 1 else cout
            res_in = cprev if i == 0 else cout
            resnets.append(ResnetBlock(res_in + skip, cout, temb, g, eps))
        self.resnets = nn.ModuleList(resnets)
        if attention:
            self.attentions = nn.ModuleList(
                [Transformer3D(cout, heads, cfg.cross_attention_dim, g, rotary) for _ in range(L)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x, emb, context, skips: list, size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout)
        self.linear_2 = nn.Linear(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


# --------------------------------------------------------------------------- the UNet


class LaVieUNet(nn.Module):
    """LaVie's base 3-D UNet: ``(sample (B, C, F, H, W), timestep (B,), text (B, L, D)) -> (B, C, F, H, W)``."""

    def __init__(self, config: LaVieConfig):
        super().__init__()
        cfg = _as_config(config)
        self.config = cfg
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        rotary = RotaryEmbedding(ROTARY_DIM)       # one instance, registered under every attn_temp
        self.conv_in = FrameConv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        n = len(ch)
        self.down_blocks = nn.ModuleList()
        cout = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            cin, cout = cout, ch[i]
            self.down_blocks.append(DownBlock(cin, cout, temb, cfg, cfg.heads[i], kind == "CrossAttnDownBlock3D",
                                              i < n - 1, rotary))
        self.mid_block = MidBlock(ch[-1], temb, cfg, cfg.heads[-1], rotary)
        rch, rheads = list(reversed(ch)), list(reversed(cfg.heads))
        self.up_blocks = nn.ModuleList()
        cout = rch[0]
        for i, kind in enumerate(cfg.up_block_types):
            cprev, cout = cout, rch[i]
            cin = rch[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(cin, cprev, cout, temb, cfg, rheads[i], kind == "CrossAttnUpBlock3D",
                                          i < n - 1, rotary))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = FrameConv2d(ch[0], cfg.out_channels, 3, padding=1)

    @classmethod
    def from_config(cls, sd_unet_config: LaVieConfig | Mapping[str, Any]) -> "LaVieUNet":
        """Build from SD's ``unet/config.json`` dict (LaVie's ``from_pretrained_2d``), randomly initialised."""
        return cls(_as_config(sd_unet_config))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def time_embed(self, timestep: torch.Tensor | int | float, batch: int, device) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        e = get_timestep_embedding(t, self.config.block_out_channels[0],
                                   flip_sin_to_cos=self.config.flip_sin_to_cos,
                                   downscale_freq_shift=self.config.freq_shift)
        return self.time_embedding(e.to(self.dtype))          # (B, 4*C0)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, C, F, H, W); got shape {tuple(sample.shape)}")
        emb = self.time_embed(timestep, sample.shape[0], sample.device)
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % up_factor for s in sample.shape[-2:])
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, emb, encoder_hidden_states)
            skips += s
        x = self.mid_block(x, emb, encoder_hidden_states)
        for i, block in enumerate(self.up_blocks):
            mine = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            size = tuple(skips[-1].shape[-2:]) if (forward_size and i < len(self.up_blocks) - 1) else None
            x = block(x, emb, encoder_hidden_states, mine, size)
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)


# --------------------------------------------------------------------------- state dicts


def lavie_state_dict_keys(config: LaVieConfig | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the LaVie UNet for ``config`` with its shape (built on the meta device)."""
    with torch.device("meta"):
        model = LaVieUNet(_as_config(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def is_temporal_key(key: str) -> bool:
    """The keys LaVie adds to SD's UNet (``from_pretrained_2d`` initialises every ``*_temp*`` key fresh)."""
    return "_temp" in key


def check_lavie_state_dict(expected: Mapping[str, tuple], state_dict: Mapping[str, torch.Tensor]) -> None:
    """ValueError naming the first missing, unexpected or misshapen key."""
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"LaVie state dict is missing key {missing[0]!r} ({len(missing)} missing in all)")
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise ValueError(f"LaVie state dict has unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")
    for k, shape in expected.items():
        got = tuple(state_dict[k].shape)
        if got != tuple(shape):
            raise ValueError(f"LaVie state dict key {k!r} has shape {got}; expected {tuple(shape)}")


def load_lavie_state_dict(model: LaVieUNet, state_dict: Mapping[str, torch.Tensor]) -> LaVieUNet:
    """Strict load (keys and shapes must match exactly); errors name the offending key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_lavie_state_dict(expected, state_dict)
    freqs = [k for k in state_dict if k.endswith("attn_temp.rotary_emb.freqs")]
    for k in freqs[1:]:  # one shared tensor in LaVie: every copy must agree
        if not torch.equal(state_dict[k].float(), state_dict[freqs[0]].float()):
            raise ValueError(f"LaVie state dict key {k!r} differs from {freqs[0]!r}; the rotary frequencies "
                             "are one shared tensor and must be equal")
    model.load_state_dict(dict(state_dict), strict=True)
    return model


def read_lavie_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """``lavie_base.pt`` -> state dict: ``ckpt["ema"]`` when present, else the file itself (LaVie find_model)."""
    import argparse
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"LaVie checkpoint {path!r} does not exist")
    try:
        # training checkpoints (DiT-style) may carry an argparse.Namespace of their arguments
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path!r} is not a loadable LaVie checkpoint (torch.load weights_only=True): {e}") from e
    if isinstance(ckpt, Mapping) and "ema" in ckpt:
        ckpt = ckpt["ema"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path!r} holds no state dict (expected a dict of tensors or a dict with an 'ema' entry)")
    return dict(ckpt)


def inflate_unet2d_state_dict(state_dict_2d: Mapping[str, torch.Tensor], model: LaVieUNet) -> dict:
    """LaVie's ``from_pretrained_2d`` weights: SD's 2-D UNet tensors plus the model's own temporal tensors."""
    out = dict(state_dict_2d)
    for k, v in model.state_dict().items():
        if is_temporal_key(k):
            out[k] = v.detach().clone()
    return out


__all__ = [
    "LaVieConfig", "LaVieUNet", "lavie_state_dict_keys", "load_lavie_state_dict", "read_lavie_checkpoint",
    "check_lavie_state_dict", "inflate_unet2d_state_dict", "is_temporal_key", "relative_position_bucket",
    "rotary_angles", "apply_rotary", "ROTARY_DIM",
]
