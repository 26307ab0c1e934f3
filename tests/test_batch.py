"""``longgen batch``: requests checked up front, one process or torchrun ranks (gloo, CPU), a worker
killed with SIGKILL and restarted by torchrun's elastic agent, the summary.

Outputs depend on the CPU thread count (torch's reductions split by threads); torchrun sets
OMP_NUM_THREADS=1 in every worker, so the single-process references here run with it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longgen.cli import main
from tests.helpers import kill_lock_holder

REQUESTS = [
    {"command": "panorama", "width": 1024, "height": 128, "steps": 6, "seed": 1, "out": "a.png"},
    {"command": "panorama", "width": 768, "height": 128, "steps": 6, "seed": 2, "prompt": "sunset", "out": "sub/b.png"},
    {"command": "motion", "frames": 200, "steps": 20, "keyframes": "every:20", "out": "m.npy"},
    {"command": "panorama", "width": 640, "height": 128, "steps": 6, "seed": 5, "loop": True, "out": "e.png"},
]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write(path: Path, requests: list[dict], extra: str = "") -> Path:
    path.write_text("# requests\n" + "\n".join(json.dumps(r) for r in requests) + "\n" + extra)
    return path


def _batch(args: list, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longgen", "batch", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, env=env or ONE_THREAD, **kw)


def _torchrun(n: int, args: list, restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           f"--max-restarts={restarts}", "-m", "longgen", "batch", *map(str, args), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {r["out"]: (folder / r["out"]).read_bytes() for r in REQUESTS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("single")
    req = _write(d / "r.jsonl", REQUESTS)
    res = _batch([req, "--out-dir", d / "out"])
    assert res.returncode == 0, res.stderr
    return d / "out"


def test_single_process_batch_and_its_summary(reference, tmp_path):
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["requests"] == 4 and summary["world_size"] == 1
    assert [e["line"] for e in summary["entries"]] == [2, 3, 4, 5]   # line 1 is a comment
    assert all(e["status"] == "done" and e["completions"] == 1 for e in summary["entries"])
    # each output is what `longgen <command>` writes alone (under the same thread count)
    res = subprocess.run([sys.executable, "-m", "longgen", "panorama", "--width", "1024", "--height", "128",
                          "--steps", "6", "--seed", "1", "--out", str(tmp_path / "one.png"), "--no-progress"],
                         capture_output=True, text=True, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "one.png").read_bytes() == (reference / "a.png").read_bytes()
    # run again: everything is finished, nothing is redone
    req = _write(tmp_path / "r.jsonl", REQUESTS)
    again = _batch([req, "--out-dir", reference])
    lines = [json.loads(x) for x in again.stdout.strip().splitlines()]
    assert again.returncode == 0 and {x["status"] for x in lines} == {"skipped"}
    summary = json.loads((reference / "summary.json").read_text())
    assert all(e["status"] == "done" and e["completions"] == 1 for e in summary["entries"])


def test_bad_requests_are_refused_by_line_before_any_work(tmp_path, capsys):
    cases = [
        ('{"command": "panorama", "out": "x.png"\n', "line 2: Expecting ',' delimiter"),
        ('{"command": "paint", "out": "x.png"}\n', "line 2: unknown command 'paint'; allowed:"),
        ('{"command": "panorama", "width": "wide", "out": "x.png"}\n', "line 2: argument --width: invalid int value: 'wide'"),
        ('{"command": "panorama", "width": 1024}\n', "line 2: every request needs \"out\""),
        ('{"command": "panorama", "resume": true, "out": "x.png"}\n', "line 2: 'resume' is not a request option"),
        ('{"command": "panorama", "out": "a.png"}\n', "line 2: out "),
    ]
    for text, msg in cases:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        first = '{"command": "panorama", "width": 1024, "out": "a.png"}\n'
        req = d / "r.jsonl"
        req.write_text(first + text)
        rc = main(["batch", str(req), "--out-dir", str(d / "out"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], (text, err)
        assert not (d / "out").exists()   # nothing ran, nothing was written


@pytest.mark.parametrize("n", [2, 3])
def test_torchrun_ranks_share_the_requests(reference, tmp_path, n):
    req = _write(tmp_path / "r.jsonl", REQUESTS)
    proc = _torchrun(n, [req, "--out-dir", tmp_path / "out"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert _outputs(tmp_path / "out") == _outputs(reference)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == n
    assert [e["rank"] for e in summary["entries"]] == [i % n for i in range(4)]
    assert all(e["status"] == "done" and e["completions"] == 1 for e in summary["entries"])
    records = [json.loads(x) for x in out.strip().splitlines() if x.startswith("{")]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]   # each request run once, by one rank


def test_a_killed_worker_is_restarted_and_nothing_is_done_twice(reference, tmp_path):
    """3 ranks; the rank running the motion request is killed with SIGKILL once that request has
    saved a state; torchrun's agent restarts the workers (--max-restarts 1): every output is
    byte-identical to the single-process run and every request was finished exactly once."""
    req = _write(tmp_path / "r.jsonl", REQUESTS)
    out_dir = tmp_path / "out"
    proc = _torchrun(3, [req, "--out-dir", out_dir], restarts=1)
    work = out_dir / "m.npy.longgen"
    killed = kill_lock_holder(proc, work, lambda w: (w / "state.pt").exists(), poll=0.02)
    assert killed, "the motion request never saved a state"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert _outputs(out_dir) == _outputs(reference)
    summary = json.loads((out_dir / "summary.json").read_text())
    motion = summary["entries"][2]
    assert motion["status"] == "resumed" and motion["attempts"] == 2
    assert all(e["completions"] == 1 for e in summary["entries"]), summary["entries"]
