"""Video model adapters: tiny random checkpoints saved to disk and loaded back through longgen.

Every model is built from config under a fixed seed (tests/fixtures_video.py), perturbed so that
zero-initialised temporal layers take part, saved the way its family ships, and reloaded with
``load_video_model``; outputs must equal the in-memory model's. Our LaVie UNet is checked against
diffusers' UNet2DConditionModel (the spatial path, with the temporal output projections zeroed),
against a complex-number reference for its rotary temporal attention, and against hand-derived
key shapes for SD-1.4's config.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_video as fx  # noqa: E402

from longgen.modalities.video.lavie import (  # noqa: E402
    LaVieUNet, RotaryEmbedding, TemporalAttention, apply_rotary, inflate_unet2d_state_dict,
    is_temporal_key, lavie_state_dict_keys, load_lavie_state_dict, relative_position_bucket,
    rotary_angles,
)
from longgen.modalities.video.models import load_video_model  # noqa: E402

torch.set_grad_enabled(False)

SD14_UNET = {  # CompVis/stable-diffusion-v1-4 unet/config.json (as quoted in public LaVie forks)
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def inputs(b=2, f=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, h, w, generator=g)                     # (B, C, F, H, W)
    t = torch.tensor([17, 640][:b] + [300] * max(0, b - 2))         # (B,) long
    ctx = torch.randn(b, fx.MAX_TOKENS, fx.TEXT_DIM, generator=g)   # (B, 77, D)
    return x, t, ctx


# --------------------------------------------------------------------------- saved checkpoints


@pytest.fixture(scope="module")
def modelscope(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ms") / "pipe")
    return root, fx.save_modelscope(root)


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from diffusers import UNetMotionModel

    base = tmp_path_factory.mktemp("ad")
    sd, adapter_dir, saved = str(base / "sd"), str(base / "adapter"), str(base / "motion")
    unet2d, adapter = fx.tiny_unet2d(3), fx.tiny_motion_adapter(4)
    parts = fx.save_components(sd, unet=unet2d)
    adapter.save_pretrained(adapter_dir)
    motion = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    fx.save_components(saved, unet=motion)
    return sd, adapter_dir, saved, motion, parts


@pytest.fixture(scope="module")
def lavie(tmp_path_factory):
    import json

    base = tmp_path_factory.mktemp("lavie")
    sd = str(base / "sd14")
    fx.save_components(sd)
    os.makedirs(os.path.join(sd, "unet"))
    with open(os.path.join(sd, "unet", "config.json"), "w") as f:
        json.dump(fx.tiny_unet2d_config(), f)   # LaVie reads only the config of SD's UNet
    model = fx.tiny_lavie(5)
    ckpt = str(base / "lavie_base.pt")
    torch.save({"ema": model.state_dict()}, ckpt)   # LaVie's find_model takes ckpt["ema"]
    return sd, ckpt, model


# --------------------------------------------------------------------------- round trips


def test_modelscope_unet3d_roundtrip(modelscope):
    root, parts = modelscope
    vm = load_video_model(root)
    assert vm.kind == "unet3d" and vm.frames == 16 and vm.sample_size == (8, 8)
    assert type(vm.scheduler).__name__ == "DDIMScheduler" and vm.prediction_type == "epsilon"
    assert maxabs(vm.scheduler.alphas_cumprod, parts["scheduler"].alphas_cumprod) == 0.0
    x, t, ctx = inputs()
    out = vm.denoiser(x, t, ctx)
    ref = parts["unet"](x, t, encoder_hidden_states=ctx).sample
    assert out.shape == x.shape == (2, 4, 3, 8, 8)
    assert ref.abs().mean() > 1e-2
    assert maxabs(out, ref) <= 1e-6
    # dict conditions (what cat_cond batches) give the same output
    assert maxabs(vm.denoiser(x, t, {"encoder_hidden_states": ctx}), out) == 0.0
    # a batched call equals row-by-row calls (timesteps differ per row)
    rows = torch.cat([vm.denoiser(x[i:i + 1], t[i:i + 1], ctx[i:i + 1]) for i in range(2)])
    assert maxabs(rows, out) <= 1e-5
    # prompts: the saved tokenizer + text encoder reproduce the in-memory ones
    cond, uncond = vm.encode_prompt(["the cat", "an ant"], negative_prompt="")
    ids = parts["tokenizer"](["the cat", "an ant", "", ""], padding="max_length", max_length=77,
                             truncation=True, return_tensors="pt").input_ids
    ref_emb = parts["text_encoder"](ids)[0]
    assert cond.shape == uncond.shape == (2, 77, fx.TEXT_DIM)
    assert maxabs(torch.cat([cond, uncond]), ref_emb) <= 1e-6
    assert maxabs(cond[0], cond[1]) > 1e-3


def test_animatediff_from_unet2d_and_adapter(animatediff):
    sd, adapter_dir, _, motion, _ = animatediff
    vm = load_video_model(sd, motion_adapter=adapter_dir)
    assert vm.kind == "animatediff" and type(vm.unet).__name__ == "UNetMotionModel"
    x, t, ctx = inputs(f=4)
    per_frame = ctx.repeat_interleave(4, dim=0)       # AnimateDiffPipeline: one prompt copy per frame
    out, ref = vm.denoiser(x, t, ctx), motion(x, t, encoder_hidden_states=per_frame).sample
    assert out.shape == x.shape and ref.abs().mean() > 1e-2
    assert maxabs(out, ref) <= 1e-6
    # the motion modules act: changing the last frame changes the first frame's output
    x2 = x.clone()
    x2[:, :, -1] += 1.0
    assert maxabs(vm.denoiser(x2, t, ctx)[:, :, 0], out[:, :, 0]) > 1e-4


def test_animatediff_saved_motion_unet(animatediff):
    _, _, saved, motion, _ = animatediff
    vm = load_video_model(saved)  # unet/ holds a UNetMotionModel: detected without an adapter
    assert vm.kind == "animatediff"
    x, t, ctx = inputs(f=2)
    ref = motion(x, t, encoder_hidden_states=ctx.repeat_interleave(2, dim=0)).sample
    assert maxabs(vm.denoiser(x, t, ctx), ref) <= 1e-6
    # a bare UNet directory takes the VAE / text encoder / scheduler from sd_path
    bare = load_video_model(os.path.join(saved, "unet"), sd_path=animatediff[0])
    assert bare.kind == "animatediff" and maxabs(bare.denoiser(x, t, ctx), ref) <= 1e-6


def test_image_unet_without_adapter_is_refused(animatediff):
    sd = animatediff[0]
    with pytest.raises(ValueError, match="motion_adapter"):
        load_video_model(sd)


def test_lavie_roundtrip(lavie):
    sd, ckpt, model = lavie
    vm = load_video_model(ckpt, sd_path=sd)
    assert vm.kind == "lavie" and vm.sample_size == (40, 64) and vm.frames == 16
    # LaVie's sampler config: SD-1.4's scheduler with linear betas 1e-4..0.02
    betas = vm.scheduler.betas.double()
    assert maxabs(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)) <= 1e-7
    x, t, ctx = inputs(f=4)
    out, ref = vm.denoiser(x, t, ctx), model(x, t, ctx)
    assert out.shape == x.shape and ref.abs().mean() > 1e-2
    assert maxabs(out, ref) == 0.0
    # a raw state dict (no "ema" wrapper) loads too, and sd_path-as-model + ckpt= works
    raw = os.path.join(os.path.dirname(ckpt), "raw.pt")
    torch.save(model.state_dict(), raw)
    vm2 = load_video_model(sd, ckpt=raw, kind="lavie")
    assert maxabs(vm2.denoiser(x, t, ctx), ref) == 0.0
    # bf16 on CPU is allowed; it stays within bf16 rounding of the fp32 output
    vm_bf = load_video_model(ckpt, sd_path=sd, dtype="bf16")
    out_bf = vm_bf.denoiser(x, t, ctx)
    assert out_bf.dtype == torch.float32 and maxabs(out_bf, ref) <= 0.05 * ref.abs().max().item()


def test_guided_evaluation_through_longgen(lavie):
    """The adapter under longgen's Evaluator: one batched forward = uncond/cond rows combined."""
    from longgen.denoiser import Evaluator, Request

    sd, ckpt, _ = lavie
    vm = load_video_model(ckpt, sd_path=sd)
    cond, uncond = vm.encode_prompt("the cat", negative_prompt="an ant")
    x, _, _ = inputs(b=2, f=3)
    ev = Evaluator(vm.denoiser, cond, uncond, guidance_scale=7.5)
    eps = ev(500, [Request(x, guided=True)])[0]
    t = torch.full((2,), 500)
    e_u = vm.denoiser(x, t, uncond.expand(2, -1, -1))
    e_c = vm.denoiser(x, t, cond.expand(2, -1, -1))
    assert ev.calls == 1 and ev.rows == 4
    assert maxabs(eps, e_u + 7.5 * (e_c - e_u)) <= 1e-4
    assert maxabs(e_u, e_c) > 1e-4


