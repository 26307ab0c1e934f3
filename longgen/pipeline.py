"""One long output pipelined across the ranks of torchrun: ``torchrun --nproc-per-node P -m longgen
panorama ...`` (the same for video and motion; ``python -m longgen`` is ``longgen``).

Why it can be pipelined. With one window per batch (``--group 1``) and ``--observed trajectory``,
window k observes at step i only its left neighbour's latent at step i: the overlap strip the
neighbour records before its own step i. So window k can take step i as soon as window k-1 has
begun it, and P consecutive windows are sampled at once, each at most a step behind the one on its
left. Window k runs on rank ``(k - k0) % P``, where k0 is the first window of this launch (0, or
the window a resumed run continues from). Plain DDIM/DDPM windows observe nothing and run
independently.

What travels, point to point, always through gloo on the CPU (also when the ranks compute on GPUs;
a strip is kilobytes, and its device-to-host copy is small next to one forward of a real model).
gloo gets a tag for each window and kind of message, and gloo's sends are asynchronous. NCCL
would match point-to-point messages by their order on a stream instead of by tag, and this
pipeline sends both ways between rank 0 and its neighbours, which NCCL could deadlock on.

* every step, owner(k) -> owner(k+1): the overlap strip window k+1 observes (the window shape,
  with the long axis as long as the overlap). This is the only traffic per step;
* loops: rank 0 -> owner(L-1), the first window's strips at the positions the closing window
  wraps onto, one per step. They are interleaved with the left strips when rank 0 also owns
  window L-2, and sent in one burst otherwise;
* ``replace`` (it pastes the neighbours' finished latents): once a window's steps are done, the
  finished window goes to the next owner (and, on a loop, the first window goes to the closing
  window's owner);
* once window k is finished, owner(k) -> rank 0: the window and its strips (rank 0 needs the
  strips for the resume state).

Rank 0 samples its own windows, puts every finished window onto the canvas in plan order, and
streams the chunks through the decoder and the writer as one process does. The state it saves
after each window is exactly one process's state, so an interrupted run resumes at that window
boundary, pipelined with any P or in one process. Each window's arithmetic is the single run's on
the same inputs (tensors cross the wire bit for bit). So the output is byte-identical to one
process that uses the same number of CPU threads (torchrun sets OMP_NUM_THREADS=1 in each worker).

Under torchrun's elastic agent (``--max-restarts``), a restarted attempt continues the interrupted
run from its saved state without ``--resume``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .distributed import init_distributed, rank_device, restart_count, world

LEFT, HEAD, FINAL, HEAD_FINAL, DONE, DONE_TRAJ = range(6)
KINDS = 8


def _tag(k: int, kind: int) -> int:
    return k * KINDS + kind


class Aborted(RuntimeError):
    """Rank 0 refused the run before any window was sampled (it reports why)."""


def check_args(args, size: int) -> None:
    """Refuse settings whose windows cannot overlap in time before a model is loaded."""
    if args.group != 1:
        raise ValueError(f"--group {args.group}: a run pipelined across {size} ranks samples one window "
                         "per rank at a time; pass --group 1")
    if args.method not in ("ddim", "ddpm") and args.observed != "trajectory":
        raise ValueError(f"--observed {args.observed}: a window then needs its left neighbour finished "
                         "before it starts, so ranks cannot work at once; pipelining needs --observed "
                         "trajectory")


def check_job(engine, size: int) -> None:
    """Refuse a job whose windows cannot be pipelined before any window is sampled."""
    from .engine import Engine

    if type(engine) is not Engine:
        raise ValueError("a 2-D canvas (more than one row of windows) is not pipelined across ranks; "
                         "run it in one process, or share many outputs across ranks with `longgen batch`")
    if engine.wt is not None:
        raise ValueError("each window is moved onto its finished left neighbour (motion's re-centring), so "
                         "no window can start before that neighbour ends; pass --no-recentre to pipeline "
                         "the run, or run it in one process")
    if getattr(getattr(engine, "cfg", None), "impute", "none") != "none":
        raise ValueError("--impute spline moves each window's prediction onto its left neighbour's finished "
                         "overlap, so no window can start before that neighbour ends; pass --impute none "
                         "to pipeline the run, or run it in one process")
    n = len(engine.plan)
    if n < size:
        fewer = f"use --nproc-per-node {n} or fewer" if n > 1 else "run it in one process"
        raise ValueError(f"the output has {n} window{'s' if n != 1 else ''}; a run pipelined across {size} "
                         f"ranks needs at least {size}: {fewer}, or make the output longer")


class _Stream:
    """Per-step tensors coming from another rank: ``stream[i]`` receives step i's on first use
    (steps are read in order; the latest one is kept for a second read)."""

    def __init__(self, pipe: "Pipeline", shape: tuple, src: int, tag: int):
        self.pipe, self.shape, self.src, self.tag = pipe, shape, src, tag
        self.n, self.last = 0, None

    def __getitem__(self, i: int):
        if i < self.n - 1:
            raise RuntimeError(f"internal: step {i} of a pipelined strip read after step {self.n - 1}")
        while self.n <= i:
            self.last = self.pipe.recv(self.shape, self.src, self.tag)
            self.n += 1
        return self.last

    def finish(self) -> None:
        """Receive the steps that were not read, so the next message on this pair is the next one."""
        if self.n < self.pipe.steps:
            self[self.pipe.steps - 1]


class Pipeline:
    """The windows of one engine shared by ``size`` ranks (see the module docstring). Rank 0
    iterates :meth:`lead` (the engine's chunks, as ``Engine.__iter__`` yields them); the other ranks
    call :meth:`work`."""

    def __init__(self, engine, dist, rank: int, size: int):
        import torch

        self.torch = torch
        self.eng, self.dist, self.rank, self.size = engine, dist, rank, size
        self.plan = engine.plan
        self.steps = len(engine.sch)
        method = engine.cfg.method
        self.observing = method not in ("ddim", "ddpm")
        self.replace = method == "replace"
        self.k0: int | None = None
        self.head = None            # loops: (first window's final, its wrapped strips per step)
        self.sent: list = []        # (work, tensor) of sends not known to be complete
        self.bytes_sent = 0
        self.messages = 0
        self.strip_bytes = 0        # bytes of one step's strip (the per-step traffic of a window)
        if len(self.plan) > 1:
            self.strip_bytes = self._numel(self._strip_shape(0)) * torch.empty((), dtype=engine.dtype).element_size()
        self.started = False

    # ------------------------------------------------------------------ messages
    @staticmethod
    def _numel(shape) -> int:
        n = 1
        for s in shape:
            n *= s
        return n

    def _strip_shape(self, k: int) -> tuple:
        """Shape of the strip window k hands to window k+1 (their overlap)."""
        shape = list(self.eng.shape)
        shape[self.eng.axis] = self.plan.windows[k + 1].new_from
        return tuple(shape)

    def _head_shape(self) -> tuple:
        shape = list(self.eng.shape)
        shape[self.eng.axis] = self.plan.hold
        return tuple(shape)

    def owner(self, k: int) -> int:
        return (k - self.k0) % self.size

    def send(self, t, dst: int, tag: int) -> None:
        t = t.detach().to("cpu").contiguous()   # gloo: CPU tensors (a copy from a GPU)
        self.sent.append((self.dist.isend(t, dst, tag=tag), t))
        self.bytes_sent += t.numel() * t.element_size()
        self.messages += 1
        self.sent = [(w, x) for w, x in self.sent if not w.is_completed()]

    def recv(self, shape: tuple, src: int, tag: int):
        t = self.torch.empty(shape, dtype=self.eng.dtype)
        self.dist.recv(t, src, tag=tag)
        return t.to(self.eng.device)

    def drain(self) -> None:
        for w, _ in self.sent:
            w.wait()
        self.sent = []

    def _start(self, k0: int | None) -> None:
        """Rank 0 tells every rank the first window of this launch (-1: the run was refused)."""
        t = self.torch.tensor([-1 if k0 is None else k0], dtype=self.torch.int64)
        self.dist.broadcast(t, 0)
        self.k0 = int(t.item())
        self.started = True
        if self.k0 < 0:
            raise Aborted("rank 0 refused the run")

    def abort(self) -> None:
        """Rank 0, refused before its first window: release the ranks waiting for the start."""
        if not self.started:
            self.started = True
            t = self.torch.tensor([-1], dtype=self.torch.int64)
            self.dist.broadcast(t, 0)

    # ------------------------------------------------------------------ loops
    def _head_burst(self) -> bool:
        """Whether the first window's wrapped strips go to the closing window's owner in one burst
        (rank 0 does not own window L-2, so nothing else travels on that pair)."""
        L = len(self.plan)
        return (self.plan.loop and self.observing and self.owner(L - 1) != 0
                and self.owner(L - 2) != 0)

    def _send_head(self) -> None:
        L = len(self.plan)
        final, traj = self.head
        for strip in traj:
            self.send(strip, self.owner(L - 1), _tag(L - 1, HEAD))
        if self.replace:
            self.send(final, self.owner(L - 1), _tag(L - 1, HEAD_FINAL))

    # ------------------------------------------------------------------ one window
    def _compute(self, k: int):
        """Sample window k on this rank, exchanging strips with its neighbours' ranks; its latent
        and its recorded strips (None for the last window or plain methods)."""
        eng, plan, L = self.eng, self.plan, len(self.plan)
        w = plan.windows[k]
        streams = []
        if self.observing and k > self.k0 and w.new_from > 0:
            eng.prev_traj = _Stream(self, self._strip_shape(k - 1), self.owner(k - 1), _tag(k - 1, LEFT))
            streams.append(eng.prev_traj)
        if w.wrap and self.observing:
            if self.rank == 0:
                eng.first_final, eng.first_traj = self.head
            else:
                eng.first_traj = _Stream(self, self._head_shape(), 0, _tag(L - 1, HEAD))
                streams.append(eng.first_traj)
        nxt = self.owner(k + 1) if k + 1 < L else None
        interleave = self.rank == 0 and plan.loop and self.observing and k == L - 2 and nxt != 0

        def on_strip(i, strip, head):
            self.send(strip, nxt, _tag(k, LEFT))
            if interleave:
                self.send(head if head is not None else self.head[1][i], nxt, _tag(L - 1, HEAD))

        def before_finish():
            if self.replace and k > self.k0 and w.new_from > 0:
                eng.prev_final = self.recv(eng.shape, self.owner(k - 1), _tag(k - 1, FINAL))
            if self.replace and w.wrap and self.rank != 0:
                eng.first_final = self.recv(eng.shape, 0, _tag(L - 1, HEAD_FINAL))

        eng.on_strip = on_strip if nxt is not None else None
        eng.before_finish = before_finish
        try:
            y = eng._sample_group([w], k)[0]
        finally:
            eng.on_strip = eng.before_finish = None
        for s in streams:
            s.finish()
        if k == 0 and plan.loop:
            self.head = (eng.first_final, eng.first_traj)
        if self.replace and nxt is not None:
            self.send(y, nxt, _tag(k, FINAL))
        if self.replace and interleave:
            self.send(self.head[0], nxt, _tag(L - 1, HEAD_FINAL))
        return y, eng.prev_traj

    # ------------------------------------------------------------------ rank 0
    def lead(self):
        """The engine's chunks, in plan order (rank 0)."""
        from .engine import Chunk

        eng, plan, L = self.eng, self.plan, len(self.plan)
        self._start(eng.next_window)
        if plan.loop:
            self.head = (eng.first_final, eng.first_traj)
        if self.k0 > 0 and self._head_burst():
            self._send_head()
        done = self.k0
        for k in range(self.k0, L, self.size):
            y, traj = self._compute(k)
            if k == 0 and self._head_burst():
                self._send_head()
            for j in range(done, k):
                yield from self._add(j, *self._recv_done(j))
            yield from self._add(k, y, traj)
            done = k + 1
        for j in range(done, L):
            yield from self._add(j, *self._recv_done(j))
        self.drain()
        if plan.loop and not eng.canvas.head_done:
            yield Chunk(0, plan.hold, eng.canvas.finish_head(), L)

    def _recv_done(self, j: int):
        src = self.owner(j)
        y = self.recv(self.eng.shape, src, _tag(j, DONE))
        traj = None
        if j + 1 < len(self.plan) and self.observing:
            traj = list(self.recv((self.steps, *self._strip_shape(j)), src, _tag(j, DONE_TRAJ)).unbind(0))
        return y, traj

    def _add(self, j: int, y, traj):
        """Window j onto the canvas; the engine's state becomes a single run's after window j."""
        from .engine import Chunk

        eng, plan = self.eng, self.plan
        eng.canvas.add(plan.windows[j].start, y)
        eng.next_window = j + 1
        eng.prev_final, eng.prev_traj, eng.prev_params = y.clone(), traj, None
        if plan.loop:
            closed = j == len(plan) - 1
            eng.first_final, eng.first_traj = (None, None) if closed else self.head
        upto = plan.finished_upto(j)
        start = max(eng.canvas.done, eng.canvas.hold)
        chunk = eng.canvas.finish(upto)
        if chunk is not None:
            yield Chunk(start, upto, chunk, j + 1)

    # ------------------------------------------------------------------ other ranks
    def work(self) -> None:
        """Sample this rank's windows and hand each finished one to rank 0."""
        self._start(None)
        for k in range(self.k0, len(self.plan)):
            if self.owner(k) != self.rank:
                continue
            y, traj = self._compute(k)
            self.send(y, 0, _tag(k, DONE))
            if traj is not None:
                self.send(self.torch.stack(traj), 0, _tag(k, DONE_TRAJ))
        self.drain()

    def totals(self) -> dict:
        """Denoiser forwards, bytes and messages sent, summed over the ranks."""
        t = self.torch.tensor([self.eng.forwards, self.bytes_sent, self.messages], dtype=self.torch.int64)
        self.dist.all_reduce(t)
        forwards, sent, messages = (int(v) for v in t.tolist())
        return {"forwards": forwards, "bytes_sent": sent, "messages": messages}


class Lead:
    """What :func:`longgen.run.run_job` sees on rank 0 in place of the engine."""

    def __init__(self, pipe: Pipeline):
        self.pipe, self.engine = pipe, pipe.eng

    plan = property(lambda self: self.engine.plan)
    next_window = property(lambda self: self.engine.next_window)
    forwards = property(lambda self: self.engine.forwards)

    @property
    def progress(self):
        return self.engine.progress

    @progress.setter
    def progress(self, value):
        self.engine.progress = value

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.engine.load_state_dict(d)

    def __iter__(self):
        return self.pipe.lead()


# ---------------------------------------------------------------------------- command


def _agree(dist, rank: int, err: str | None) -> str | None:
    """Every rank's error (or None) to every rank; the line to report: rank 0's, else the first
    other rank's, named."""
    errs = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    if errs[0] is not None:
        return errs[0]
    for r, e in enumerate(errs):
        if e is not None:
            return f"rank {r}: {e}"
    return None


def main(args, plugin, argv) -> int:
    """``longgen <command> ...`` under torchrun with more than one rank: one output, its windows
    pipelined across the ranks. Rank 0 reports; the exit status is the same on every rank."""
    from .cli import _one_line

    rank, size, local_rank = world()
    cmd = args.command

    def report(line: str) -> None:
        if rank == 0:
            print(f"longgen {cmd}: error: {line}", file=sys.stderr)

    try:
        check_args(args, size)
    except ValueError as e:
        report(_one_line(e))
        return 2
    dist = init_distributed(size, local_rank, "longgen-pipeline")
    try:
        return _main(args, plugin, argv, dist, rank, size, local_rank, report)
    except KeyboardInterrupt:
        if rank == 0:
            from .run import work_dir

            ok = (work_dir(args.out) / "state.pt").exists()
            print(f"\nlonggen {cmd}: interrupted; " + ("continue with --resume" if ok else
                  "nothing to resume, run the command again"), file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _main(args, plugin, argv, dist, rank, size, local_rank, report) -> int:
    from .cli import _one_line
    from .run import check_output_path, run_job, work_dir

    given = any(a == "--device" or a.startswith("--device=") for a in (argv if argv is not None else sys.argv[1:]))
    if args.model != "builtin" and (args.device == "cuda" or not given):
        args.device = rank_device(local_rank)   # each rank its own GPU (LOCAL_RANK), else the CPU
    resume, err = args.resume, None
    if rank == 0:  # the output is checked before a model is loaded
        try:
            if not resume and restart_count() > 0 and (work_dir(args.out) / "state.pt").exists():
                resume = True  # torchrun restarted the workers: continue the interrupted run
            check_output_path(args.out, resume=resume, overwrite=args.overwrite)
        except ValueError as e:
            err = _one_line(e)
    err = _agree(dist, rank, err)
    if err is None:
        try:
            job = plugin.build_job(args)
            check_job(job.engine, size)
        except Exception as e:
            if os.environ.get("LONGGEN_TRACEBACK"):
                raise
            err = _one_line(e)
        err = _agree(dist, rank, err)
    if err is not None:
        report(err)
        return 2
    pipe = Pipeline(job.engine, dist, rank, size)
    engine = job.engine
    try:
        if rank == 0:
            progress = None
            if not args.no_progress:
                from tqdm.auto import tqdm
                progress = tqdm
            job.engine = Lead(pipe)
            t0 = time.perf_counter()
            try:
                paths = run_job(job, resume=resume, overwrite=args.overwrite, progress=progress)
            finally:
                pipe.abort()  # refused before the first window: let the other ranks go
            seconds = round(time.perf_counter() - t0, 3)
        else:
            pipe.work()
    except Aborted:
        return 2
    except Exception as e:
        if os.environ.get("LONGGEN_TRACEBACK"):
            raise
        line = _one_line(e)
        if rank != 0 and "closed by peer" in line:  # another rank stopped first and said why
            line = "stopped: another rank ended the run (its error is reported above)"
        print(f"longgen {args.command}: error: {'' if rank == 0 else f'rank {rank}: '}{line}", file=sys.stderr)
        return 2
    totals = pipe.totals()
    dist.barrier()
    if rank == 0:
        print(json.dumps({"outputs": [str(Path(p)) for p in paths], "windows": len(engine.plan),
                          "forwards": totals["forwards"], **job.info, "seconds": seconds, "ranks": size,
                          "pipeline": {"first_window": pipe.k0, "bytes_sent": totals["bytes_sent"],
                                       "messages": totals["messages"],
                                       "strip_bytes_per_step": pipe.strip_bytes}}))
    return 0
