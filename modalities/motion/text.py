"""CLIP ViT-B/32 text features as MDM / CondMDI feed them to the motion U-Net.

MDM's ``encode_text`` (setarehc/diffusion-motion-inbetweening ``model/mdm_unet.py`` and
``model/mdm.py``, ``MDM*.encode_text``) tokenises each prompt with OpenAI CLIP's
``clip.tokenize(context_length=22, truncate=True)`` for HumanML3D/KIT (20 text tokens between
the start and end tokens; a longer prompt keeps its first 20 and ends with the end token),
zero-pads to 77 and returns ``clip_model.encode_text(tokens).float()``: the text projection of
the final-layer-normed hidden state at the end token, **not** L2-normalised (CLIP normalises
only inside its ``forward`` for the logits). The CLIP weights are ``ViT-B/32``, run in fp16 by
the release (``clip.model.convert_weights``); here in the dtype asked for (fp32 by default).

transformers' ``CLIPTextModelWithProjection`` computes the same vector as ``text_embeds``:
``CLIPTextTransformer.forward`` applies ``final_layer_norm`` and takes the hidden state at the
first ``eos_token_id`` position, and ``CLIPTextModelWithProjection.forward`` applies the
bias-free ``text_projection`` to it (transformers ``models/clip/modeling_clip.py``); OpenAI's
``CLIP.encode_text`` takes ``ln_final(x)[arange, text.argmax(-1)] @ text_projection``, the
end token having the largest id (openai/CLIP ``clip/model.py``). Both run a causal mask, so the
padding after the end token (zeros there, the end token here) does not reach the pooled state.
The HF tokenizer's truncation keeps the start and end tokens like ``clip.tokenize(truncate=True)``.
Tokeniser normalisation differs only on text ``ftfy`` would repair (OpenAI: ftfy + html unescape
+ whitespace + lowercase; HF: NFC + whitespace + lowercase).

An empty prompt loads nothing and gives the unconditional condition: zero features, which is
what the release's ``mask_cond`` feeds the model for ``uncond`` (see ``condmdi.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # OpenAI ViT-B/32 on the hub
MAX_TEXT_TOKENS = 20  # MDM encode_text: max_text_len for humanml / kit
CLIP_DIM = 512


def _how_to_provide(source: str) -> str:
    return (
        f"could not load a CLIP text encoder from {source!r}. Provide it as a local directory "
        "holding a saved CLIPTextModelWithProjection and CLIPTokenizer (save_pretrained), or a "
        f"hub id such as {DEFAULT_CLIP!r} (downloaded once, then usable with "
        "local_files_only=True); or run with --prompt \"\" to sample without a text encoder "
        "(the unconditional condition)."
    )


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source


class CLIPTextEncoder:
    """Prompts -> (B, projection_dim) CLIP text features, MDM's way (20-token truncation)."""

    def __init__(self, model, tokenizer, max_text_tokens: int = MAX_TEXT_TOKENS):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, max_text_tokens + 2) ids: start, up to 20 tokens, end, padding."""
        enc = self.tokenizer(list(prompts), max_length=self.max_text_tokens + 2,
                             truncation=True, padding="max_length", return_tensors="pt")
        return enc["input_ids"]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        p = next(self.model.parameters())
        ids = self.tokenize(prompts).to(p.device)  # (B, 22)
        return self.model(input_ids=ids).text_embeds.float()  # (B, projection_dim)


def load_text_encoder(source: str | Path = DEFAULT_CLIP, *, local_files_only: bool = False,
                      device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> CLIPTextEncoder:
    """Load ``CLIPTextModelWithProjection`` + ``CLIPTokenizer`` from a directory or a hub id."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    source = str(source)
    if not Path(source).expanduser().exists() and _looks_like_path(source):
        raise FileNotFoundError(f"no such directory {source!r}: " + _how_to_provide(source))
    src = str(Path(source).expanduser()) if Path(source).expanduser().exists() else source
    try:
        tokenizer = CLIPTokenizer.from_pretrained(src, local_files_only=local_files_only)
        model = CLIPTextModelWithProjection.from_pretrained(
            src, local_files_only=local_files_only, dtype=dtype)
    except (OSError, ValueError) as e:  # missing files, or no network for a hub id
        raise FileNotFoundError(_how_to_provide(source) + f" ({type(e).__name__}: {e})") from e
    return CLIPTextEncoder(model.to(device), tokenizer)


def encode_text(prompts: str | Sequence[str], source: str | Path = DEFAULT_CLIP, *,
                encoder: CLIPTextEncoder | None = None, local_files_only: bool = False,
                device: str | torch.device = "cpu", dim: int = CLIP_DIM) -> torch.Tensor:
    """(B, dim) text features; empty prompts give zero rows (unconditional) without loading CLIP."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt ('' for unconditional)")
    filled = [i for i, p in enumerate(prompts) if p.strip()]
    if encoder is None and filled:
        encoder = load_text_encoder(source, local_files_only=local_files_only, device=device)
    if encoder is not None:
        dim = encoder.dim
    out = torch.zeros(len(prompts), dim, device=device)
    if filled:
        out[filled] = encoder([prompts[i] for i in filled]).to(out.device)
    return out