def test_lavie_strict_keys(lavie, tmp_path):
    sd, _, model = lavie
    state = model.state_dict()
    drop = "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"
    missing = {k: v for k, v in state.items() if k != drop}
    fresh = LaVieUNet.from_config(fx.tiny_unet2d_config())
    with pytest.raises(ValueError, match=r"missing key .*attn_temp\.to_q\.weight"):
        load_lavie_state_dict(fresh, missing)
    bad = "mid_block.resnets.1.conv2.weight"
    misshapen = dict(state, **{bad: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"mid_block\.resnets\.1\.conv2\.weight.*\(3, 3\)"):
        load_lavie_state_dict(fresh, misshapen)
    extra = dict(state, **{"time_rel_pos_bias.relative_attention_bias.weight": torch.zeros(32, 8)})
    with pytest.raises(ValueError, match="unexpected key 'time_rel_pos_bias"):
        load_lavie_state_dict(fresh, extra)
    # through the loader: the file's problem is named
    path = str(tmp_path / "broken.pt")
    torch.save({"ema": missing}, path)
    with pytest.raises(ValueError, match=r"attn_temp\.to_q\.weight"):
        load_video_model(path, sd_path=sd)


# --------------------------------------------------------------------------- LaVie architecture


def test_lavie_spatial_path_equals_diffusers_unet2d():
    """Temporal output projections at zero: LaVie == SD's 2-D UNet per frame (diffusers' code)."""
    unet2d = fx.tiny_unet2d(7)
    model = LaVieUNet.from_config(fx.tiny_unet2d_config())
    state = inflate_unet2d_state_dict(unet2d.state_dict(), fx.perturb_(model, 8))
    for k in state:
        if "attn_temp.to_out" in k:
            state[k] = torch.zeros_like(state[k])
    load_lavie_state_dict(model, state)
    x, t, ctx = inputs(b=2, f=1)
    ref = unet2d(x[:, :, 0], t, encoder_hidden_states=ctx).sample       # (B, C, H, W)
    assert maxabs(model(x, t, ctx)[:, :, 0], ref) <= 1e-5
    # identical frames: LaVie's 5-D GroupNorm sees per-frame statistics again
    x3 = x.expand(-1, -1, 3, -1, -1).contiguous()
    out3 = model(x3, t, ctx)
    assert maxabs(out3, ref[:, :, None].expand_as(out3)) <= 1e-5
    # odd spatial size: the up path is resized to the skip connection's size (LaVie/diffusers rule)
    x_odd = torch.randn(1, 4, 1, 7, 9)
    ref_odd = unet2d(x_odd[:, :, 0], t[:1], encoder_hidden_states=ctx[:1]).sample
    assert maxabs(model(x_odd, t[:1], ctx[:1])[:, :, 0], ref_odd) <= 1e-5


def test_resnet_group_norm_spans_frames():
    """LaVie's ResnetBlock3D normalises the 5-D tensor: one mean/var per (sample, group) over F, H, W."""
    from longgen.modalities.video.lavie import ResnetBlock

    torch.manual_seed(6)
    block = fx.perturb_(ResnetBlock(32, 32, 16, groups=4, eps=1e-5), 7)
    x = torch.randn(2, 32, 3, 5, 5) * torch.arange(1.0, 4.0)[None, None, :, None, None]  # frames differ in scale
    emb = torch.randn(2, 16)
    g = x.reshape(2, 4, -1)                                    # (B, groups, 8 * F * H * W)
    xn = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).reshape_as(x)
    xn = xn * block.norm1.weight[None, :, None, None, None] + block.norm1.bias[None, :, None, None, None]
    assert maxabs(block.norm1(x), xn) <= 1e-5
    per_frame = torch.nn.functional.group_norm(x[:, :, 0], 4, block.norm1.weight, block.norm1.bias, 1e-5)
    assert maxabs(block.norm1(x)[:, :, 0], per_frame) > 1e-2   # not per-frame statistics
    # the block itself: conv(silu(norm)) + time projection, twice, plus the identity skip
    silu = torch.nn.functional.silu
    h = block.conv1(silu(xn)) + block.time_emb_proj(silu(emb))[..., None, None, None]
    h = block.conv2(silu(block.norm2(h)))
    assert maxabs(block(x, emb), x + h) <= 1e-5


