"""``longgen batch REQUESTS.jsonl --out-dir DIR``: many outputs, in one process or across the
ranks of ``torchrun`` (``torch.distributed``: gloo on CPU, NCCL on GPUs, several nodes through
torchrun's rendezvous).

Requests. One JSON object per line, a command and its options: ``{"command": "panorama",
"prompt": "a lake", "width": 4096, "seed": 3, "out": "a.png"}``. Keys are the command's long
options (``-`` or ``_``); ``true`` gives a flag, ``false`` its ``--no-`` form or nothing; a list
repeats an option (``"lora": ["a.safetensors", "b.safetensors:0.5"]``). A relative ``out`` is
resolved against ``--out-dir``. Blank lines and lines starting with ``#`` are skipped. Every line
is checked with the command's own parser before any work starts, and two requests may not write
the same output; a bad line is reported with its line number and nothing is run.

Sharing the work. Request i belongs to rank ``i % world_size`` -- a static split, so a rank that
torchrun restarts (``--max-restarts``) takes the same requests again, and no request is run by two
ranks. A rank skips a request whose output is finished (the file exists and no resume state is
left beside it), continues one that was interrupted (``--resume`` from its ``<out>.longgen/``
state, byte-identical to an uninterrupted run), and runs the rest, each exactly as ``longgen
<command>`` would. Each rank uses its local GPU (``LOCAL_RANK``) when there is one and the
request names no ``device``, the CPU otherwise.

Reporting. One JSON line per request on stdout (rank, line, status, seconds, outputs). Every
rank appends its records to ``DIR/.longgen-batch/rank_R.jsonl`` (kept across restarts); once all
ranks are done (a barrier), rank 0 writes ``DIR/summary.json``: per request its line, command,
outputs, status (``done``, ``resumed`` -- continued from an interrupted attempt --, ``skipped``
-- finished before this launch --, or ``failed`` with the error), the seconds of all its attempts
and ``completions`` (how many attempts finished it: 1 for every request of a healthy batch).
The exit status is 0 when every request finished, 1 when some failed, 2 for a bad requests file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .distributed import init_distributed, rank_device, world

RESERVED = {"resume": "the batch resumes interrupted requests itself",
            "overwrite": "the batch never replaces a finished output"}


class BadRequests(ValueError):
    """The requests file cannot be run as it is (one line naming the file, line and problem)."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help="many outputs from a JSON-lines file, in one process or across "
                                     "torchrun ranks", description=__doc__.split("\n\n")[0])
    p.add_argument("requests", type=Path, help="JSON lines: {\"command\": ..., options..., \"out\": ...}")
    p.add_argument("--out-dir", type=Path, required=True, help="where relative outputs and summary.json go")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------------------- requests


def _argv(req: dict, parser: argparse.ArgumentParser) -> list[str]:
    flags = {s for a in parser._actions for s in a.option_strings}
    argv = []
    for key, value in req.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif "--no-" + flag[2:] in flags:
                argv.append("--no-" + flag[2:])
            continue
        for v in (value if isinstance(value, list) else [value]):
            argv += [flag, v if isinstance(v, str) else json.dumps(v)]
    return argv


def _parse(plugins: dict, parser: argparse.ArgumentParser, req: Any, out_dir: Path) -> argparse.Namespace:
    if not isinstance(req, dict):
        raise ValueError(f"a request is a JSON object, got {type(req).__name__}")
    req = dict(req)
    command = req.pop("command", None)
    if command not in plugins:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(plugins)}")
    for key, why in RESERVED.items():
        if key in req:
            raise ValueError(f"{key!r} is not a request option ({why})")
    if not isinstance(req.get("out"), str) or not req["out"]:
        raise ValueError("every request needs \"out\": the output file")
    out = Path(req["out"]).expanduser()
    req["out"] = str(out if out.is_absolute() else out_dir / out)
    sub = parser._subparsers._group_actions[0].choices[command]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args([command, *_argv(req, sub)])
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        raise ValueError(lines[-1].split("error: ", 1)[-1] if lines else "the options do not parse") from None
    return args


