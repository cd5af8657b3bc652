"""A CI gate is only as good as its worst exit code: the catalogue of bad inputs.

Every case is something a hostile or careless user can pass. Each must end with exit code 2 (bad input), one
paragraph on stderr that names the file or the option, and never a traceback or "internal error". The model
files are in tests/data/bad (each says in its docstring what it does); paths that cannot be files in a
repository (a FIFO, a symlink loop, a non-UTF-8 pyproject.toml) are made in a temporary directory.
"""

import json
import math
import os
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests/data/bad"
CLEAN = ROOT / "fixtures/clean_mlp.py"
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "model.py")
    return tmp / "model.py"


def _loop(tmp: Path) -> Path:
    (tmp / "a.py").symlink_to(tmp / "b.py")
    (tmp / "b.py").symlink_to(tmp / "a.py")
    return tmp / "a.py"


def _config(text: str | bytes, explicit: bool = False) -> Callable[[Path], list]:
    """A model next to a pyproject.toml holding `text`, found by the upward search from the model file (a file
    without `[tool.modnorm` is not searched for, so those are passed with --config)."""
    def make(tmp: Path) -> list:
        (tmp / "model.py").write_text(CLEAN.read_text())
        target = tmp / "pyproject.toml"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["check", tmp / "model.py", *(["--config", target] if explicit else [])]
    return make


