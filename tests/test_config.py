"""[tool.modnorm] in pyproject.toml: the same keys as the command line, `models` for a bare `modnorm check`,
per-module ignores, per-rule options; bad configuration is exit 2 naming the file and the key."""

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository with the nanoGPT fixture and a pyproject.toml written by the test."""
    shutil.copy(ROOT / "fixtures/nanogpt.py", tmp_path / "gpt.py")
    shutil.copy(ROOT / "fixtures/clean_mlp.py", tmp_path / "mlp.py")
    monkeypatch.chdir(tmp_path)

    def write(body):
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n\n" + textwrap.dedent(body))
        return tmp_path / "pyproject.toml"
    return write


def codes(*args):
    result = runner.invoke(app, ["check", *map(str, args), "-f", "json", "--exit-zero"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    return [{f["code"] for f in r["findings"]} for r in reports]


def test_select_and_ignore_from_pyproject(project):
    project("""
        [tool.modnorm]
        select = ["MN2", "MN3"]
        ignore = ["MN203"]
    """)
    assert codes("gpt.py") == [{"MN201", "MN204", "MN301"}]


def test_command_line_overrides_the_file(project):
    project("""
        [tool.modnorm]
        select = ["MN2"]
    """)
    assert codes("gpt.py", "--select", "MN301") == [{"MN301"}]


def test_isolated_ignores_the_file(project):
    project("""
        [tool.modnorm]
        select = ["MN301"]
    """)
    assert "MN201" in codes("gpt.py", "--isolated")[0]


def test_bare_check_runs_the_configured_models(project):
    project("""
        [tool.modnorm]
        models = ["gpt.py:build_model", "mlp.py"]
        select = ["MN301"]
    """)
    result = runner.invoke(app, ["check", "-f", "json"])
    assert result.exit_code == 1  # the GPT's attention scale is a warning
    reports = json.loads(result.stdout)
    assert [Path(r["target"]).name for r in reports] == ["gpt.py:build_model", "mlp.py"]
    assert [{f["code"] for f in r["findings"]} for r in reports] == [{"MN301"}, set()]


def test_bare_check_without_models_explains(project):
    project("[tool.modnorm]\nselect = ['ALL']\n")
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2 and "models = [" in result.stderr


def test_per_module_ignores_match_module_path_globs(project):
    project("""
        [tool.modnorm]
        select = ["MN101", "MN301"]
        per-module-ignores = { "transformer.h.*.attn" = ["MN301", "MN101"] }
    """)
    result = runner.invoke(app, ["check", "gpt.py", "-f", "json", "--exit-zero"])
    findings = json.loads(result.stdout)["findings"]
    assert {f["code"] for f in findings} == {"MN101"}  # the MLP and head atoms still report
    assert not any(".attn" in f["module"] for f in findings)


def test_rule_options_from_pyproject_and_command_line(project):
    project("""
        [tool.modnorm]
        select = ["MN204"]
        [tool.modnorm.rules.MN204]
        warn = 1e9
        error = 1e10
    """)
    assert codes("gpt.py") == [set()]
    assert codes("gpt.py", "--rule-option", "MN204.warn=2") == [{"MN204"}]


def test_profile_and_mass_keys_reach_the_analysis(project):
    project("""
        [tool.modnorm]
        profile = "modula"
        hidden-mass = 5
        mass-scheme = "roles"
    """)
    report = json.loads(runner.invoke(app, ["check", "mlp.py", "-f", "json"]).stdout)
    assert report["profile"] == "modula" and report["hidden_mass"] == 5
    assert report["network"]["mass"] == pytest.approx(7.0)  # 1 + 5 + 1


def test_mass_table_overrides_like_tare(project):
    project("""
        [tool.modnorm]
        [tool.modnorm.mass]
        "fc*" = 6
    """)
    report = json.loads(runner.invoke(app, ["check", "mlp.py", "-f", "json"]).stdout)
    assert [layer["mass"] for layer in report["layers"]] == pytest.approx([2.0, 2.0, 2.0])  # 6 shared by 3


@pytest.mark.parametrize("body, words, key_line", [
    # lines 1-3 are the [project] table the fixture writes; [tool.modnorm] is line 4
    ("[tool.modnorm]\nselct = ['MN2']\n", "unknown key `selct`", 5),
    ("[tool.modnorm]\nhidden-mass = 'five'\n", "`hidden-mass` must be a finite non-negative number", 5),
    ("[tool.modnorm]\nselect = ['MN777']\n", "`MN777`, which is no rule code", 5),
    ("[tool.modnorm]\nprofile = 'fast'\n", '`profile` must be "assumed" or "certified" or "modula"', 5),
    ("[tool.modnorm]\n[tool.modnorm.rules.MN204]\nwarm = 3\n", "MN204 has no option `warm`", 6),
    ("[tool.modnorm]\nmass = { 'nothing.*' = 2 }\n", "matches no atom", None),
    ("[tool.modnorm\n", "not valid TOML", None),
])
def test_bad_configuration_is_exit_two_naming_file_and_key(project, body, words, key_line):
    path = project(body)
    result = runner.invoke(app, ["check", "mlp.py"])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.stderr
    if key_line:
        assert f"{path}:{key_line}:" in result.stderr


def test_explicit_config_file(project, tmp_path):
    (tmp_path / "other.toml").write_text("[tool.modnorm]\nselect = ['MN301']\n")
    assert codes("gpt.py", "--config", tmp_path / "other.toml") == [{"MN301"}]
    assert runner.invoke(app, ["check", "gpt.py", "--config", tmp_path / "missing.toml"]).exit_code == 2


def test_unknown_codes_on_the_command_line_are_exit_two(project):
    assert runner.invoke(app, ["check", "mlp.py", "--select", "MN77"]).exit_code == 2
    assert runner.invoke(app, ["check", "mlp.py", "--rule-option", "MN204.nope=1"]).exit_code == 2
