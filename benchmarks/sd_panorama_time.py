"""Time a 2048x512-equivalent panorama (5 windows at 3/4 stride) on random SD-shaped models.

Two models built from config (no download), both with the tiny fixture's VAE and text encoders
(tests/fixtures/tiny_sd.py):

* ``tiny``: UNet ``block_out_channels=(32, 64)``, 16-latent (128 px) window -> 512x128 panorama;
* ``mid``:  UNet ``block_out_channels=(128, 256, 512)``, ``sample_size=64`` (512 px window, as
  SD 1.5 / 2.1-base) -> a real 2048x512 panorama.

For each it reports wall seconds (sampling, decoding), seconds per sampling step (all windows),
the extrapolation to 50 steps, and UNet forwards / batch rows per step counted by a forward
pre-hook. The peer, in the same run, is diffusers' ``StableDiffusionPanoramaPipeline``
(MultiDiffusion: 64-latent views at stride 8, averaged) with the same ``mid`` components at
2048x512, timed over ``--peer-steps`` steps (it decodes the whole canvas in one VAE call).

Prints one JSON object. Usage::

    OMP_NUM_THREADS=1 python benchmarks/sd_panorama_time.py [--steps-tiny 5] [--steps-mid 3]
        [--peer-steps 1] [--no-peer] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longgen.modalities.image.sd import SDModel  # noqa: E402
from longgen.modalities.image.jobs import panorama, unet_forwards  # noqa: E402
from tests.fixtures.tiny_sd import tiny_sd_components  # noqa: E402

PROMPT = "a wide mountain lake panorama"


class UNetRows:
    """Batch rows of every UNet forward (global forward pre-hook)."""

    def __enter__(self):
        self.rows: list[int] = []

        def hook(module, args):
            if type(module).__name__ == "UNet2DConditionModel":
                self.rows.append(int(args[0].shape[0]))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def build(channels: tuple[int, ...], sample_size: int) -> SDModel:
    with tempfile.TemporaryDirectory() as d:
        parts = tiny_sd_components(d, block_out_channels=channels)
    parts["unet"].register_to_config(sample_size=sample_size)  # the native window
    return SDModel.from_components(**parts)


def time_ours(sd: SDModel, steps: int, method: str = "alm") -> dict:
    window = sd.image_size
    width, height = 4 * window, window  # 5 windows at a 3/4 stride, as 2048x512 for SD 1.5
    decode_s = [0.0]
    inner = sd.vae_decode

    def timed_decode(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        decode_s[0] += time.perf_counter() - t
        return out

    sd.vae_decode = timed_decode
    try:
        with UNetRows() as calls:
            t0 = time.perf_counter()
            img = panorama(sd, PROMPT, width, height, steps=steps, method=method, seed=0)
            total = time.perf_counter() - t0
    finally:
        del sd.vae_decode
    assert img.size == (width, height)
    sample_s = total - decode_s[0]
    return {
        "size": [width, height], "window_px": window, "windows": 5, "method": method,
        "steps": steps, "total_s": round(total, 3), "decode_s": round(decode_s[0], 3),
        "sample_s_per_step": round(sample_s / steps, 3),
        "est_50_steps_s": round(sample_s / steps * 50 + decode_s[0], 1),
        "unet_forwards": len(calls.rows),
        "unet_forwards_claimed": unet_forwards(method, steps, 5, 1),
        "unet_forwards_per_step": len(calls.rows) / steps,
        "unet_rows_per_step": sum(calls.rows) / steps,
    }


def time_peer(sd: SDModel, steps: int) -> dict:
    from diffusers import StableDiffusionPanoramaPipeline

    pipe = StableDiffusionPanoramaPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with UNetRows() as calls:
        t0 = time.perf_counter()
        out = pipe(PROMPT, height=512, width=2048, num_inference_steps=steps, guidance_scale=7.5,
                   output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
        total = time.perf_counter() - t0
    assert out.shape == (512, 2048, 3)
    return {"peer": "diffusers StableDiffusionPanoramaPipeline (MultiDiffusion, view_batch_size=1)",
            "steps": steps, "total_s": round(total, 3),
            "unet_forwards_per_step": len(calls.rows) / steps,
            "unet_rows_per_step": sum(calls.rows) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-tiny", type=int, default=5)
    ap.add_argument("--steps-mid", type=int, default=3)
    ap.add_argument("--peer-steps", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"device": "cpu", "threads": a.threads, "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__}
    tiny = build((32, 64), 16)
    time_ours(tiny, 1)  # warm-up
    res["tiny"] = time_ours(tiny, a.steps_tiny)
    res["tiny_fused"] = time_ours(tiny, a.steps_tiny, "alm-fused")
    mid = build((128, 256, 512), 64)
    res["mid"] = time_ours(mid, a.steps_mid)
    if not a.no_peer:
        res["mid_peer"] = time_peer(mid, a.peer_steps)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