def test_relative_position_buckets_by_hand():
    # LaVie: 32 buckets, max distance 32; rel = key - query. Keys before the query use buckets
    # 0..15 (exact below 8, then 8 + floor(8 * log(n/8) / log 4)); keys after add 16.
    rel = torch.tensor([0, -1, -7, -8, -15, -16, -31, -100, 1, 7, 8, 16, 200])
    want = [0, 1, 7, 8, 11, 12, 15, 15, 17, 23, 24, 28, 31]
    assert relative_position_bucket(rel).tolist() == want
    assert 8 + math.floor(8 * math.log(15 / 8) / math.log(4)) == 11


def test_rotary_equals_complex_rotation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 48, generator=g)                 # (N, heads, F, d), d > 32
    rot = RotaryEmbedding(32)
    assert maxabs(rot.freqs, torch.tensor([10000 ** (-2 * i / 32) for i in range(16)])) <= 1e-7
    y = apply_rotary(x, rotary_angles(rot.freqs, 5))
    pairs = torch.view_as_complex(x[..., :32].reshape(2, 3, 5, 16, 2).contiguous())
    phase = torch.polar(torch.ones(5, 16), torch.arange(5.0)[:, None] * rot.freqs[None])
    ref = torch.view_as_real(pairs * phase).reshape(2, 3, 5, 32)
    assert maxabs(y[..., :32], ref) <= 1e-5
    assert torch.equal(y[..., 32:], x[..., 32:])


