"""What a release needs: the sdist and the wheel build offline from a clean copy of the sources, carry the
version of `_version.py` and everything the package reads at run time; the changelog, the procedure and the
release workflow agree with each other."""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from modnorm import __version__

ROOT = Path(__file__).resolve().parents[1]


def sources(destination: Path) -> Path:
    """The files a release is built from: what git tracks (else the tree, less build and environment litter)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        for name in filter(None, listed.stdout.split("\0")):
            if (ROOT / name).is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, destination / name)
    else:
        shutil.copytree(ROOT, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis"))
    return destination


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`python -m build --no-isolation` (what the release workflow runs, minus the download of setuptools)."""
    tree = sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    pytest.importorskip("build", reason="the `build` package (in the test extra) is not installed")
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir",
                          str(out), str(tree)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_build_makes_an_sdist_and_a_wheel_of_this_version(dist):
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert sdist.name == f"modnorm-{__version__}.tar.gz"
    assert wheel.name.startswith(f"modnorm-{__version__}-py3-none-any")


def test_the_wheel_holds_what_the_package_reads_at_run_time(dist):
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    rules = {p.name for p in (ROOT / "rules").glob("mn*.py")}
    assert {"modnorm/report.schema.json", "modnorm/html.py", "modnorm/baseline.py", "modnorm/testing.py"} <= names
    assert {f"modnorm/rules/{name}" for name in rules} <= names
    metadata = zipfile.ZipFile(wheel).read(f"modnorm-{__version__}.dist-info/entry_points.txt").decode()
    assert "modnorm = modnorm.cli:main" in metadata and "modnorm = modnorm.testing" in metadata


def test_the_sdist_holds_the_changelog_and_the_sources(dist):
    (sdist,) = dist.glob("*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"CHANGELOG.md", "README.md", "pyproject.toml", "analyzer/report.schema.json", "analyzer/html.py"} <= names


def test_changelog_procedure_and_workflow_agree():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    procedure = (ROOT / "docs/releasing.md").read_text()
    assert "analyzer/_version.py" in procedure and "git tag -a vX.Y.Z" in procedure
    workflow = (ROOT / ".github/workflows/release.yml").read_text()
    assert "python -m build --sdist --wheel" in workflow and 'tags: ["v*.*.*"]' in workflow
    assert "analyzer/_version.py" in workflow and "CHANGELOG.md" in workflow


def test_readme_snippets_install_from_the_repository_and_use_real_options(tmp_path):
    """README's CI snippets install modnorm from its repository (it is on no index), pin torch's CPU build, and
    every `modnorm check` in them is accepted by the command line."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("GitHub Actions (", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    import yaml

    steps = yaml.safe_load(snippet)["jobs"]["modnorm"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    assert any("git+https://github.com/modnorm/modnorm" in r for r in runs)
    assert not any(re.search(r"pip install [^\n]*\bmodnorm\b(?![ @\"]*git\+)", r) and "git+" not in r for r in runs)
    assert any("torch==2.13.0" in r and "whl/cpu" in r for r in runs)
    from typer.testing import CliRunner

    from modnorm.cli import app

    for command in (r.split("#")[0].split() for r in runs if r.startswith("modnorm check")):
        args = [str(ROOT / "fixtures/clean_mlp.py") if a == "model.py" else a for a in command[1:]]
        args = [a if a not in ("modnorm.sarif", "modnorm.html") else str(tmp_path / a) for a in args]
        result = CliRunner().invoke(app, args)
        assert result.exit_code in (0, 1), (command, result.output)
    hooks = readme.split("### pre-commit", 1)[1].split("### pytest", 1)[0]
    local = yaml.safe_load(hooks.split("```yaml", 1)[1].split("```", 1)[0])["repos"][0]
    assert local["repo"] == "local" and local["hooks"][0]["language"] == "system"
    assert "rev: v0.1.0" not in readme  # a tag that does not exist