# (id, arguments or a function of a temporary directory giving them, words the message must contain)
CASES = [
    # --- the model's code ends, hangs or crashes the process
    ("sys-exit-0-at-import", ["check", BAD / "exit_at_import.py"], ["exit_at_import.py:", "sys.exit"]),
    ("sys-exit-message-in-factory", ["check", BAD / "exit_with_message.py"], ["exit_with_message.py:", "sys.exit"]),
    ("sys-exit-3-in-forward", ["check", BAD / "exit_three.py"], ["exit_three.py:", "sys.exit"]),
    ("os-exit-at-import", ["check", BAD / "os_exit_at_import.py"], ["os_exit_at_import.py:", "os._exit"]),
    ("os-exit-in-forward", ["check", BAD / "os_exit_in_forward.py"], ["os_exit_in_forward.py:", "os._exit"]),
    ("hang-at-import", ["check", BAD / "hangs_at_import.py", "--timeout", "4"], ["hangs_at_import.py", "--timeout"]),
    ("segfault-at-import", ["check", BAD / "segfault_at_import.py"], ["segfault_at_import.py", "SIGSEGV"]),
    ("keyboard-interrupt-at-import", ["check", BAD / "keyboard_interrupt.py"], ["keyboard_interrupt.py:"]),
    ("probe-sys-exit", ["probe", BAD / "exit_at_import.py"], ["exit_at_import.py:", "sys.exit"]),
    ("probe-os-exit-in-forward", ["probe", BAD / "os_exit_in_forward.py"], ["os_exit_in_forward.py:"]),
    ("sweep-sys-exit", ["check", BAD / "exit_at_import.py", "--sweep", "width=1,2"], ["exit_at_import.py:"]),
    # --- model paths
    ("fifo-named-model-py", _fifo, ["model.py", "not a regular file"]),
    ("symlink-loop", _loop, ["a.py", "symbolic link loop"]),
    ("missing-file", ["check", ROOT / "no/such/model.py"], ["no such file"]),
    ("directory-without-config", ["check", ROOT / "tests/data"], ["tests/data", "directory"]),
    ("not-a-python-file", ["check", ROOT / "README.md"], ["README.md", "not a Python file"]),
    ("unknown-entry", ["check", f"{CLEAN}:nope"], ["clean_mlp.py", "nope"]),
    ("syntax-error", ["check", BAD / "syntax_error.py"], ["syntax_error.py:"]),
    ("factory-raises", ["check", BAD / "factory_raises.py"], ["factory_raises.py:", "ValueError"]),
    ("no-model", ["check", BAD / "no_model.py"], ["no_model.py", "no model found"]),
    ("several-models", ["check", BAD / "several.py"], ["several.py", "several models"]),
    ("data-dependent-fx", ["check", BAD / "data_dependent.py", "--tracer", "fx"], ["data_dependent.py:"]),
    ("forward-raises-fx", ["check", BAD / "forward_raises.py", "--tracer", "fx"], ["forward_raises.py:"]),
    ("example-inputs-not-tensors", ["check", BAD / "example_inputs_wrong_type.py"], ["example_inputs()"]),
    ("newline-in-module-name", ["check", BAD / "newline_name.py"], ["newline_name.py", "odd\\nname"]),
    ("device-cpu-above-max-params", ["check", BAD / "big_model.py", "--device", "cpu"],
     ["big_model.py", "--max-params"]),
    # --- example inputs that do not fit the model
    ("input-of-wrong-width", ["check", BAD / "wrong_width.py"], ["wrong_width.py", "(2, 7)", "Linear"]),
    ("int64-into-linear", ["check", BAD / "integer_input.py"], ["integer_input.py", "int64", "Linear"]),
    ("input-shape-wrong-features", ["check", CLEAN, "--input-shape", "4,100"], ["clean_mlp.py", "(4, 100)"]),
    ("input-shape-long-into-mlp", ["check", CLEAN, "--input-shape", "4,64", "--input-dtype", "long"],
     ["clean_mlp.py", "int64"]),
    ("input-shape-empty", ["check", CLEAN, "--input-shape", ""], ["--input-shape"]),
    ("input-shape-negative", ["check", CLEAN, "--input-shape", "-1,256"], ["--input-shape", "-1,256"]),
    ("input-shape-zero", ["check", CLEAN, "--input-shape", "0,4"], ["--input-shape"]),
    ("input-shape-words", ["check", CLEAN, "--input-shape", "4,abc"], ["--input-shape", "4,abc"]),
    ("input-shape-too-large", ["check", CLEAN, "--input-shape", "100000,100000,1000"], ["--input-shape", "batch"]),
    ("input-dtype-without-shape", ["check", CLEAN, "--input-dtype", "long"], ["--input-dtype", "--input-shape"]),
    ("input-dtype-unknown", ["check", CLEAN, "--input-shape", "2,4", "--input-dtype", "bogus"], ["--input-dtype"]),
    # --- numeric options: finite, in range, right type
    ("hidden-mass-nan", ["check", CLEAN, "--hidden-mass", "nan"], ["--hidden-mass", "nan"]),
    ("hidden-mass-inf", ["check", CLEAN, "--hidden-mass", "inf"], ["--hidden-mass", "inf"]),
    ("hidden-mass-negative", ["check", CLEAN, "--hidden-mass", "-1"], ["--hidden-mass"]),
    ("norm-input-rms-negative", ["check", CLEAN, "--norm-input-rms", "-1"], ["--norm-input-rms"]),
    ("norm-input-rms-nan", ["check", CLEAN, "--norm-input-rms", "nan"], ["--norm-input-rms"]),
    ("mass-of-negative", ["check", CLEAN, "--mass-of", "0=-3"], ["--mass-of", "0=-3"]),
    ("mass-of-nan", ["check", CLEAN, "--mass-of", "fc1=nan"], ["--mass-of", "fc1=nan"]),
    ("mass-of-no-value", ["check", CLEAN, "--mass-of", "fc1"], ["--mass-of", "GLOB=VALUE"]),
    ("rule-option-not-a-number", ["check", CLEAN, "--rule-option", "MN101.high=abc"], ["MN101.high", "abc"]),
    ("rule-option-nan", ["check", CLEAN, "--rule-option", "MN101.high=nan"], ["MN101.high"]),
    ("rule-option-unknown-name", ["check", CLEAN, "--rule-option", "MN101.nope=1"], ["MN101", "nope"]),
    ("rule-option-unknown-code", ["check", CLEAN, "--rule-option", "MN999.high=1"], ["MN999"]),
    ("rule-option-no-dot", ["check", CLEAN, "--rule-option", "MN101high=1"], ["--rule-option"]),
    ("max-params-negative", ["check", CLEAN, "--max-params", "-1"], ["--max-params"]),
    ("timeout-zero", ["check", CLEAN, "--timeout", "0"], ["--timeout"]),
    ("timeout-nan", ["check", CLEAN, "--timeout", "nan"], ["--timeout"]),
    ("kwargs-not-an-identifier", ["check", CLEAN, "--kwargs", "1bad=2"], ["--kwargs"]),
    # --- choices: one list per option
    ("format-bogus", ["check", CLEAN, "-f", "bogus"], ["output-format", "bogus"]),
    ("profile-bogus", ["check", CLEAN, "--profile", "bogus"], ["--profile", "bogus"]),
    ("mass-bogus", ["check", CLEAN, "--mass", "bogus"], ["--mass", "bogus"]),
    ("loss-bogus", ["check", CLEAN, "--loss", "bogus"], ["--loss", "bogus"]),
    ("device-bogus", ["check", CLEAN, "--device", "bogus"], ["--device", "bogus"]),
    ("tracer-bogus", ["check", CLEAN, "--tracer", "bogus"], ["--tracer", "bogus"]),
    ("fail-on-bogus", ["check", CLEAN, "--fail-on", "bogus"], ["--fail-on", "bogus"]),
    ("color-bogus", ["check", CLEAN, "--color", "bogus"], ["--color", "bogus"]),
    ("select-unknown-code", ["check", CLEAN, "--select", "MN999"], ["MN999"]),
    ("probe-trials-zero", ["probe", CLEAN, "--trials", "0"], ["--trials"]),
    ("probe-format-bogus", ["probe", CLEAN, "-f", "bogus"], ["output-format", "bogus"]),
    ("probe-profile-bogus", ["probe", CLEAN, "--profile", "bogus"], ["--profile", "bogus"]),
    ("probe-input-dtype-without-shape", ["probe", CLEAN, "--input-dtype", "long"], ["--input-dtype"]),
    ("rules-format-bogus", ["rules", "-f", "bogus"], ["output-format", "bogus"]),
    ("rule-format-bogus", ["rule", "MN101", "-f", "bogus"], ["output-format", "bogus"]),
    ("rule-unknown", ["rule", "MN999"], ["MN999"]),
    # --- output files
    ("output-file-in-missing-directory", ["check", CLEAN, "-o", "/nonexistent/dir/out.json"],
     ["--output-file", "/nonexistent/dir"]),
    ("output-file-is-a-directory", lambda tmp: ["check", CLEAN, "-o", tmp], ["--output-file", "directory"]),
    ("config-file-missing", ["check", CLEAN, "--config", ROOT / "no/pyproject.toml"], ["no/pyproject.toml"]),
    # --- [tool.modnorm] in pyproject.toml
    ("config-not-utf8", _config(b"[tool.modnorm]\nprofile = \"caf\xe9\"\n"), ["pyproject.toml:2", "UTF-8"]),
    ("config-tool-modnorm-is-a-number", _config("[tool]\nmodnorm = 5\n", explicit=True), ["pyproject.toml", "tool.modnorm"]),
    ("config-tool-is-a-number", _config("tool = 5\n", explicit=True), ["pyproject.toml", "tool"]),
    ("config-hidden-mass-nan", _config("[tool.modnorm]\nhidden-mass = nan\n"), ["pyproject.toml:2", "hidden-mass"]),
    ("config-hidden-mass-inf", _config("[tool.modnorm]\nhidden-mass = inf\n"), ["pyproject.toml:2", "hidden-mass"]),
    ("config-hidden-mass-string", _config("[tool.modnorm]\nhidden-mass = \"big\"\n"), ["pyproject.toml:2"]),
    ("config-rule-option-string", _config("[tool.modnorm.rules.MN101]\nhigh = \"abc\"\n"),
     ["pyproject.toml:2", "high"]),
    ("config-rule-option-bool", _config("[tool.modnorm.rules.MN101]\nhigh = true\n"), ["pyproject.toml:2", "high"]),
    ("config-mass-nan", _config("[tool.modnorm.mass]\n\"fc*\" = nan\n"), ["pyproject.toml", "mass"]),
    ("config-unknown-key", _config("[tool.modnorm]\nprofil = \"modula\"\n"), ["pyproject.toml:2", "profile"]),
    ("config-invalid-toml", _config("[tool.modnorm\n"), ["pyproject.toml", "TOML"]),
    ("config-profile-bogus", _config("[tool.modnorm]\nprofile = \"bogus\"\n"), ["pyproject.toml:2", "profile"]),
    ("config-max-params-negative", _config("[tool.modnorm]\nmax-params = -1\n"), ["pyproject.toml:2"]),
    ("config-timeout-zero", _config("[tool.modnorm]\ntimeout = 0\n"), ["pyproject.toml:2", "timeout"]),
]


