"""Packaging: the root folders stitch/ and modalities/ install as longgen.stitch and longgen.modalities.

The bare names ``stitch`` and ``modalities`` are other distributions on PyPI (stitch 1.4.4 and
modalities 0.5.0 each install a top-level package of that name), so longgen must not install a
top-level package of either name. The layering rule (the core never imports the plugins; imports
point down: modalities -> core -> stitch) is checked on the source.
"""

import ast
import os
import subprocess
import sys
import zipfile
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("longgen-*.whl")
    return whl


def _sources(folder: str) -> set[str]:
    return {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.py")}


def test_wheel_has_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"longgen"}, tops
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["longgen"]
    # every source file of the root folders is in the wheel under its installed name
    for folder, pkg in (("stitch", "longgen/stitch"), ("modalities", "longgen/modalities")):
        want = {f"{pkg}/{f}" for f in _sources(folder)}
        assert want and want <= set(names), sorted(want - set(names))[:5]


def test_wheel_entry_points_name_installed_modules(wheel):
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(ep).decode()
    group = text.split("[longgen.modalities]")[1].split("[")[0]
    targets = {line.split("=")[0].strip(): line.split("=")[1].strip()
               for line in group.strip().splitlines()}
    assert set(targets) == {"panorama", "inpaint", "video", "motion"}
    assert all(t.startswith("longgen.modalities.") for t in targets.values()), targets


def test_installed_beside_the_pypi_stitch_and_modalities(wheel, tmp_path):
    """Unpack our wheel into a folder that also holds top-level ``stitch`` and ``modalities``
    packages (standing in for the PyPI distributions): all three import, each from its own files."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    for other in ("stitch", "modalities"):
        (site / other).mkdir()
        (site / other / "__init__.py").write_text(f"WHO = 'the other {other}'\n")
    code = ("import stitch, modalities, longgen.stitch, longgen.modalities.image.plugin as p\n"
            "print(stitch.WHO, '|', modalities.WHO, '|', longgen.stitch.__file__, '|', p.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    who_s, who_m, f_s, f_p = [s.strip() for s in r.stdout.split("|")]
    assert (who_s, who_m) == ("the other stitch", "the other modalities")
    # PYTHONPATH comes before the editable install, so longgen itself is the unpacked wheel here
    assert f_s == str(site / "longgen" / "stitch" / "__init__.py")
    assert f_p == str(site / "longgen" / "modalities" / "image" / "plugin.py")


def test_installed_project_exposes_no_bare_names(tmp_path):
    """Outside the repository (so its root folders are not on sys.path) the installed project
    provides longgen.stitch / longgen.modalities and no top-level stitch / modalities."""
    code = ("import importlib.util as u, longgen.stitch, longgen.modalities\n"
            "print(u.find_spec('stitch') is None, u.find_spec('modalities') is None)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True"]
    eps = {e.name: e.value for e in entry_points(group="longgen.modalities")}
    assert all(v.startswith("longgen.modalities.") for v in eps.values()), eps
    assert distribution("longgen").metadata["Name"] == "longgen"


def _imports(path: Path) -> set[str]:
    """Absolute module names a source file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if pkg and pkg[0] in ("stitch", "modalities"):  # the installed name of a root folder
        pkg = ("longgen",) + pkg
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                mods.add(".".join(base + ([node.module] if node.module else [])))
            else:
                mods.add(node.module)
    return mods


def test_layering():
    """stitch imports neither the core nor the plugins; the core never imports the plugins; nothing
    imports the bare folder names."""
    for path in (ROOT / "stitch").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith("longgen") and not m.startswith("longgen.stitch")}
        assert not bad, (path, bad)
    for path in (ROOT / "longgen").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith("longgen.modalities")}
        assert not bad, (path, bad)
    for folder in ("longgen", "stitch", "modalities", "tests", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            bare = {m for m in _imports(path) if m.split(".")[0] in ("stitch", "modalities")}
            assert not bare, (path, bare)


def _module_graph(root: Path) -> dict[str, set[str]]:
    """Imports (lazy ones inside functions included) between the modules under modalities/, as
    dotted names relative to it: 'image.plugin' -> {'image.jobs', 'glue', ...}."""
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        mods[name] = (f, is_pkg)
    graph = {}
    for name, (f, is_pkg) in mods.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)] if node.level > 1 else list(here)
                    target = ".".join(base + (node.module.split(".") if node.module else []))
                elif node.module and node.module.startswith("longgen.modalities."):
                    target = node.module[len("longgen.modalities."):]
                else:
                    continue
                for alias in node.names:   # `from . import x` may name a module
                    sub = f"{target}.{alias.name}" if target else alias.name
                    deps.add(sub if sub in mods else target)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_import_cycles_between_modality_modules():
    """Issue 11 item 3: plugin <-> jobs files no longer import each other (lazily or not), and
    video / motion take their CLI glue from modalities/glue.py, not from the image plugin."""
    graph = _module_graph(ROOT / "modalities")
    for user in ("video.plugin", "video.jobs", "video.api", "motion.plugin", "motion.jobs", "motion.api"):
        assert not graph[user] & {"image.plugin", "image.api", "image.jobs"}, (user, graph[user])
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n)
