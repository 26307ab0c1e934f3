"""Issue 15's bar on the builtin image prior: with the CLI's default settings (ALM, observed
``matched``, w1 = 2, blend ``auto`` = paste at 50 steps) the seam score at the window
boundaries of a 2048 x 512 panorama is at most 1.2 over seeds 0-3.

benchmarks/seams.py (6 seeds, 24 boundaries) measured 1.10 [1.03, 1.16] for these settings, 1.28
for MultiDiffusion, 1.55 for the previous default (trajectory, feathered, w1 = 1) and 8.2 for the
released merge (trajectory, pasted); the last is checked here too, so the bar can fail."""

from __future__ import annotations

import pytest
import torch

from longgen.cli import build_parser, discover
from longgen.stitch.seams import seam_score


def _seams(extra: list[str], seeds=range(4)) -> list[float]:
    plugins = discover()
    out = []
    for seed in seeds:
        args = build_parser(plugins).parse_args(["panorama", "--width", "2048", "--height", "512",
                                                 "--seed", str(seed), "--out", "unused.png", *extra])
        job = plugins["panorama"].build_job(args)
        latent = torch.cat([c.latent for c in job.engine], dim=-1)
        wins = job.engine.plan.windows
        out += [seam_score(latent, [a.stop], -1) for a in wins[:-1]]
    return out


def test_default_settings_meet_1p2_and_the_released_merge_does_not():
    default = _seams([])
    assert sum(default) / len(default) <= 1.2, default
    released = _seams(["--observed", "trajectory", "--blend", "paste", "--w1", "1"], seeds=range(2))
    assert sum(released) / len(released) > 3, released


def _video_seams(seeds, **options) -> torch.Tensor:
    """(seeds, 11) seam scores at the boundaries of the CLI's default video (104 frames, 128 px)."""
    from longgen.modalities.video import video
    from longgen.planner import plan_windows

    bounds = [w.stop for w in plan_windows(104, 16, 8).windows[:-1]]
    return torch.tensor([[seam_score(x, [b], -3) for b in bounds]
                         for x in (video("builtin", seed=s, output_type="latent", **options) for s in seeds)])


@pytest.mark.slow
def test_default_video_meets_1p2_at_every_boundary():
    """The same bar along time for the CLI's default video: over seeds 0-7 the mean seam score at
    each of its 11 window boundaries is at most 1.2 (measured: worst boundary 1.10, all 1.03
    +- 0.05; samples of the exact 104-frame field: worst 1.17, all 0.98); the released merge
    (trajectory, pasted, w1 = 1) fails it."""
    per_boundary = _video_seams(range(8)).mean(0)
    assert float(per_boundary.max()) <= 1.2, per_boundary
    released = _video_seams(range(2), observed="trajectory", blend="paste", w1=1.0)
    assert float(released.mean()) > 2, released
