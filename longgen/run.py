"""Run a job: engine chunks -> streaming decoder -> writer, with a resume manifest after each group.

The work directory ``<out>.longgen/`` holds ``state.pt`` (authoritative, written atomically with
``os.replace`` after every group: the request, the engine's canvas tail and observed-source state,
the decoder's pending latents and the writer's position) and a readable ``manifest.json`` copy.
A writer's partial output stays readable while the run goes on; on ``--resume`` the writer first
drops anything written after the last saved state, so the finished files are byte-identical to an
uninterrupted run's. The work directory is removed once the final files are in place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .engine import Engine

STATE_VERSION = 1


class Writer(Protocol):
    """Streams decoded media to disk. ``state()`` is JSON-able; ``open(work, state)`` starts fresh
    (state None) or continues from a saved state, discarding anything written after it."""

    def open(self, work: Path, state: dict | None) -> None: ...
    def write(self, media: torch.Tensor) -> None: ...
    def state(self) -> dict: ...
    def close(self) -> list[Path]: ...


@dataclass
class Job:
    engine: Engine
    decoder: Any                  # stitch.StreamingDecoder (latent chunk -> media chunk)
    writer: Writer
    request: dict                 # everything that defines the output (JSON-able)
    out: Path
    info: dict = field(default_factory=dict)


def work_dir(out: Path) -> Path:
    return out.parent / (out.name + ".longgen")


def _atomic_write_bytes(path: Path, save) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


def _diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k)]


def check_output_path(out: Path, *, resume: bool, overwrite: bool) -> Path:
    out = Path(out)
    if not out.parent.exists():
        raise ValueError(f"output directory {out.parent} does not exist; create it first")
    work = work_dir(out)
    if resume:
        if not (work / "state.pt").exists():
            raise ValueError(f"--resume: no manifest for {out} (expected {work / 'state.pt'}); "
                             "there is no interrupted run to continue")
    else:
        if (work / "state.pt").exists():
            raise ValueError(f"an interrupted run of {out} can be continued ({work}); pass --resume "
                             "to continue it, or remove that directory to start again")
        if out.exists() and not overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it")
    return out


def run_job(job: Job, *, resume: bool = False, overwrite: bool = False, progress=None) -> list[Path]:
    """Run ``job`` to the end (or continue it); returns the final output paths."""
    out = check_output_path(job.out, resume=resume, overwrite=overwrite)
    work = work_dir(out)
    request = json.loads(json.dumps(job.request))  # normalise (tuples -> lists)
    if resume:
        state = torch.load(work / "state.pt", weights_only=True)
        saved = json.loads(state["manifest"])
        if saved.get("request") != request:
            diff = _diff(saved.get("request", {}), request)
            raise ValueError(f"the manifest in {work} is from a different request (differs in: "
                             f"{', '.join(diff)}); run with the same arguments, or remove {work}")
        job.engine.load_state_dict(state["engine"])
        job.decoder.load_state_dict(state["decoder"])
        job.writer.open(work, json.loads(state["writer"]))
    else:
        work.mkdir(exist_ok=True)
        job.writer.open(work, None)

    total = len(job.engine.plan)
    if progress is not None:
        job.engine.progress = progress  # per-step bars inside each group
    bar = progress(total=total, initial=job.engine.next_window, desc="windows") if progress else None
    for chunk in job.engine:
        media = job.decoder.push(chunk.latent)
        if media is not None:
            job.writer.write(media)
        _save_state(work, job, request, chunk.windows_done)
        if bar is not None:
            bar.update(chunk.windows_done - bar.n)
    if bar is not None:
        bar.close()
    tail = job.decoder.flush()
    if tail is not None:
        job.writer.write(tail)
    paths = job.writer.close()
    shutil.rmtree(work, ignore_errors=True)
    return paths


def _save_state(work: Path, job: Job, request: dict, windows_done: int) -> None:
    manifest = {"version": STATE_VERSION, "request": request, "windows_done": windows_done,
                "windows_total": len(job.engine.plan), "writer": job.writer.state()}
    state = {"manifest": json.dumps(manifest), "engine": job.engine.state_dict(),
             "decoder": job.decoder.state_dict(), "writer": json.dumps(job.writer.state())}
    _atomic_write_bytes(work / "state.pt", lambda p: torch.save(state, p))
    _atomic_write_bytes(work / "manifest.json",
                        lambda p: p.write_text(json.dumps(manifest, indent=1)))
