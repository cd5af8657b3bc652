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