@pytest.mark.parametrize("case, arguments, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_paragraph_naming_it(case, arguments, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configuration of the repository is found from here
    args = arguments(tmp_path) if callable(arguments) else arguments
    if isinstance(args, Path):
        args = ["check", args]
    result = run(*args)
    output = result.output
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}\n{output}"
    assert "Traceback" not in output and "internal error" not in output, output
    assert output.strip().startswith("modnorm: error:"), output
    assert len(output.strip().splitlines()) == 1, f"not one paragraph:\n{output}"
    for word in words:
        assert word in output, f"{case}: {word!r} missing from\n{output}"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60


def test_model_prints_never_reach_the_json_on_stdout():
    result = run("check", BAD / "prints.py", "-f", "json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)  # the model printed at import, in the factory and in forward
    assert report["schema"] == "modnorm/1" and "hello" not in result.stdout


def test_module_only_route_reads_an_nn_sequential():
    result = run("check", BAD / "numeric_names.py", "--tracer", "modules", "-f", "json")
    assert result.exit_code in (0, 1), result.output
    layers = {layer["name"] for layer in json.loads(result.stdout)["layers"]}
    assert layers == {"0", "2"}  # the two Linear children, whose names are digits


def test_a_nan_in_the_hidden_mass_never_reaches_json():
    """No option value can put a bare NaN token into the JSON (before the fix: `--hidden-mass nan` did)."""
    result = run("check", ROOT / "fixtures/modula_gpt.py", "-f", "json", "--exit-zero")
    text = result.stdout
    assert result.exit_code == 0
    json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token} in the JSON"))


