"""Run a job: engine chunks -> streaming decoder -> writer, with a resume manifest after each group.

The work directory ``<out>.longgen/`` holds ``state.pt`` (authoritative, written atomically with
``os.replace`` after every group: the request, the engine's canvas tail and observed-source state,
the decoder's pending latents and the writer's position) and a readable ``manifest.json`` copy.
A writer's partial output stays readable while the run goes on; on ``--resume`` the writer first
drops anything written after the last saved state, so the finished files are byte-identical to an
uninterrupted run's. The work directory is removed once the final files are in place.

Resume verifies. Every finished part a writer has put on disk (a PNG strip, the frames of an mp4
segment, rows of a ``.npy``) is recorded in the writer's state with its sha256; on ``--resume``
the writer checks each one before it touches anything, and a part that is missing or differs
refuses the resume with one line naming the file (:class:`DamagedPart`). Such a part cannot be
re-derived (the state keeps only the unfinished tail of the canvas), so the remedy is to start
again. A ``state.pt`` that does not load (empty, truncated, not a longgen state) is refused the
same way, naming the folder to remove.

One run per output: the run holds an exclusive ``flock`` on ``<out>.longgen/lock`` (which also
records its pid) from start to end; a second run on the same output is refused while the first
holds it. The operating system drops the lock when its process ends, however it ends, so the
lock file a killed run leaves behind never blocks a later run or its ``--resume``.

Before anything is sampled the output path is checked: not a directory, its folder exists and
takes a probe file (a read-only or full file system is refused up front). A write that fails later
(a disk that fills up during the run) stops the run with the finished part and the last state
kept, so ``--resume`` continues once there is room.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

STATE_VERSION = 2  # 2: writers record the sha256 of every finished part


class DamagedPart(ValueError):
    """A finished part on disk does not match the digest saved in the resume state."""


class RunStopped(ValueError):
    """Writing failed part way (e.g. a full disk); the last saved state is kept for --resume."""


class Writer(Protocol):
    """Streams decoded media to disk. ``state()`` is JSON-able; ``open(work, state)`` starts fresh
    (state None) or continues from a saved state: it first verifies the finished parts the state
    lists (raising :class:`DamagedPart`), then discards anything written after that state."""

    def open(self, work: Path, state: dict | None) -> None: ...
    def write(self, media) -> None: ...
    def state(self) -> dict: ...
    def close(self) -> list[Path]: ...


@dataclass
class Job:
    engine: Any                   # longgen.engine.Engine
    decoder: Any                  # stitch.StreamingDecoder (latent chunk -> media chunk)
    writer: Writer
    request: dict                 # everything that defines the output (JSON-able)
    out: Path
    info: dict = field(default_factory=dict)


def work_dir(out: Path) -> Path:
    out = Path(out)
    return out.parent / (out.name + ".longgen")


# ---------------------------------------------------------------------------- digests of parts


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, offset: int = 0, size: int | None = None) -> str | None:
    """sha256 of ``size`` bytes of ``path`` from ``offset`` (all to the end when None); None when
    the file is missing or shorter than asked."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            left = size
            while left is None or left > 0:
                block = f.read(1 << 20 if left is None else min(left, 1 << 20))
                if not block:
                    break
                h.update(block)
                if left is not None:
                    left -= len(block)
    except FileNotFoundError:
        return None
    if left:
        return None
    return h.hexdigest()


def verify_part(path: Path, digest: str, *, offset: int = 0, size: int | None = None,
                what: str = "finished part") -> None:
    """Raise :class:`DamagedPart` unless the bytes of ``path`` hash to ``digest``."""
    got = sha256_file(path, offset, size)
    if got == digest:
        return
    how = "is missing" if not Path(path).exists() else (
        "is shorter than when it was written" if got is None else "was changed after it was written")
    where = "" if (offset == 0 and size is None) else f" (bytes {offset}..{offset + (size or 0)})"
    raise DamagedPart(f"--resume: the {what} {path}{where} {how} (its sha256 differs from the one in "
                      "the resume state) and cannot be re-derived")


def resume_parts(work: Path, prefix: str, suffix: str, digests: list[str], what: str) -> None:
    """Numbered parts ``work/{prefix}_NNNNN{suffix}`` of a writer: verify the first
    ``len(digests)`` against their sha256 (before anything is touched, so a refused resume
    changes nothing), then remove the parts written after the saved state."""
    for k, digest in enumerate(digests):
        verify_part(work / f"{prefix}_{k:05d}{suffix}", digest, what=what)
    for p in work.glob(f"{prefix}_*{suffix}"):
        if int(p.name[len(prefix) + 1:len(p.name) - len(suffix)]) >= len(digests):
            p.unlink()


def write_part(path: Path, data: bytes) -> str:
    """Write a finished part atomically; its sha256, for the resume state."""
    atomic_write(path, data)
    return sha256_bytes(data)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; on any failure the
    temporary file is removed and ``path`` keeps its old content."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- output path, lock


def _remedy(work: Path) -> str:
    return f"remove {work} and run again without --resume (or pass --overwrite to replace the output)"


