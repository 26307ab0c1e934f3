"""One long panorama pipelined across torchrun ranks against one process, on this machine's CPUs.

Runs the same request three ways, each as its own command:

* ``1x1``: one process with one thread (``OMP_NUM_THREADS=1``), the reference for the bytes;
* ``1x2``: one process with two threads (torch's intra-op parallelism: the peer on 2 cores);
* ``2x1``: ``torchrun --nproc-per-node 2``, one thread per rank, windows pipelined.

Both the command's wall time and the ``seconds`` it reports (sampling, decoding and writing,
without the start-up: imports and model load) are kept. The speed-up is 1x1 over 2x1. Also the bytes
sent (all ranks), the bytes of one step's strip, and the pipeline's overhead: the pipelined run's
seconds minus the ideal (the 1x1 seconds / P), in steps of the 1x1 run (the fill/drain is P - 1
steps when every step costs the same). Figures on a shared 2-core VM move by about 10 % from run to
run; ``--repeats`` runs everything again and keeps each configuration's best. Prints JSON::

    python benchmarks/pipeline_speed.py [--model builtin|tiny-sd] [--windows 16] [--steps 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(cmd: list, threads: int) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{res.stderr[-3000:]}")
    return wall, json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("builtin", "tiny-sd"), default="builtin")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="longgen-pipe-"))
    if a.model == "builtin":   # 512 px windows (64 latents) at a 384 px stride
        model, window, stride, height = "builtin", 512, 384, 512
    else:                       # the tiny SD: 128 px windows (16 latents) at a 96 px stride
        from tests.fixtures.tiny_sd import make_tiny_sd

        model, window, stride, height = str(make_tiny_sd(tmp / "tiny_sd")), 128, 96, 128
    width = window + (a.windows - 1) * stride
    base = [sys.executable, "-m", "longgen", "panorama", "--model", model, "--width", str(width),
            "--height", str(height), "--steps", str(a.steps), "--prompt", "sunset", "--no-progress",
            "--observed", "trajectory"]   # the observed source that pipelines (and its seams)
    configs = (("1x1", 1, []), ("1x2", 2, []),
               (f"{a.ranks}x1", 1, ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.ranks}"]))
    runs: dict[str, dict] = {}
    outputs: dict[str, bytes] = {}
    for _ in range(a.repeats):   # interleaved, so a slow spell of the machine hits every configuration
        for name, threads, launcher in configs:
            out = tmp / f"{name}.png"
            out.unlink(missing_ok=True)
            cmd = base if not launcher else [sys.executable, *launcher, *base[1:]]
            wall, info = _run([*cmd, "--out", str(out)], threads)
            r = runs.setdefault(name, {"wall_s": [], "seconds": [], "windows": info["windows"],
                                       "forwards": info["forwards"]})
            r["wall_s"].append(round(wall, 2))
            r["seconds"].append(info["seconds"])
            if "pipeline" in info:
                r["pipeline"] = info["pipeline"]
            outputs.setdefault(name, out.read_bytes())
    P = a.ranks
    best = {name: (min(r["wall_s"]), min(r["seconds"])) for name, r in runs.items()}
    one, two, two_name = best["1x1"], best[f"{P}x1"], f"{P}x1"
    per_step = one[1] / (runs["1x1"]["windows"] * a.steps)
    pipe = runs[two_name]["pipeline"]
    result = {
        "model": a.model, "width": width, "height": height, "windows": runs["1x1"]["windows"], "steps": a.steps,
        "ranks": P, "repeats": a.repeats, "runs": runs,
        "identical_to_1x1": outputs["1x1"] == outputs[two_name],
        "speedup_seconds": round(one[1] / two[1], 3),
        "speedup_wall": round(one[0] / two[0], 3),
        "speedup_vs_1x2_seconds": round(best["1x2"][1] / two[1], 3),
        "bytes_sent": pipe["bytes_sent"],
        "bytes_per_window_step": pipe["strip_bytes_per_step"],
        "overhead_s": round(two[1] - one[1] / P, 3),
        "overhead_steps": round((two[1] - one[1] / P) / per_step, 1),
        "fill_drain_steps_ideal": P - 1,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
