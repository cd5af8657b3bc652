"""Every output format, structurally checked on fixtures with findings; exit codes 0/1/2 in every format."""

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import jsonschema
import pytest
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.formats import _escape_data, _escape_property

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "fixtures/nanogpt.py"
CLEAN = ROOT / "fixtures/clean_mlp.py"
SCHEMA = json.loads((ROOT / "analyzer/report.schema.json").read_text())
FORMATS = ["full", "concise", "json", "json-lines", "sarif", "github", "junit"]
runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, ["check", *map(str, args)], env=env)


@pytest.fixture(scope="module")
def gpt_json():
    return json.loads(run(GPT, "-f", "json").stdout)


@pytest.mark.parametrize("fixture", ["nanogpt", "llama_block", "clean_mlp", "uncertified_ops", "resnet_bn"])
def test_json_validates_against_the_shipped_schema(fixture):
    report = json.loads(run(ROOT / f"fixtures/{fixture}.py", "-f", "json", "--exit-zero").stdout)
    jsonschema.validate(report, SCHEMA)  # raises ValidationError on any mismatch
    assert report["schema"].startswith("modnorm/") and report["layers"]

def test_schema_rejects_a_report_missing_a_field(gpt_json):
    broken = dict(gpt_json)
    del broken["network"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_the_schema_ships_inside_the_package():
    from importlib.resources import files

    assert json.loads(files("modnorm").joinpath("report.schema.json").read_text()) == SCHEMA


def test_concise_is_one_line_per_finding(gpt_json):
    lines = run(GPT, "-f", "concise").stdout.strip().splitlines()
    pattern = re.compile(r"^fixtures/nanogpt\.py:\d+:1: MN\d{3} \[[\w.<>*]+\] .+$")
    assert all(pattern.match(line) for line in lines[:-1]), lines
    assert len(lines) - 1 == len(gpt_json["findings"]) and lines[-1] == f"Found {len(lines) - 1} findings."


def test_json_lines_is_one_object_per_finding(gpt_json):
    rows = [json.loads(line) for line in run(GPT, "-f", "json-lines").stdout.strip().splitlines()]
    assert [(r["code"], r["module"]) for r in rows] == [(f["code"], f["module"]) for f in gpt_json["findings"]]
    assert all(r["file"] == "fixtures/nanogpt.py" for r in rows)


# ----------------------------------------------------------------------------------------------------- SARIF
def _sarif(*args):
    return json.loads(run(GPT, "-f", "sarif", *args).stdout)


def test_sarif_has_the_structure_code_scanning_requires():
    """The required members of SARIF 2.1.0 (§3.13 sarifLog, §3.14 run, §3.19 tool, §3.27 result, §3.28
    location) and what GitHub code scanning reads: rules with ids and descriptions, levels, a physical
    location with a relative URI and a start line, partialFingerprints."""
    log = _sarif()
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = log["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "modnorm" and re.match(r"^\d+\.\d+\.\d+", driver["version"])
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids)) and "MN301" in rule_ids
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert "## Why is this bad?" in rule["help"]["markdown"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert run_["results"]
    for result in run_["results"]:
        assert result["ruleId"] in rule_ids and driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note") and result["message"]["text"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == "fixtures/nanogpt.py"
        assert not physical["artifactLocation"]["uri"].startswith("/")
        assert physical["region"]["startLine"] >= 1
        for related in result.get("relatedLocations", []):
            assert related["physicalLocation"]["region"]["startLine"] >= 1


def test_sarif_fingerprints_are_distinct_and_stable():
    first, second = _sarif(), _sarif()
    prints = [r["partialFingerprints"]["modnormFinding/v2"] for r in first["runs"][0]["results"]]
    assert len(prints) == len(set(prints))  # layers sharing one source line stay distinct alerts
    assert prints == [r["partialFingerprints"]["modnormFinding/v2"] for r in second["runs"][0]["results"]]
    lines = [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in first["runs"][0]["results"]]
    assert len(set(lines)) < len(lines)  # …which is the situation the fingerprints are for


def test_sarif_module_findings_carry_the_definition_as_related_location():
    results = _sarif()["runs"][0]["results"]
    head = next(r for r in results if r["ruleId"] == "MN101" and r["properties"]["module"] == "transformer.wpe")
    assert head["relatedLocations"][0]["physicalLocation"]["region"]["startLine"] != \
        head["locations"][0]["physicalLocation"]["region"]["startLine"]


# ---------------------------------------------------------------------------------------------------- GitHub
def test_github_commands_most_severe_first():
    lines = run(GPT, "-f", "github").stdout.strip().splitlines()
    levels = [line.split(" ", 1)[0] for line in lines]
    order = {"::error": 0, "::warning": 1, "::notice": 2}
    assert [order[l] for l in levels] == sorted(order[l] for l in levels)
    assert re.match(r"^::(error|warning) file=fixtures/nanogpt\.py,line=\d+,title=modnorm \(MN\d{3}\)::", lines[0])
    assert any(line.startswith("::notice") for line in lines)  # consequences and notes stay, as notices
    assert all("\n" not in line for line in lines)


def test_github_escaping():
    assert _escape_data("50% a\nb\rc") == "50%25 a%0Ab%0Dc"
    assert _escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_github_writes_a_step_summary(tmp_path):
    summary = tmp_path / "summary.md"
    run(GPT, "-f", "github", env={"GITHUB_STEP_SUMMARY": str(summary)})
    text = summary.read_text()
    assert text.startswith("## modnorm") and "| severity | code |" in text and "MN301" in text
    # the default profile's bound rests on normalizer floors: the table says so instead of a bare "yes"
    assert " | given " in text and " assumption" in text, text.splitlines()[:5]


# ----------------------------------------------------------------------------------------------------- junit
def test_junit_parses_and_counts(gpt_json):
    root = ElementTree.fromstring(run(GPT, "-f", "junit").stdout)
    assert root.tag == "testsuites" and int(root.get("failures")) == len(gpt_json["findings"])
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(gpt_json["findings"]) and all(c.find("failure") is not None for c in cases)
    clean = ElementTree.fromstring(run(CLEAN, "-f", "junit").stdout)
    assert clean.get("failures") == "0" and len(clean.findall("./testsuite/testcase")) == 1


# ------------------------------------------------------------------------------------------ everything else
def test_statistics_counts_per_rule(gpt_json):
    lines = run(GPT, "--statistics").stdout.strip().splitlines()
    counted = {line.split()[1]: int(line.split()[0]) for line in lines}
    expected = {}
    for f in gpt_json["findings"]:
        expected[f["code"]] = expected.get(f["code"], 0) + 1
    assert counted == expected


def test_output_file_and_env_variable(tmp_path):
    target = tmp_path / "report.sarif"
    result = run(GPT, "-o", target, "--exit-zero", env={"MODNORM_OUTPUT_FORMAT": "sarif"})
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(target.read_text())["version"] == "2.1.0"


def test_full_report_off_a_terminal_is_not_squeezed():
    lines = run(GPT, "--exit-zero").stdout.splitlines()
    assert max(len(l) for l in lines) > 100  # the table widens instead of wrapping at 80 columns
    assert not any(re.search(r"\x1b\[", l) for l in lines)
    colored = run(GPT, "--exit-zero", "--color", "always").stdout
    assert "\x1b[" in colored


@pytest.mark.parametrize("fmt", FORMATS)
def test_exit_codes_are_the_same_in_every_format(fmt):
    assert run(GPT, "-f", fmt).exit_code == 1
    assert run(GPT, "-f", fmt, "--exit-zero").exit_code == 0
    assert run(CLEAN, "-f", fmt).exit_code == 0
    assert run(ROOT / "tests/data/bad/syntax_error.py", "-f", fmt, "--exit-zero").exit_code == 2


def test_unknown_format_is_exit_two():
    assert run(GPT, "-f", "xml").exit_code == 2


def test_pre_commit_hook_runs_the_configured_models():
    """The hook runs `modnorm check` once (no filenames: it checks [tool.modnorm] models) on Python changes, in the
    project's own environment (`language: system`: no second torch install) and prints concise output."""
    import yaml

    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    hook = hooks["modnorm"]
    assert hook["entry"] == "modnorm check --output-format concise" and hook["types"] == ["python"]
    assert hook["pass_filenames"] is False and hook["language"] == "system"
    assert all(h["language"] == "system" for h in hooks.values())


def test_no_color_and_force_color_are_honoured():
    assert "\x1b[" in run(GPT, "--exit-zero", env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[" not in run(GPT, "--exit-zero", "--color", "never", env={"FORCE_COLOR": "1"}).stdout
