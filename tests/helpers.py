"""Small shared builders for the tests: random separable priors and float64 diffusers references."""

from __future__ import annotations

import torch

from longgen.priors import SeparableGMM


def spd(n: int, K: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(K, n, n, dtype=torch.float64, generator=g)
    return a @ a.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=torch.float64)


def random_prior(shape=(2, 4, 6), K: int = 3, classes: int = 0, seed: int = 0) -> SeparableGMM:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, *shape, dtype=torch.float64, generator=g)
    weights = torch.rand(classes, K, dtype=torch.float64, generator=g) if classes else None
    return SeparableGMM(means, [spd(n, K, g) for n in shape], weights)


def f64_scheduler(cls, config, steps: int):
    """A diffusers scheduler whose alphas are kept in float64, so its own step runs in float64.

    (diffusers keeps alphas_cumprod in float32 and takes their square roots there; in a float64
    loop that alone moves results by ~1e-5.)
    """
    s = cls.from_config(config)
    s.alphas_cumprod = s.alphas_cumprod.double()
    if hasattr(s, "final_alpha_cumprod"):
        s.final_alpha_cumprod = torch.as_tensor(s.final_alpha_cumprod).double()
    s.one = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(steps)
    return s


def kill_lock_holder(proc, work, ready, poll: float, timeout: float = 240.0) -> bool:
    """While ``proc`` runs, wait until ``ready(work)`` and the run's lock file is in ``work``, then
    SIGKILL the process the lock names (the rank writing that output); whether it was killed."""
    import os
    import signal
    import time

    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if ready(work) and (work / "lock").exists():
            os.kill(int((work / "lock").read_text().split()[0]), signal.SIGKILL)
            return True
        time.sleep(poll)
    return False


def kill_after_windows(cmd: list[str], cwd, manifest, windows: int, timeout: float = 120.0) -> int:
    """Start ``cmd`` (one thread), SIGKILL it once its resume manifest says ``windows`` windows are
    done (or it ended, or ``timeout`` passed); returns the windows the manifest had then. The
    process must have been killed (asserted with its stderr)."""
    import json
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done, t0 = 0, time.time()
    while done < windows and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.02)
        try:
            done = json.loads(manifest.read_text())["windows_done"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return done


def killed_run_resumes_identically(args: list, tmp_path, windows: int, cwd) -> tuple[int, object]:
    """``longgen <args>`` SIGKILLed once ``windows`` windows are done, then ``--resume``d: asserts the
    resumed output's bytes equal an uninterrupted run's; returns (windows done at the kill, the
    uninterrupted output's path)."""
    import hashlib
    import sys

    from longgen.cli import main

    args = [str(a) for a in args]
    part, full = tmp_path / "part.mp4", tmp_path / "full.mp4"
    done = kill_after_windows([sys.executable, "-m", "longgen.cli", *args, "--out", str(part)], cwd,
                              tmp_path / "part.mp4.longgen" / "manifest.json", windows)
    assert main([*args, "--out", str(part), "--resume"]) == 0
    assert main([*args, "--out", str(full)]) == 0
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(full.read_bytes()).digest()
    return done, full