@pytest.mark.parametrize("scale", [10.0, math.nan])
def test_probe_takes_its_bounds_from_the_weights_it_measures(scale, tmp_path):
    """A checkpoint with every weight x10 is no modnorm bug (the bounds grow with it); a NaN one must not pass."""
    import torch

    from modnorm.loading import load

    model = load(str(CLEAN), device="cpu").model
    torch.save({k: v * scale for k, v in model.state_dict().items()}, tmp_path / "scaled.pt")
    result = run("probe", CLEAN, "--weights", tmp_path / "scaled.pt", "-f", "json")
    assert "Traceback" not in result.output and "internal error" not in result.output
    if math.isnan(scale):
        assert result.exit_code == 2 and "non-finite" in result.output, result.output
    else:
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)["rows"]
        assert rows and not any(row["violated"] for row in rows)


# --- formats with hostile names: a module called "a|b\x1b[31m" in "my dir/100%,v2.py", and a file outside the root
@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    from dataclasses import replace

    from modnorm.check import CheckResult
    from modnorm.config import Settings
    from modnorm.check import check_model
    from modnorm.result import Finding

    base = check_model(str(CLEAN), Settings())
    inside = tmp_path_factory.mktemp("root") / "my dir" / "100%,v2.py"
    outside = tmp_path_factory.mktemp("elsewhere") / "other file.py"
    hostile = Finding("MN101", "atom-norm-out-of-band", "warning", "norm | 2\x1b[31m too \x00 big", "fix | it",
                      "blocks.a|b\x1b[31m", str(inside), 3, related=((str(outside), 7),))
    far = replace(hostile, file=str(outside), module="far")
    return [CheckResult("model|x.py", base.analysis, (hostile, far))], str(inside.parent.parent)


def test_junit_with_control_characters_is_valid_xml(hostile_results):
    from xml.etree import ElementTree

    from modnorm import formats

    results, root = hostile_results
    text = formats.render("junit", results, root)
    document = ElementTree.fromstring(text.split("\n", 1)[1])  # a control character would make this raise
    assert "\\x1b" in ElementTree.tostring(document, encoding="unicode")


def test_step_summary_escapes_pipes_so_the_table_keeps_its_columns(hostile_results):
    from modnorm import formats

    results, root = hostile_results
    rows = [line for line in formats.github_step_summary(results, root).splitlines() if line.startswith("| warning")]
    assert rows
    for row in rows:  # five columns: six unescaped pipes
        assert len([i for i, c in enumerate(row) if c == "|" and row[i - 1:i] != "\\"]) == 6, row


def test_sarif_uris_are_percent_encoded_and_outside_files_are_file_uris(hostile_results):
    from modnorm import formats

    results, root = hostile_results
    run_ = json.loads(formats.render("sarif", results, root))["runs"][0]
    where = {r["properties"]["module"]: r["locations"][0]["physicalLocation"]["artifactLocation"]
             for r in run_["results"]}
    inside, outside = where["blocks.a|b\x1b[31m"], where["far"]
    assert inside == {"uri": "my%20dir/100%25%2Cv2.py", "uriBaseId": "%SRCROOT%"}
    assert outside["uri"].startswith("file:///") and "other%20file.py" in outside["uri"]
    assert "uriBaseId" not in outside
    related = next(r for r in run_["results"] if r["properties"]["module"] == "far")["relatedLocations"][0]["physicalLocation"]["artifactLocation"]
    assert related["uri"].startswith("file:///") and "uriBaseId" not in related