def lock_holder(work: Path) -> int | None:
    """The pid recorded in ``work/lock`` when a live run holds that lock, else None."""
    path = Path(work) / "lock"
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            return int(os.pread(fd, 32, 0).split()[0])
        except (ValueError, IndexError, OSError):
            return -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire_lock(work: Path, out: Path) -> tuple[int, bool] | None:
    """Hold an exclusive flock on ``work/lock`` (with our pid in it); (fd, whether the file was
    created), for :func:`release_lock`."""
    try:
        import fcntl
    except ImportError:
        return None
    path = work / "lock"
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise ValueError(_busy(out, pid, path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, created


def release_lock(lock: tuple[int, bool] | None, path: Path, *, started: bool) -> None:
    """Drop the lock; a lock file this run created is removed too when the run was refused before
    it wrote anything (so a refused command leaves the folder as it found it)."""
    if lock is None:
        return
    fd, created = lock
    if created and not started:
        path.unlink(missing_ok=True)
    os.close(fd)  # closing the only descriptor drops the flock


def _busy(out: Path, pid, path: Path) -> str:
    return (f"{out} is being written by another longgen run (pid {pid}, lock {path}); wait for it "
            "to finish or stop it, or choose another --out")


def check_writable(folder: Path) -> None:
    """Create, write and remove a probe file in ``folder``: permissions alone say nothing for root,
    and a full or read-only file system only shows when something is written."""
    probe = Path(folder) / f".longgen-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"longgen")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write in {folder} ({e.strerror or e}); free space there, make it "
                         "writable, or choose another --out") from None


def check_output_path(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse, before anything is loaded or sampled, an output that cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the path of the file to write "
                         f"(e.g. {out / ('out' + (out.suffix or ''))})")
    if not out.parent.exists():
        raise ValueError(f"output directory {out.parent} does not exist; create it first")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} is a file, not a directory")
    work = work_dir(out)
    if work.exists() and not work.is_dir():
        raise ValueError(f"{work} is in the way (longgen keeps its resume state there); remove it")
    holder = lock_holder(work)
    if holder is not None:
        raise ValueError(_busy(out, holder, work / "lock"))
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
    check_writable(work if work.is_dir() else out.parent)
    return out


# ---------------------------------------------------------------------------- state


def load_state(work: Path) -> dict:
    """``state.pt`` of ``work``, checked: one clear error naming what to remove when it is damaged."""
    import torch

    path = work / "state.pt"
    try:
        state = torch.load(path, weights_only=True)
        manifest = json.loads(state["manifest"])
        writer = json.loads(state["writer"])
        state["engine"], state["decoder"]  # noqa: B018  (present)
    except Exception as e:  # empty, truncated, garbage, or not ours: torch raises several types
        text = " ".join(str(e).split()).split(". ")[0][:100]
        reason = "the file is empty" if path.stat().st_size == 0 else (
            f"{type(e).__name__}: {text}" if text and text != type(e).__name__ else type(e).__name__)
        raise ValueError(f"--resume: the resume state {path} is damaged and cannot be read "
                         f"({reason}); {_remedy(work)}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != STATE_VERSION or not isinstance(writer, dict):
        raise ValueError(f"--resume: the resume state {path} is of another longgen version "
                         f"({manifest.get('version') if isinstance(manifest, dict) else '?'}, this one "
                         f"writes {STATE_VERSION}); {_remedy(work)}")
    state["manifest"], state["writer"] = manifest, writer
    return state


def _diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k)]


def run_job(job: Job, *, resume: bool = False, overwrite: bool = False, progress=None) -> list[Path]:
    """Run ``job`` to the end (or continue it); returns the final output paths."""
    out = check_output_path(job.out, resume=resume, overwrite=overwrite)
    work = work_dir(out)
    request = json.loads(json.dumps(job.request))  # normalise (tuples -> lists)
    lock, started = None, False
    try:
        if resume:
            lock = acquire_lock(work, out)
            state = load_state(work)
            saved = state["manifest"]
            if saved.get("request") != request:
                diff = _diff(saved.get("request", {}), request)
                raise ValueError(f"the manifest in {work} is from a different request (differs in: "
                                 f"{', '.join(diff)}); run with the same arguments, or remove {work}")
            try:
                job.engine.load_state_dict(state["engine"])
                job.decoder.load_state_dict(state["decoder"])
            except (KeyError, TypeError, AttributeError, IndexError, RuntimeError, ValueError) as e:
                raise ValueError(f"--resume: the resume state {work / 'state.pt'} does not fit this job "
                                 f"({type(e).__name__}: {e}); {_remedy(work)}") from None
            try:
                job.writer.open(work, state["writer"])
            except DamagedPart as e:
                raise DamagedPart(f"{e}; {_remedy(work)}") from None
            for p in work.glob("*.tmp*"):  # half-written temporaries of the interrupted run
                p.unlink()
        else:
            work.mkdir(exist_ok=True)
            lock = acquire_lock(work, out)
            job.writer.open(work, None)
        started = True

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
    except OSError as e:
        raise RunStopped(_stopped(e, out, work)) from e
    finally:
        release_lock(lock, work / "lock", started=started)
    shutil.rmtree(work, ignore_errors=True)
    return paths


def _stopped(e: OSError, out: Path, work: Path) -> str:
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    full = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    if (work / "state.pt").exists():
        return (f"writing {out} failed{full}: {what}{where}; the finished part and the resume state are "
                f"kept in {work}: fix that and continue with --resume")
    return f"writing {out} failed{full}: {what}{where}; nothing was finished yet: fix that and run again"


def _save_state(work: Path, job: Job, request: dict, windows_done: int) -> None:
    import io

    import torch

    writer = job.writer.state()
    manifest = {"version": STATE_VERSION, "request": request, "windows_done": windows_done,
                "windows_total": len(job.engine.plan), "writer": writer}
    state = {"manifest": json.dumps(manifest), "engine": job.engine.state_dict(),
             "decoder": job.decoder.state_dict(), "writer": json.dumps(writer)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(work / "state.pt", buf.getvalue())
    atomic_write(work / "manifest.json", json.dumps(manifest, indent=1).encode())
