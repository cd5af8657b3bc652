"""Every fixture declares the findings it must produce (`Expect: ...` in its docstring); `modnorm check`
produces exactly those, and every rule is documented and demonstrated by some fixture."""

import ast
import json
import re

import pytest
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.rules import all_rules
from tests.conftest import FIXTURES

runner = CliRunner()


def declared_codes(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Expect:\s*(.+)$", doc, re.MULTILINE)
    assert match, f"{path.name} declares no `Expect:` line"
    text = match.group(1).strip()
    return set() if text == "nothing" else {c.strip() for c in text.split(",")}


def declared_args(path):
    """Command-line options a fixture is checked with (`Args: --hidden-mass 200` in its docstring)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Args:\s*(.+)$", doc, re.MULTILINE)
    return match.group(1).split() if match else []


def check_json(path, *args):
    args = (*declared_args(path), *args)
    result = runner.invoke(app, ["check", str(path), "--output-format", "json", "--exit-zero", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture_reports_exactly_what_it_declares(fixture):
    report = check_json(fixture)
    assert {f["code"] for f in report["findings"]} == declared_codes(fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture_has_no_unknown_op_unless_it_demonstrates_one(fixture):
    report = check_json(fixture)
    if "MN901" not in declared_codes(fixture):
        assert report["network"]["unknown_ops"] == []


def test_every_rule_is_documented_and_demonstrated():
    demonstrated = set().union(*(declared_codes(f) for f in FIXTURES))
    for code, rule in all_rules().items():
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Options",
                        "## References"):
            assert section in (rule.__doc__ or ""), f"{code} lacks {section}"
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name), code
        assert code in demonstrated, f"no fixture triggers {code}"


def test_clean_designs_have_no_warnings_or_errors():
    for name in ("modula_gpt", "modula_resmlp", "modula_rescnn", "clean_mlp"):
        report = check_json(next(f for f in FIXTURES if f.stem == name))
        assert [f for f in report["findings"] if f["severity"] != "info"] == [], name


def test_readme_rules_table_is_generated_from_the_rule_docs():
    from modnorm.cli import rules_markdown
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- rules:start -->")[1].split("<!-- rules:end -->")[0].strip()
    assert section == rules_markdown()