def test_temporal_attention_against_reference():
    torch.manual_seed(2)
    dim, heads, frames = 64, 2, 5
    attn = fx.perturb_(TemporalAttention(dim, heads, RotaryEmbedding(32)), 3, std=0.2)
    x = torch.randn(4, frames, dim)                            # (B*H*W, F, C)
    # reference: per head, rotate with complex numbers, add the bias table looked up by hand
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    table = attn.time_rel_pos_bias.relative_attention_bias.weight   # (32, heads)
    phase = torch.polar(torch.ones(frames, 16), torch.arange(float(frames))[:, None] * attn.rotary_emb.freqs[None])
    outs = []
    for h in range(heads):
        sl = slice(h * 32, (h + 1) * 32)
        qh = torch.view_as_real(torch.view_as_complex(q[..., sl].reshape(4, frames, 16, 2).contiguous()) * phase)
        kh = torch.view_as_real(torch.view_as_complex(k[..., sl].reshape(4, frames, 16, 2).contiguous()) * phase)
        scores = torch.einsum("nid,njd->nij", qh.reshape(4, frames, 32), kh.reshape(4, frames, 32)) / math.sqrt(32)
        for i in range(frames):
            for j in range(frames):
                d = i - j   # query - key; keys after the query (d < 0) use the upper half
                bucket = d if d >= 0 else 16 + (-d)
                scores[:, i, j] += table[bucket, h]
        outs.append(scores.softmax(-1) @ v[..., sl])
    ref = attn.to_out[0](torch.cat(outs, dim=-1))
    assert maxabs(attn(x), ref) <= 1e-5


