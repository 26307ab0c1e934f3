"""2-D canvases: a grid of windows sampled band by band (longgen.grid), through the engine, the CLI
(builtin prior and tiny SD, 2048 x 1536 from 512-px windows) and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from longgen.builtin import image_prior
from longgen.cli import build_parser, discover, main
from longgen.engine import EngineConfig
from longgen.grid import GridEngine, GridPlan
from longgen.modalities.glue import builtin_scheduler
from longgen.modalities.image.jobs import canvas_forwards, canvas_plan
from longgen.planner import plan_loop, plan_windows
from longgen.priors import PriorDenoiser
from longgen.stitch import tiled_decode
from tests.fixtures.tiny_sd import tiny_sd_path  # noqa: F401  (pytest fixture)


def _grid(H=40, L=40, W=16, s=12, loop=False) -> GridPlan:
    return GridPlan(plan_windows(H, W, s), plan_loop(L, W, s) if loop else plan_windows(L, W, s))


def _engine(grid: GridPlan, **kw) -> GridEngine:
    sch = builtin_scheduler()
    den = PriorDenoiser.for_scheduler(image_prior(height=grid.rows.window, width=grid.cols.window), sch)
    return GridEngine(den, sch, grid, 4, EngineConfig(**kw))


def _rows(chunks, grid: GridPlan) -> torch.Tensor:
    out = torch.full((4, grid.rows.length, grid.cols.length), float("nan"))
    for c in chunks:
        out[:, c.start:c.stop] = c.latent
    return out


def test_canvas_plan_is_a_grid_when_taller_than_the_window():
    plan = canvas_plan(2048, 1536, 512, 384, 8)
    assert isinstance(plan, GridPlan) and len(plan) == 20
    assert [w.start for w in plan.rows.windows] == [0, 48, 96, 128]   # the last band at the bottom
    assert [w.start for w in plan.cols.windows] == [0, 48, 96, 144, 192]
    assert not isinstance(canvas_plan(2048, 512, 512, 384, 8), GridPlan)   # 1-D as before
    assert not isinstance(canvas_plan(2048, 256, 512, 384, 8), GridPlan)
    # 2-D forwards: every band but the first has no lone first window (it observes the band above)
    assert canvas_forwards("alm", 10, plan) == 10 * (2 * 20 - 1)
    assert canvas_forwards("alm-fused", 10, plan) == 10 * 20


@pytest.mark.parametrize("loop", [False, True])
def test_replace_windows_observe_the_rows_above_and_the_columns_left(loop):
    """``replace`` pastes the observed region as X_0: every band's top rows are exactly the
    finished rows of the band above (an L-shaped observed region with the left overlap), and under
    ``paste`` the canvas keeps them; every row comes out exactly once, none missing."""
    grid = _grid(loop=loop)
    eng = _engine(grid, method="replace", blend="paste", steps=4, seed=1)
    seen = []   # (band, window start, latent) of every window put on a band's canvas
    make = eng._make_band

    def spy(r):
        band = make(r)
        add = band.canvas.add

        def record(start, latent):
            seen.append((r, start, latent.clone()))
            add(start, latent)

        band.canvas.add = record
        return band

    eng._make_band = spy
    chunks = list(eng)
    out = _rows(chunks, grid)
    assert not torch.isnan(out).any()
    assert sum(c.stop - c.start for c in chunks) == grid.rows.length
    L = grid.cols.length
    for r, start, lat in seen:
        row = grid.rows.windows[r]
        if r == 0:
            continue
        t = row.new_from
        cols = torch.arange(start, start + grid.cols.window) % L
        assert torch.equal(lat[:, :t], out[:, row.start:row.start + t][..., cols])   # the rows above


@pytest.mark.parametrize("observed", ["trajectory", "noise"])
def test_grid_engine_resumes_bit_identically(observed):
    grid = _grid(H=28, L=28)
    ref = _rows(list(_engine(grid, steps=4, observed=observed, seed=3)), grid)
    n = len(list(_engine(grid, steps=4, observed=observed, seed=3)))
    for cut in range(1, n):
        eng = _engine(grid, steps=4, observed=observed, seed=3)
        it = iter(eng)
        first = [next(it) for _ in range(cut)]
        state = eng.state_dict()
        eng2 = _engine(grid, steps=4, observed=observed, seed=3)
        eng2.load_state_dict(state)
        out = _rows(first + list(eng2), grid)
        assert torch.equal(out, ref), (observed, cut)
    assert eng2.next_window == len(grid)


def test_the_recorded_rows_above_cover_every_column():
    """The trajectory a band hands to the next: every column of its shared rows at every step."""
    grid = _grid()
    eng = _engine(grid, steps=3, seed=0)
    it = iter(eng)
    while eng.band == 0:
        next(it)
    assert len(eng.top_traj) == 3
    for x in eng.top_traj:
        assert x.shape == (4, grid.rows.windows[1].new_from, grid.cols.length)
        assert (x.abs().sum(dim=(0, 1)) > 0).all()


def test_circular_tiled_decode_continues_across_the_ends():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, 3, generator=g, dtype=torch.float64)
    z = torch.randn(1, 30, generator=g, dtype=torch.float64)

    def dec(x):
        return torch.nn.functional.conv1d(x[None], k, padding=1)[0]

    whole = torch.nn.functional.conv1d(torch.nn.functional.pad(z[None], (1, 1), mode="circular"), k)[0]
    assert torch.equal(tiled_decode(dec, z, -1, tile=7, halo=1, circular=True), whole)
    assert torch.equal(tiled_decode(dec, z, -1, tile=7, halo=1), dec(z))


def _png(p) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"))


def test_builtin_2048x1536_through_the_cli_resumes(tmp_path, capsys, monkeypatch):
    import longgen.run as run_mod

    args = ["panorama", "--width", "2048", "--height", "1536", "--steps", "3", "--no-progress"]
    ref = tmp_path / "g.png"
    assert main([*args, "--out", str(ref)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["windows"] == 20 and Image.open(ref).size == (2048, 1536)
    assert info["forwards"] == canvas_forwards("alm", 3, canvas_plan(2048, 1536, 512, 384, 8))

    class Stop(Exception):
        pass

    real, saves = run_mod._save_state, []

    def save(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 7:   # band 1, after its first window
            raise Stop

    out = tmp_path / "cut.png"
    monkeypatch.setattr(run_mod, "_save_state", save)
    parsed = build_parser(discover()).parse_args([*args, "--out", str(out)])
    with pytest.raises(Stop):
        run_mod.run_job(discover()["panorama"].build_job(parsed))
    monkeypatch.setattr(run_mod, "_save_state", real)
    assert list((tmp_path / "cut.png.longgen").glob("band_*.png"))   # band 0's rows are on disk
    assert main([*args, "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    assert out.read_bytes() == ref.read_bytes()


def test_tiny_sd_2048x1536_from_512px_windows(tiny_sd_path, tmp_path, capsys):  # noqa: F811
    """The tiny SD UNet run on 64-latent windows (it is convolutional), 2 steps: the CLI's PNG and
    its UNet forwards counted by a hook; on its own 128-px windows (512 x 384: 4 bands x 5
    windows) the Python API's pixels equal the CLI's."""
    from longgen.modalities.image.jobs import panorama

    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: calls.append(1) if type(m).__name__ == "UNet2DConditionModel" else None)
    try:
        out = tmp_path / "sd.png"
        rc = main(["panorama", "--model", str(tiny_sd_path), "--width", "2048", "--height", "1536",
                   "--window", "512", "--steps", "2", "--prompt", "a photo of a cat", "--out", str(out),
                   "--no-progress"])
        assert rc == 0
    finally:
        handle.remove()
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["windows"] == 20 and Image.open(out).size == (2048, 1536)
    assert len(calls) == info["unet_forwards"] == 2 * (2 * 20 - 1)
    small = tmp_path / "small.png"
    assert main(["panorama", "--model", str(tiny_sd_path), "--width", "512", "--height", "384", "--steps", "2",
                 "--prompt", "a photo of a cat", "--out", str(small), "--no-progress"]) == 0
    capsys.readouterr()
    img = panorama(str(tiny_sd_path), "a photo of a cat", 512, 384, steps=2, seed=0)
    assert np.array_equal(np.asarray(img), _png(small))


def test_loop_on_a_2d_canvas_wraps_every_band(tmp_path, capsys):
    """--loop with --height above the window: every band is a loop and the band decode wraps, so
    the right edge continues into the left edge over the whole height (without --loop the same
    edge joins two unrelated ends)."""
    from longgen.stitch import seam_score

    scores = {}
    for loop in (True, False):
        out = tmp_path / f"{loop}.png"
        argv = ["panorama", "--width", "1024", "--height", "768", "--steps", "4", "--out", str(out), "--no-progress"]
        assert main(argv + (["--loop"] if loop else [])) == 0
        a = torch.tensor(_png(out), dtype=torch.float64).permute(2, 0, 1)
        assert a.shape == (3, 768, 1024)
        scores[loop] = seam_score(torch.roll(a, 512, dims=-1), [512], -1)
    capsys.readouterr()
    assert scores[True] < 3 and scores[False] > 100 * scores[True], scores
