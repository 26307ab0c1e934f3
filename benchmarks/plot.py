"""The headline figure of the benchmarks: ``benchmarks/results/headline.png``.

Panels: (a) panorama sampling wall time of each variant as a ratio to diffusers' MultiDiffusion
(``panorama_speed_{tiny,mid}.json``; the dashed line is the 0.5x target); (b) distance of the
generated region's sample mean to the exact conditional mean, (c) how often the generated half
is in the observed half's mixture component, (d) seam score of windowed runs (log scale; 1 = no
trace), each with its 95% CI (``quality.json``). Missing JSON files leave their panels empty.

Prints the command lines that made each JSON (for the README) and a one-line summary::

    python benchmarks/plot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

COMMANDS = {
    "panorama_speed_tiny.json": "python benchmarks/panorama_speed.py --config tiny --steps 10 --repeats 3",
    "panorama_speed_mid.json": "python benchmarks/panorama_speed.py --config mid --steps 2 --repeats 1 --no-warmup",
    "quality.json": "python benchmarks/quality.py --seeds 256",
    "memory_sd.json": "python benchmarks/memory_sd.py --steps 5",
    "headline.png": "python benchmarks/plot.py",
}


def load(name: str):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def _err(rows):
    """[value, lo, hi] rows -> values and matplotlib's (2, n) error bars."""
    v = [r[0] for r in rows]
    return v, [[r[0] - r[1] for r in rows], [r[2] - r[0] for r in rows]]


def speed_panel(ax, speeds: dict) -> None:
    names = None
    for k, (cfg, res) in enumerate(speeds.items()):
        if res is None:
            continue
        if names is None:
            names = [n for n in res["variants"] if n != "md_diffusers"]
        vals = [res["variants"][n]["ratio_to_md"] if n in res["variants"] else 0 for n in names]
        x = [i + 0.4 * k for i in range(len(names))]
        ax.barh(x, vals, height=0.4, label=f"{cfg} ({res['size_px'][0]}x{res['size_px'][1]}, "
                                              f"{res['steps']} steps)")
    if names:
        ax.set_yticks([i + 0.2 for i in range(len(names))], names, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(0.5, color="r", ls="--", lw=0.8, label="target 0.5x")
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    ax.set_xlabel("wall time / MultiDiffusion (diffusers)")
    ax.set_title("(a) panorama sampling time", fontsize=9)


def quality_panel(ax, q: dict, section: str, metric: str, title: str, log: bool = False) -> None:
    if q is None:
        return
    kinds = [k for k in ("gauss", "mixture") if k in q[section]
             and metric in next(iter(q[section][k]["methods"].values()))]
    methods = list(q[section][kinds[0]]["methods"]) if kinds else []
    for k, kind in enumerate(kinds):
        rows = [q[section][kind]["methods"][m][metric] for m in methods]
        v, e = _err(rows)
        ax.bar([i + 0.4 * k for i in range(len(methods))], v, width=0.4, yerr=e, capsize=2,
               label=kind)
    ax.set_xticks([i + 0.2 * (len(kinds) - 1) for i in range(len(methods))], methods, rotation=45, ha="right",
                  fontsize=7)
    if log:
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = {"tiny": load("panorama_speed_tiny.json"), "mid": load("panorama_speed_mid.json")}
    q = load("quality.json")
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    speed_panel(axes[0, 0], speeds)
    quality_panel(axes[0, 1], q, "single", "mean_dist",
                  f"(b) |sample mean - exact conditional mean| (RMS), {q['seeds'] if q else '?'} seeds")
    quality_panel(axes[1, 0], q, "single", "match_gen",
                  "(c) generated half in the observed component (mixture)")
    quality_panel(axes[1, 1], q, "windowed", "seam", "(d) seam score of windowed runs (1 = none)",
                  log=True)
    fig.tight_layout()
    out = RESULTS / "headline.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    for name, cmd in COMMANDS.items():
        print(f"{name}: OMP_NUM_THREADS=1 {cmd}")


if __name__ == "__main__":
    sys.exit(main())