def test_lavie_sd14_key_listing():
    from diffusers import UNet2DConditionModel

    keys = lavie_state_dict_keys(SD14_UNET)
    temporal = {k: v for k, v in keys.items() if is_temporal_key(k)}
    assert len(keys) == 830 and len(temporal) == 16 * 9   # 686 SD-1.4 keys + 9 per transformer block
    with torch.device("meta"):
        sd = UNet2DConditionModel(**SD14_UNET)
    spatial = {k: v for k, v in keys.items() if not is_temporal_key(k)}
    assert spatial == {k: tuple(v.shape) for k, v in sd.state_dict().items()}
    tb = "down_blocks.0.attentions.0.transformer_blocks.0."
    hand = {  # 320 channels, 8 heads of 40, CLIP-L 768, GEGLU 4x
        "conv_in.weight": (320, 4, 3, 3),
        "time_embedding.linear_1.weight": (1280, 320),
        "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3),
        "down_blocks.0.attentions.0.proj_in.weight": (320, 320, 1, 1),
        "down_blocks.0.downsamplers.0.conv.weight": (320, 320, 3, 3),
        tb + "attn2.to_k.weight": (320, 768),
        tb + "ff.net.0.proj.weight": (2560, 320),
        tb + "attn_temp.to_q.weight": (320, 320),
        tb + "attn_temp.to_out.0.bias": (320,),
        tb + "attn_temp.rotary_emb.freqs": (16,),
        tb + "attn_temp.time_rel_pos_bias.relative_attention_bias.weight": (32, 8),
        tb + "norm_temp.weight": (320,),
        "mid_block.attentions.0.transformer_blocks.0.attn_temp.to_v.weight": (1280, 1280),
        "up_blocks.3.resnets.0.conv1.weight": (320, 640 + 320, 3, 3),   # up path 640 + skip 320
        "up_blocks.3.resnets.2.conv1.weight": (320, 320 + 320, 3, 3),   # + conv_in skip 320
        "up_blocks.3.attentions.2.transformer_blocks.0.attn_temp.to_k.weight": (320, 320),
        "up_blocks.0.upsamplers.0.conv.weight": (1280, 1280, 3, 3),
        "conv_out.weight": (4, 320, 3, 3),
    }
    for k, shape in hand.items():
        assert keys[k] == shape, k


# --------------------------------------------------------------------------- VAE frames


def test_decode_in_chunks_equals_all_at_once(modelscope):
    root, parts = modelscope
    vm = load_video_model(root)
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(2, 4, 5, 6, 6, generator=g)              # (B, C, F, H, W)
    whole = vm.decode_frames(lat, chunk=10)
    chunked = vm.decode_frames(lat, chunk=3)
    assert whole.shape == (2, 5, 3, 12, 12)
    assert maxabs(chunked, whole) <= 1e-5
    # frame (b, f) is the image VAE's decoding of latent (b, :, f)
    one = parts["vae"].decode(lat[1, :, 3][None] / parts["vae"].config.scaling_factor).sample.clamp(-1, 1)
    assert maxabs(whole[1, 3], one[0]) <= 1e-5
    frames = torch.rand(1, 3, 3, 12, 12, generator=g) * 2 - 1
    z = vm.encode_frames(frames, chunk=2)
    assert z.shape == (1, 4, 3, 6, 6)
    ref = parts["vae"].encode(frames[0, 2][None]).latent_dist.mode() * parts["vae"].config.scaling_factor
    assert maxabs(z[0, :, 2], ref[0]) <= 1e-5


# --------------------------------------------------------------------------- errors


def test_loader_errors(modelscope, tmp_path):
    root, _ = modelscope
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_video_model(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a diffusers checkpoint"):
        load_video_model(str(empty))
    with pytest.raises(ValueError, match="fp16"):
        load_video_model(root, dtype="fp16", device="cpu")
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        load_video_model(root, dtype="fp64")
    with pytest.raises(ValueError, match="unknown kind 'svd'"):
        load_video_model(root, kind="svd")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_video_model(str(tmp_path / "missing.pt"), kind="lavie", sd_path=root)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_video_model(str(junk), sd_path=root)
