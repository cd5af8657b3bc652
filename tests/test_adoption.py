"""Adopting modnorm on an existing project: one answer from the CLI, the pytest plugin and the pre-commit hook;
a baseline that lets CI fail only on new findings; paths relative to the project root in every report."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MODEL = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + 4 * self.fc(torch.relu(x))  # unscaled and too sensitive: MN201, and MN203 (its consequence)


class Net(nn.Module):
    def __init__(self, width=32, depth=2):
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 8)
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.out(x))  # modnorm: ignore[MN101]


def example_inputs(model):
    return (torch.randn(4, 16),)
'''

PYPROJECT = '''[project]
name = "user-project"
version = "0"

[tool.modnorm]
models = ["model.py:Net"]
fail-on = "info"
ignore = ["MN602"]
per-module-ignores = { "blocks.1" = ["MN203"] }
'''

USER_TEST = '''import torch

from model import Net
from modnorm.testing import assert_well_normed


def test_net_is_well_normed():
    torch.manual_seed(0)  # the CLI builds the model after the same seed
    assert_well_normed(Net(), torch.randn(4, 16))
'''


def modnorm(*args, cwd):
    """`modnorm ARGS` run in `cwd` (in this process: a subprocess would import torch again, ~5 s each)."""
    from typer.testing import CliRunner

    from modnorm.cli import app

    previous = os.getcwd()
    os.chdir(cwd)  # contextlib.chdir is Python 3.11+
    try:
        result = CliRunner().invoke(app, list(map(str, args)))
    finally:
        os.chdir(previous)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    return tmp_path


_CONCISE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):1: (?P<code>MN\d{3}) \[(?P<module>[^\]]*)\] ")
# pytest prints an assertion message's lines after "E   "
_PLUGIN = re.compile(r"^E\s+(?P<file>[^:\s]+):(?P<line>\d+): (?P<code>MN\d{3}) \w+ \[(?P<module>[^\]]*)\] ")


def parsed(pattern, text):
    return sorted((m["file"], int(m["line"]), m["code"], m["module"])
                  for m in map(pattern.match, text.splitlines()) if m)


@pytest.mark.slow  # tens of seconds: CI's second step (pytest -m slow)
def test_cli_plugin_and_pre_commit_hook_report_the_same_findings(project):
    """The same model and [tool.modnorm] (an ignore, a per-module ignore, an inline suppression) give the same
    findings, at the same places, whichever way modnorm is run."""
    cli = modnorm("check", "-f", "concise", cwd=project)
    assert cli.returncode == 1, cli.stderr
    expected = parsed(_CONCISE, cli.stdout)
    codes = {code for _, _, code, _ in expected}
    # The configuration and the suppression did their work (so the comparison below means something):
    assert expected and "MN602" not in codes and ("model.py", 26, "MN101", "head") not in expected
    assert not any(code == "MN203" and module == "blocks.1" for _, _, code, module in expected)

    (project / "test_user.py").write_text(USER_TEST)
    plugin = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                            cwd=project, capture_output=True, text=True)
    assert plugin.returncode == 1, plugin.stdout
    assert parsed(_PLUGIN, plugin.stdout) == expected, plugin.stdout

    hooked = _run_pre_commit_hook(project)
    assert hooked.returncode == 1, hooked.stdout + hooked.stderr
    assert parsed(_CONCISE, hooked.stdout) == expected
    assert "┃" not in hooked.stdout  # concise by default: no tables in a commit hook


def _run_pre_commit_hook(project):
    """The `modnorm` hook of .pre-commit-hooks.yaml on `project`: under `pre-commit try-repo` (a committed snapshot
    of this checkout as the hook repository, the project a git repository) when pre-commit is installed, else
    its entry run as pre-commit runs a `language: system` hook."""
    import yaml

    hook = next(h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text()) if h["id"] == "modnorm")
    assert hook["language"] == "system" and hook["pass_filenames"] is False
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PRE_COMMIT_HOME": str(project.parent / "pre-commit-home"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    if shutil.which("pre-commit", path=env["PATH"]) is None or shutil.which("git") is None:
        return subprocess.run(hook["entry"].split() + hook.get("args", []), cwd=project, capture_output=True,
                              text=True, env=env)
    repo = project.parent / "modnorm-hook-repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__",
                                                              "fixtures", "tests", "bench", "docs", "examples"))
    for where in (repo, project):
        for command in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "snapshot"]):
            subprocess.run(command, cwd=where, check=True, env=env, capture_output=True)
    return subprocess.run([shutil.which("pre-commit", path=env["PATH"]), "try-repo", str(repo), "modnorm",
                           "--all-files"], cwd=project, capture_output=True, text=True, env=env)


# --------------------------------------------------------------------------------------------------- baseline
def test_a_baseline_lets_only_new_findings_fail(project):
    baseline = project / "modnorm-baseline.json"
    first = modnorm("check", "--baseline", baseline, "-f", "concise", cwd=project)
    assert first.returncode == 0 and "recorded" in first.stderr, first.stderr
    recorded = json.loads(baseline.read_text())
    assert recorded["schema"] == "modnorm-baseline/1" and recorded["findings"]

    # Unrelated edits: lines move, and an early `+ 1.0` renames every later fx `add` node (add_1 -> add_2).
    source = (project / "model.py").read_text()
    edited = "# an unrelated comment\n\n" + source.replace(
        "        x = self.inp(x)\n", "        x = self.inp(x)\n        x = x + 1.0\n")
    (project / "model.py").write_text(edited)
    again = modnorm("check", "--baseline", baseline, "-f", "concise", cwd=project)
    assert again.returncode == 0 and again.stdout.strip() == "All checks passed!", again.stdout

    # A defect: a new layer initialised with std 1 (norm ~ sqrt(32) · 2, far out of band).
    defect = edited.replace(
        "        self.head = nn.Linear(8, 8)\n",
        "        self.head = nn.Linear(8, 8)\n        self.extra = nn.Linear(width, width)\n"
        "        nn.init.normal_(self.extra.weight, std=1.0)\n").replace(
        "        return self.head(", "        x = self.extra(x)\n        return self.head(")  # not on the suppressed line
    (project / "model.py").write_text(defect)
    new = modnorm("check", "--baseline", baseline, "-f", "json-lines", cwd=project)
    rows = [json.loads(line) for line in new.stdout.splitlines() if line.strip()]
    assert new.returncode == 1
    assert [(r["code"], r["module"]) for r in rows] == [("MN101", "extra")]

    updated = modnorm("check", "--baseline", baseline, "--update-baseline", "-f", "concise", cwd=project)
    assert updated.returncode == 0
    assert modnorm("check", "--baseline", baseline, cwd=project).returncode == 0
    assert len(json.loads(baseline.read_text())["findings"]) == len(recorded["findings"]) + 1


def test_a_broken_baseline_is_an_error_naming_the_file(project):
    (project / "bl.json").write_text("{not json")
    run = modnorm("check", "--baseline", "bl.json", cwd=project)
    assert run.returncode == 2 and "bl.json:1: the baseline `bl.json` is not valid JSON" in run.stderr
    assert "Traceback" not in run.stderr
    assert modnorm("check", "--update-baseline", cwd=project).returncode == 2


# -------------------------------------------------------------------------------------------------- locations
def test_every_report_shows_paths_relative_to_the_project_root(project):
    """The model passed by absolute path, run from the project root: header, findings, 'not certified' lines and
    JSON files are all relative to it."""
    shutil.copy(ROOT / "fixtures/uncertified_ops.py", project / "uncertified.py")
    target = str(project / "uncertified.py")
    full = modnorm("check", target, "--isolated", "--exit-zero", cwd=project).stdout
    assert str(project) not in full, full
    assert "modnorm · uncertified.py:" in full and "not certified: torch.cumprod at uncertified.py:" in full
    report = json.loads(modnorm("check", target, "--isolated", "-f", "json", "--exit-zero", cwd=project).stdout)
    files = [report["model"]["file"], *(l["file"] for l in report["layers"]), *(f["file"] for f in report["findings"]),
             *report["network"]["uncertified_reasons"]]
    assert all(str(project) not in (text or "") for text in files), files
    assert {l["file"] for l in report["layers"]} == {"uncertified.py"}


def test_sarif_fingerprints_survive_renamed_fx_nodes(project):
    """A finding keeps its fingerprint when an edit elsewhere renames its fx node (add_1 -> add_2)."""
    def prints():
        log = json.loads(modnorm("check", "--isolated", "model.py:Net", "-f", "sarif", cwd=project).stdout)
        return {(r["ruleId"], r["properties"]["module"], r["properties"]["op"]):
                r["partialFingerprints"]["modnormFinding/v2"] for r in log["runs"][0]["results"]}

    before = prints()
    source = (project / "model.py").read_text()
    (project / "model.py").write_text(source.replace("        x = self.inp(x)\n",
                                                     "        x = self.inp(x)\n        x = x + 1.0\n"))
    after = prints()
    assert ("MN203", "blocks.*", "add_1") in before and ("MN203", "blocks.*", "add_2") in after  # renamed...
    assert sorted(before.values()) == sorted(after.values())  # ...and the same alerts


def test_hugging_face_findings_point_at_the_transformers_source(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                                      vocab_size=100, architectures=["LlamaForCausalLM"])
    config.save_pretrained(tmp_path / "llama")
    run = modnorm("check", tmp_path / "llama", "-f", "json-lines", cwd=tmp_path)
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    source = Path(transformers.models.llama.modeling_llama.__file__)
    assert rows and all(Path(r["file"]).resolve() == source.resolve() for r in rows)
    lines = source.read_text().splitlines()
    q_proj = next(r for r in rows if r["module"] in ("model.layers.*.self_attn.q_proj", "model.layers.0.self_attn.q_proj"))
    assert "self.q_proj(" in lines[q_proj["line"] - 1]  # where the module is called in forward
    full = modnorm("check", tmp_path / "llama", cwd=tmp_path).stdout
    assert "LlamaForCausalLM built from config.json" in " ".join(full.split())
    assert "findings point at its source" in " ".join(full.split())
