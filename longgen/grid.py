"""2-D canvases: windows along both axes, sampled row of windows by row of windows (raster order).

A canvas taller than the model's window is cut into row bands (a plan along the height, latent
rows, the last band aligned to the bottom) and each band into windows along the width (the 1-D
plan). A band is an ordinary :class:`~longgen.engine.Engine` run along the width, so inside a
band everything is as in a panorama: each window observes its left neighbour's overlap (live or
``observed``), ALM, the canvas merge. What a band adds is the band above: its bottom rows (those
the two bands share) are given content for the new band, ``known`` on the top ``t`` rows of every
window. Each window therefore observes an L-shaped region -- the rows above and the columns on
its left -- and generates the rest; where the two meet (the top-left corner) the band above wins.

Where the top rows' X_t comes from follows ``observed``: ``trajectory`` (default) gives the new
band the per-step latents the band above had in those rows, recorded while it was sampled (each
window records the columns it generated, as the canvas's paste keeps them), so the rows above
are observed exactly as a left neighbour is; ``matched``, ``invert`` and ``noise`` use the
finished rows with the engine's ``given_path`` of the same name (the rows with the window's own
noise estimate, DDIM inversion of the window's given content, or fresh q(X_t | X_0)).

Merging bands: the shared rows take the engine's ``blend`` -- ``paste`` keeps the band above,
``feather`` ramps from it to the new band down the overlap, ``average`` takes their mean. Rows
above the next band's top are final once a band is done and leave as one :class:`Chunk` of
latent rows across the whole width (between windows, empty chunks mark resume points). Memory:
one band of latents, the band above's shared rows, and its recorded trajectory there
(``steps * C * overlap * width``) -- never the whole canvas.

Randomness: initial noise is keyed by column, one draw for the canvas's full height per column,
so vertically overlapping windows share their noise where they overlap as horizontal neighbours
do; each band's step noise has its own seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch

from longgen.stitch.canvas import feather_ramp

from .engine import Chunk, Engine, EngineConfig, Given, NoiseField
from .planner import Plan, Window


@dataclass
class GridPlan:
    """Row bands (``rows``, along the height) times windows along the width (``cols``)."""

    rows: Plan
    cols: Plan

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def loop(self) -> bool:
        return self.cols.loop

    def to_dict(self) -> dict:
        return {"rows": self.rows.to_dict(), "cols": self.cols.to_dict()}


def _band_seed(seed: int, band: int) -> int:
    return (seed * 1_000_003 + 7_919 * (band + 1)) % (2**62)


class GridEngine:
    """Iterate for :class:`Chunk` s of finished latent rows ``(C, n, width)``; ``state_dict``
    after any chunk resumes from there. ``window_cond(band, window)`` gives each window its
    (cond, uncond); ``latents`` ``(C, height, width)``: the whole canvas's initial noise."""

    axis = -2  # chunks are rows

    def __init__(self, denoiser, scheduler, grid: GridPlan, channels: int, config: EngineConfig, *,
                 window_cond: Callable[[int, Window], tuple[Any, Any]] | None = None,
                 cond: Any = None, uncond: Any = None, dtype=torch.float32, device="cpu",
                 progress=None, latents: torch.Tensor | None = None):
        self.den, self.sch_source, self.grid, self.cfg = denoiser, scheduler, grid, config.validate()
        self.C, self.Hw, self.Ww = channels, grid.rows.window, grid.cols.window
        self.H, self.L = grid.rows.length, grid.cols.length
        self.window_cond, self.cond, self.uncond = window_cond, cond, uncond
        self.dtype, self.device, self.progress = dtype, device, progress
        if latents is not None and tuple(latents.shape) != (channels, self.H, self.L):
            raise ValueError(f"latents has shape {tuple(latents.shape)}; the initial noise of this "
                             f"canvas must be {(channels, self.H, self.L)}")
        self.latents = latents
        self.columns = NoiseField(config.seed, (channels, self.H, self.Ww), -1, dtype, device)
        self.band = 0
        self.engine: Engine | None = None
        self.buf: torch.Tensor | None = None           # the current band (C, Hw, width)
        self.held: torch.Tensor | None = None          # the band above's shared rows (C, t, width)
        self.top_traj: list[torch.Tensor] | None = None  # ... and their latents per step
        self.cur_traj: list[torch.Tensor] | None = None  # the current band's, being recorded
        self.rows_done = 0
        self.windows_before = 0    # windows of the finished bands
        self.done_forwards = 0

    # ------------------------------------------------------------------ facts
    @property
    def plan(self) -> GridPlan:
        return self.grid

    @property
    def next_window(self) -> int:
        return self.windows_before + (self.engine.next_window if self.engine is not None else 0)

    @property
    def forwards(self) -> int:
        return self.done_forwards + (self.engine.forwards if self.engine is not None else 0)

    def _overlaps(self, r: int) -> tuple[int, int]:
        """(rows band r shares with the band above, rows it shares with the band below)."""
        rows = self.grid.rows.windows
        return rows[r].new_from, (rows[r + 1].new_from if r + 1 < len(rows) else 0)

    # ------------------------------------------------------------------ one band
    def _columns(self, w: Window) -> torch.Tensor:
        return torch.arange(w.start, w.stop) % self.L

    def _make_band(self, r: int) -> Engine:
        row = self.grid.rows.windows[r]
        t, b = self._overlaps(r)
        top, y0 = t if r > 0 else 0, row.start
        cfg = replace(self.cfg, seed=_band_seed(self.cfg.seed, r),
                      given_path={"noise": "noise", "matched": "matched"}.get(self.cfg.observed, "invert"))
        given = None
        if top:
            values = torch.zeros((self.C, self.Hw, self.L), dtype=self.dtype, device=self.device)
            values[:, :top] = self.held
            known = torch.zeros((1, self.Hw, 1), dtype=self.dtype, device=self.device)
            known[:, :top] = 1
            given = Given(values=values, known=known,
                          xt=self._top_xt(top) if self.cfg.observed == "trajectory" else None)

        if self.latents is not None:
            lat = self.latents

            def noise(start: int, stop: int) -> torch.Tensor:
                return lat[:, y0:y0 + self.Hw, start:stop].to(device=self.device, dtype=self.dtype)
        else:
            def noise(start: int, stop: int) -> torch.Tensor:
                return self.columns(start, stop)[:, y0:y0 + self.Hw]

        on_step = None
        if b and self.cfg.observed == "trajectory":
            if self.cur_traj is None:
                self.cur_traj = [torch.zeros((self.C, b, self.L), dtype=self.dtype, device=self.device)
                                 for _ in range(self.cfg.steps)]
            on_step = self._recorder(b)

        window_cond = None
        if self.window_cond is not None:
            window_cond = lambda w: self.window_cond(r, w)  # noqa: E731
        return Engine(self.den, self.sch_source, self.grid.cols, (self.C, self.Hw, self.Ww), -1, cfg,
                      cond=self.cond, uncond=self.uncond, window_cond=window_cond, given=given,
                      dtype=self.dtype, device=self.device, progress=self.progress, noise=noise,
                      on_step=on_step)

    def _top_xt(self, top: int) -> Callable[[int, Window], torch.Tensor]:
        """X_t of a window's top rows at step i: the band above's latents there at that step."""
        traj = self.top_traj

        def xt(i: int, w: Window) -> torch.Tensor:
            x = torch.zeros((self.C, self.Hw, self.Ww), dtype=self.dtype, device=self.device)
            x[:, :top] = traj[i].index_select(-1, self._columns(w).to(traj[i].device))
            return x
        return xt

    def _recorder(self, b: int) -> Callable[[list[Window], int, torch.Tensor], None]:
        """Record, before each step, the bottom ``b`` rows of the columns each window generates
        (paste's rule: earlier windows keep theirs), for the band below."""
        def on_step(group: list[Window], i: int, y: torch.Tensor) -> None:
            for k, w in enumerate(group):
                cols = self._columns(w)[w.new_from:w.new_to].to(y.device)
                self.cur_traj[i][..., cols] = y[k][:, self.Hw - b:, w.new_from:w.new_to]
        return on_step

    def _merge_top(self, band: torch.Tensor, t: int) -> torch.Tensor:
        """The rows this band shares with the band above, merged by the engine's blend."""
        if t == 0 or self.held is None:
            return band
        old, new = self.held, band[:, :t]
        if self.cfg.blend == "paste":
            band[:, :t] = old
        elif self.cfg.blend == "feather":
            a = feather_ramp(t, None, band.dtype).to(band.device)[:, None]  # (t, 1): the new band's weight
            band[:, :t] = torch.lerp(old, new, a)
        else:
            band[:, :t] = (old + new) / 2
        return band

    # ------------------------------------------------------------------ main loop
    def __iter__(self) -> Iterator[Chunk]:
        rows, ncols = self.grid.rows, len(self.grid.cols)
        while self.band < len(rows):
            r = self.band
            if self.engine is None:
                self.engine = self._make_band(r)
                self.buf = torch.zeros((self.C, self.Hw, self.L), dtype=self.dtype, device=self.device)
            elif self.progress is not None:
                self.engine.progress = self.progress
            empty = self.buf[:, :0]
            for chunk in self.engine:
                self.buf[..., chunk.start:chunk.stop] = chunk.latent
                yield Chunk(self.rows_done, self.rows_done, empty, self.windows_before + chunk.windows_done)
            t, b = self._overlaps(r)
            band = self._merge_top(self.buf, t if r > 0 else 0)
            out = band[:, :self.Hw - b].clone()
            start = rows.windows[r].start
            self.held = band[:, self.Hw - b:].clone() if b else None
            self.top_traj, self.cur_traj = self.cur_traj, None
            self.done_forwards += self.engine.forwards
            self.engine, self.buf = None, None
            self.band += 1
            self.windows_before += ncols
            self.rows_done = start + out.shape[1]
            yield Chunk(start, self.rows_done, out, self.windows_before)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        d = {"band": self.band, "rows_done": self.rows_done, "windows_before": self.windows_before,
             "done_forwards": self.done_forwards}
        if self.engine is not None:
            d["engine"] = self.engine.state_dict()
            d["buf"] = self.buf
        if self.held is not None:
            d["held"] = self.held
        if self.top_traj is not None:
            d["top_traj"] = torch.stack(self.top_traj)
        if self.cur_traj is not None:
            d["cur_traj"] = torch.stack(self.cur_traj)
        return d

    def load_state_dict(self, d: dict) -> None:
        self.band, self.rows_done = int(d["band"]), int(d["rows_done"])
        self.windows_before, self.done_forwards = int(d["windows_before"]), int(d["done_forwards"])
        self.held = d.get("held")
        top, cur = d.get("top_traj"), d.get("cur_traj")
        self.top_traj = list(top.unbind(0)) if top is not None else None
        self.cur_traj = list(cur.unbind(0)) if cur is not None else None
        self.engine = self.buf = None
        if "engine" in d:
            self.engine = self._make_band(self.band)
            self.engine.load_state_dict(d["engine"])
            self.buf = d["buf"].clone()
