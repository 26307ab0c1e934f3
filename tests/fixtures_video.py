"""Tiny random video-model components built from config under a fixed seed (no hub downloads).

Builders for the video model tests: a CLIP tokenizer from a vocabulary and merges list written
here, a small CLIP text encoder, a small VAE, a DDIM scheduler, and tiny UNets of the three
families longgen adapts (diffusers ``UNet3DConditionModel``, AnimateDiff's ``UNet2DConditionModel``
+ ``MotionAdapter``, and our LaVie UNet). Sizes follow the diffusers pipeline tests
(``block_out_channels=(32, 64)``, ``cross_attention_dim=32``).
"""

from __future__ import annotations

import json
import os

import torch

TEXT_DIM = 32          # CLIP hidden size = cross_attention_dim of every tiny UNet
MAX_TOKENS = 77        # CLIP's context length; the tokenizer pads to it


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2's mapping)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


MERGES = ["a n", "t h", "th e</w>", "o n</w>", "a t</w>", "i n"]


def write_tokenizer(path: str):
    """vocab.json + merges.txt of a tiny byte-level CLIP BPE, loaded back with CLIPTokenizer."""
    from transformers import CLIPTokenizer

    os.makedirs(path, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": MAX_TOKENS, "tokenizer_class": "CLIPTokenizer"}, f)
    return CLIPTokenizer.from_pretrained(path)


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                         projection_dim=TEXT_DIM)
    return CLIPTextModel(cfg).eval()


def tiny_vae(seed: int = 0):
    """A 2-level AutoencoderKL: 4 latent channels, spatial factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=32).eval()


def tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False)


def perturb_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter so zero-initialised paths (temporal layers) do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p.dtype))
    return module


def tiny_unet3d(seed: int = 0):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                                cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=32)
    return perturb_(unet, seed + 1).eval()


def tiny_unet2d_config() -> dict:
    """An SD-style UNet config small enough for tests; every head is 32 wide (LaVie rotates 32 channels)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": [1, 2],
        "block_out_channels": [32, 64],
        "center_input_sample": False,
        "cross_attention_dim": TEXT_DIM,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 8,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }


def tiny_unet2d(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    cfg = {k: v for k, v in tiny_unet2d_config().items() if not k.startswith("_")}
    return perturb_(UNet2DConditionModel(**cfg), seed + 1).eval()


def tiny_motion_adapter(seed: int = 0):
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                            motion_norm_num_groups=2, motion_num_attention_heads=2,
                            motion_max_seq_length=8)
    return perturb_(adapter, seed + 1).eval()


def tiny_lavie(seed: int = 0):
    from longgen.modalities.video.lavie import LaVieUNet

    torch.manual_seed(seed)
    return perturb_(LaVieUNet.from_config(tiny_unet2d_config()), seed + 1).eval()


def save_components(root: str, *, unet=None, seed: int = 0) -> dict:
    """Write vae/, text_encoder/, tokenizer/, scheduler/ (and unet/ when given) under ``root``."""
    tok = write_tokenizer(os.path.join(root, "tokenizer"))
    parts = {"tokenizer": tok, "text_encoder": tiny_text_encoder(len(tok), seed),
             "vae": tiny_vae(seed), "scheduler": tiny_scheduler()}
    for name in ("text_encoder", "vae", "scheduler"):
        parts[name].save_pretrained(os.path.join(root, name))
    if unet is not None:
        unet.save_pretrained(os.path.join(root, "unet"))
        parts["unet"] = unet
    return parts


def save_modelscope(root: str, seed: int = 0) -> dict:
    """A tiny ``TextToVideoSDPipeline`` saved with ``save_pretrained``; returns its in-memory parts."""
    from diffusers import TextToVideoSDPipeline

    tok = write_tokenizer(root.rstrip("/") + "_tokenizer_src")
    parts = {"tokenizer": tok, "text_encoder": tiny_text_encoder(len(tok), seed), "vae": tiny_vae(seed),
             "scheduler": tiny_scheduler(), "unet": tiny_unet3d(seed)}
    TextToVideoSDPipeline(**parts).save_pretrained(root)
    return parts
