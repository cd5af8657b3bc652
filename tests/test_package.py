"""The package installs under the import name `modnorm` (not the generic `analyzer`/`rules` folders) and its
console script works from a fresh virtual environment, built from a wheel."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # tens of seconds: CI's second step (pytest -m slow)
def test_wheel_installs_as_modnorm_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("modnorm-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "_dependencies.pth").write_text("\n".join(parent) + "\n")  # torch etc. from this environment
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    names = subprocess.run([str(python), "-c", "import modnorm, modnorm.rules, importlib.util as u;"
                            "print(modnorm.__file__); print(u.find_spec('analyzer'), u.find_spec('rules'))"],
                           cwd=tmp_path, env=clean, capture_output=True, text=True, check=True).stdout
    assert "site-packages" in names.splitlines()[0] and names.splitlines()[1] == "None None"
    script = env_dir / "bin" / "modnorm"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=clean)
    assert version.returncode == 0 and version.stdout.startswith("modnorm ")
    check = subprocess.run([str(script), "check", str(ROOT / "fixtures/clean_mlp.py")], capture_output=True,
                           text=True, env=clean, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "no findings" in check.stdout


def _import_graph():
    """modnorm's modules (analyzer/*.py) and the modules each imports, function-level (lazy) imports included."""
    import ast

    import networkx as nx

    graph = nx.DiGraph()
    for path in (ROOT / "analyzer").glob("*.py"):
        graph.add_node(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1:  # from .x import y / from . import x, y
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module == "modnorm":
                targets = ["__init__"]
            elif node.module and node.module.startswith("modnorm.") and not node.module.startswith("modnorm.rules"):
                targets = [node.module.split(".")[1]]
            else:
                continue
            graph.add_edges_from((path.stem, t) for t in targets if t != path.stem)
    return graph


def test_no_import_cycles_lazy_imports_included():
    """A module that imports another, even inside a function, is never imported back by it (directly or through
    others): each concept lives below the modules that use it (e.g. routes.py knows every route; no route module
    imports another)."""
    import networkx as nx

    graph = _import_graph()
    assert {"calculus", "tracing", "routes", "cli"} <= set(graph)  # the scan sees the package
    assert graph.has_edge("routes", "export_route") and graph.has_edge("export_route", "tracing")
    cycles = [c for c in nx.simple_cycles(graph) if c != ["__init__"]]
    assert cycles == [], cycles
