"""``longgen`` command line: one subcommand per modality plugin found through the
``longgen.modalities`` entry-point group (the core never imports ``modalities/``).

A plugin is a class with ``name``, ``help``, ``defaults`` (values for the common options),
``add_arguments(parser)`` and ``build_job(args) -> longgen.run.Job``. A plugin module imports its
heavy libraries (torch, diffusers, av) inside ``build_job``, so ``longgen --help`` stays fast.

Every fault ends the command with one line ``longgen <cmd>: error: ...`` on stderr and exit
status 2, before anything is sampled where it can be known then (output path, inputs, model
files); Ctrl-C ends it with ``longgen <cmd>: interrupted; continue with --resume`` and status 130.
Set ``LONGGEN_TRACEBACK=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from .constants import METHODS  # not .samplers: `longgen --help` must not import torch

GROUP = "longgen.modalities"
COMMON_DEFAULTS = dict(model="builtin", seed=0, steps=50, method="alm", w1=1.0, w2=0.001,
                       observed="trajectory", group=1, live="batched", given_path="invert",
                       guidance=None, blend="paste", dtype="fp32", device="cpu")
NOT_IN_REQUEST = {"resume", "overwrite", "no_progress", "func"}


def discover() -> dict:
    """name -> plugin instance, for every entry point in the ``longgen.modalities`` group."""
    found = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            found[ep.name] = ep.load()()
        except Exception as e:  # a broken plugin: one line, and the other commands still work
            if os.environ.get("LONGGEN_TRACEBACK"):
                raise
            print(f"longgen: error: the plugin {ep.name!r} ({ep.value}) does not load, its command is "
                  f"left out: {_one_line(e)}", file=sys.stderr)
    return found


def add_common(p: argparse.ArgumentParser, defaults: dict) -> None:
    d = {**COMMON_DEFAULTS, **defaults}
    g = p.add_argument_group("sampling and output (common to all modalities)")
    g.add_argument("--model", default=d["model"], help="'builtin' (exact analytic prior, no download) "
                   "or a checkpoint: local directory or hub id (default: %(default)s)")
    g.add_argument("--out", type=Path, required=True, help="output file")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--steps", type=int, default=d["steps"], help="sampling steps (default: %(default)s)")
    g.add_argument("--method", choices=METHODS, default=d["method"])
    g.add_argument("--w1", type=float, default=d["w1"], help="ALM sync / likelihood weight (default: %(default)s)")
    g.add_argument("--w2", type=float, default=d["w2"], help="ALM joint-likelihood weight (default: %(default)s)")
    g.add_argument("--observed", choices=("trajectory", "matched", "invert", "noise"), default=d["observed"],
                   help="where the first window of a group takes its observed overlap from (default: %(default)s)")
    g.add_argument("--group", type=int, default=d["group"],
                   help="windows sampled together in one batch, 0 = all (default: %(default)s)")
    g.add_argument("--live", choices=("batched", "chained"), default=d["live"],
                   help="order inside a group: batched, or chained = the released order (default: %(default)s)")
    g.add_argument("--given-path", choices=("invert", "matched", "noise"), default=d["given_path"],
                   help="X_t of user-given content: DDIM inversion, the content with the window's own noise estimate (matched), or fresh noise (default: "
                        + ("%(default)s)" if d["given_path"] else "the model's: invert for checkpoints, as released; matched builtin)"))
    g.add_argument("--guidance", type=float, default=d["guidance"], help="classifier-free guidance scale")
    g.add_argument("--blend", choices=("auto", "paste", "feather", "average"), default=d["blend"],
                   help="how window overlaps are merged on the canvas; auto = paste with --observed matched "
                        "and 20 steps or more, else feather (default: %(default)s)")
    g.add_argument("--dtype", default=d["dtype"], help="fp32 | fp16 | bf16 (default: %(default)s)")
    g.add_argument("--device", default=d["device"])
    g.add_argument("--resume", action="store_true", help="continue an interrupted run of the same request (its finished parts are "
                   "verified against their sha256 first)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def request_of(args: argparse.Namespace) -> dict:
    """The arguments that define the output, JSON-able (for the resume manifest)."""
    req = {}
    for k, v in sorted(vars(args).items()):
        if k in NOT_IN_REQUEST:
            continue
        req[k] = str(v) if isinstance(v, Path) else v
    return req


def build_parser(plugins: dict) -> argparse.ArgumentParser:
    names = ", ".join(plugins) or "none (is the package installed? pip install -e .)"
    parser = argparse.ArgumentParser(
        prog="longgen",
        description="Long and wide generation with pretrained diffusion models: overlapping windows "
                    "sampled with ALM, streamed to disk, resumable.",
        epilog=f"modalities found (entry-point group {GROUP}): {names}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join([*plugins, "batch"]) + "}")
    for name, plugin in plugins.items():
        p = sub.add_parser(name, help=plugin.help, description=plugin.help)
        plugin.add_arguments(p)
        add_common(p, getattr(plugin, "defaults", {}))
    from . import batch

    batch.add_parser(sub)
    return parser


def _one_line(e: BaseException) -> str:
    """An exception as one line, with the file it concerns when it is an OSError."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    else:
        text = str(e) or type(e).__name__
        if not isinstance(e, (ValueError, FileNotFoundError)):
            text = f"{type(e).__name__}: {text}"
    return " ".join(text.split())


def main(argv=None) -> int:
    plugins = discover()
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "batch":
        from . import batch

        return batch.main(args, plugins, parser)
    from .run import check_output_path, run_job, work_dir

    plugin = plugins[args.command]
    from .distributed import world

    if world()[1] > 1:  # under torchrun with several ranks: one output, its windows pipelined
        from . import pipeline

        return pipeline.main(args, plugin, argv)
    try:
        # the output is checked before a model is loaded or a window sampled
        check_output_path(args.out, resume=args.resume, overwrite=args.overwrite)
        job = plugin.build_job(args)
        progress = None
        if not args.no_progress:
            from tqdm.auto import tqdm
            progress = tqdm
        t0 = time.perf_counter()
        paths = run_job(job, resume=args.resume, overwrite=args.overwrite, progress=progress)
        seconds = round(time.perf_counter() - t0, 3)
    except KeyboardInterrupt:
        if (work_dir(args.out) / "state.pt").exists():
            print(f"\nlonggen {args.command}: interrupted; continue with --resume", file=sys.stderr)
        else:
            print(f"\nlonggen {args.command}: interrupted before a window was finished; nothing to "
                  "resume, run the command again", file=sys.stderr)
        return 130
    except Exception as e:  # every fault is one line, never a traceback
        if os.environ.get("LONGGEN_TRACEBACK"):
            raise
        print(f"longgen {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps({"outputs": [str(p) for p in paths], "windows": len(job.engine.plan),
                      "forwards": job.engine.forwards, **job.info, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