def read_requests(path: Path, out_dir: Path, plugins: dict, parser) -> list[tuple[int, dict, argparse.Namespace]]:
    """(line number, request, parsed arguments) of every request, all checked first."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadRequests(f"cannot read {path}: {e.strerror or e}") from None
    out, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            req = json.loads(line)
            args = _parse(plugins, parser, req, out_dir)
        except (json.JSONDecodeError, ValueError) as e:
            raise BadRequests(f"{path} line {n}: {' '.join(str(e).split())}") from None
        key = str(Path(args.out).resolve())
        if key in seen:
            raise BadRequests(f"{path} line {n}: out {args.out} is also the output of line {seen[key]}; "
                              "every request needs its own")
        seen[key] = n
        out.append((n, req, args))
    if not out:
        raise BadRequests(f"{path} holds no requests")
    return out


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- running


def _state_of(out: Path) -> str:
    from .run import work_dir

    work = work_dir(out)
    if (work / "state.pt").exists():
        return "interrupted"
    if out.exists():
        return "finished"
    return "new"


def run_one(plugin, args, progress) -> list[Path]:
    from .run import check_output_path, run_job

    resume = _state_of(Path(args.out)) == "interrupted"
    args.resume = resume
    check_output_path(args.out, resume=resume, overwrite=False)
    job = plugin.build_job(args)
    return run_job(job, resume=resume, overwrite=False, progress=progress)


def main(args, plugins: dict, parser) -> int:
    from .cli import _one_line

    try:
        return _main(args, plugins, parser)
    except KeyboardInterrupt:
        print("\nlonggen batch: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as e:  # one line, never a traceback
        if os.environ.get("LONGGEN_TRACEBACK"):
            raise
        print(f"longgen batch: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _main(args, plugins: dict, parser) -> int:
    from .cli import _one_line

    out_dir = Path(args.out_dir)
    rank, size, local_rank = world()
    try:
        requests = read_requests(args.requests, out_dir, plugins, parser)
        out_dir.mkdir(parents=True, exist_ok=True)
        for _, _, a in requests:
            parent = Path(a.out).parent
            if not parent.is_dir():
                parent.mkdir(parents=True, exist_ok=True)
    except (BadRequests, OSError) as e:
        print(f"longgen batch: error: {_one_line(e)}", file=sys.stderr)
        return 2
    dist = init_distributed(size, local_rank, "longgen-batch")
    log_dir = out_dir / ".longgen-batch"
    log_dir.mkdir(exist_ok=True)
    log = log_dir / f"rank_{rank}.jsonl"
    progress = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        progress = tqdm
    failed = 0
    for i, (n, req, a) in enumerate(requests):
        if i % size != rank:
            continue
        state = _state_of(Path(a.out))
        rec = {"index": i, "line": n, "command": req["command"], "rank": rank, "out": str(a.out)}
        if state == "finished":
            rec.update(status="skipped", seconds=0.0, outputs=[str(a.out)])
        else:
            if "device" not in req and a.model != "builtin":  # the builtin priors run on the CPU
                a.device = rank_device(local_rank)
            t0 = time.perf_counter()
            _append(log, {**rec, "status": "started"})
            try:
                paths = run_one(plugins[req["command"]], a, progress)
                rec.update(status="resumed" if state == "interrupted" else "done", outputs=[str(p) for p in paths])
            except Exception as e:  # one request's fault is its record, the batch goes on
                if os.environ.get("LONGGEN_TRACEBACK"):
                    raise
                failed += 1
                rec.update(status="failed", error=_one_line(e), outputs=[])
            rec["seconds"] = round(time.perf_counter() - t0, 3)
        _append(log, rec)
        print(json.dumps(rec), flush=True)
    if dist is not None:
        dist.barrier()
    if rank == 0:
        write_summary(out_dir, requests, size)
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    return 1 if failed else 0


def write_summary(out_dir: Path, requests: list, size: int) -> dict:
    """Merge every rank's records (all attempts) into ``out_dir/summary.json``."""
    from .run import atomic_write

    records: dict[int, list[dict]] = {}
    for f in sorted((out_dir / ".longgen-batch").glob("rank_*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:   # a line cut by a killed process
                continue
            records.setdefault(int(r["index"]), []).append(r)
    entries = []
    for i, (n, req, a) in enumerate(requests):
        rs = [r for r in records.get(i, []) if r["status"] != "started"]
        finished = [r for r in rs if r["status"] in ("done", "resumed")]
        last = finished[-1] if finished else (rs[-1] if rs else {"status": "not run", "outputs": []})
        status = last["status"]
        if status == "skipped" and not finished:
            status = "skipped"
        entries.append({"line": n, "request": req, "out": str(a.out), "rank": i % size,
                        "status": status, "outputs": last.get("outputs", []),
                        "seconds": round(sum(r.get("seconds", 0.0) for r in rs), 3),
                        "completions": len(finished),
                        "attempts": sum(1 for r in records.get(i, []) if r["status"] == "started"),
                        **({"error": last["error"]} if "error" in last else {})})
    summary = {"requests": len(requests), "world_size": size, "entries": entries}
    atomic_write(out_dir / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary
