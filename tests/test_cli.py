"""The command line: exit codes 0/1/2, one-paragraph errors naming file and line, selection, formats."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnorm import __version__
from modnorm.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests/data/bad"


def run(*args):
    return runner.invoke(app, list(map(str, args)))


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"modnorm {__version__}"


def test_clean_model_exits_zero_and_prints_the_table():
    result = run("check", ROOT / "fixtures/clean_mlp.py")
    assert result.exit_code == 0
    assert "fc1" in result.stdout and "target" in result.stdout and "no findings" in result.stdout


def test_findings_exit_one_and_exit_zero_overrides():
    assert run("check", ROOT / "fixtures/deep_mlp.py").exit_code == 1
    assert run("check", ROOT / "fixtures/deep_mlp.py", "--exit-zero").exit_code == 0
    assert run("check", ROOT / "fixtures/deep_mlp.py", "--fail-on", "error").exit_code == 0


def test_select_and_ignore_by_code_and_prefix():
    def codes(*extra):
        result = run("check", ROOT / "fixtures/nanogpt.py", "-f", "json", "--exit-zero", *extra)
        return {f["code"] for f in json.loads(result.stdout)["findings"]}

    assert codes("--select", "MN2") == {"MN201", "MN203", "MN204"}
    assert "MN301" not in codes("--ignore", "MN301")
    assert codes("--select", "MN101", "--extend-select", "MN903") == {"MN101", "MN903"}
    assert codes("--select", "ALL", "--ignore", "MN") == set()


def test_json_schema_fields():
    report = json.loads(run("check", ROOT / "fixtures/modula_gpt.py", "-f", "json", "--exit-zero").stdout)
    assert report["schema"] == "modnorm/1"
    assert set(report["model"]) >= {"file", "entry", "tracer"}
    assert set(report["network"]) >= {"mass", "sensitivity", "certified", "uncertified_reasons"}
    layer = report["layers"][0]
    assert set(layer) >= {"name", "kind", "shape", "mass", "mass_share", "sensitivity", "downstream_sensitivity",
                          "target_norm", "norm_at_init", "norm_source", "certified", "file", "line"}
    assert report["model"]["tracer"] == "fx_values"


@pytest.mark.parametrize("name, line, words", [
    ("syntax_error.py", 3, "syntax error"),
    ("factory_raises.py", 6, "width must be even"),
    ("several.py", None, "several models found (a, b)"),
    ("no_model.py", None, "no model found"),
])
def test_bad_input_is_one_paragraph_with_file_and_line(name, line, words):
    result = run("check", BAD / name)
    assert result.exit_code == 2
    message = result.stderr
    assert "Traceback" not in message and words in message and name in message
    if line:
        assert f"{name}:{line}:" in message
    assert message.count("\n") == 1


def test_data_dependent_flow_with_the_fx_route_forced_is_one_paragraph():
    result = run("check", BAD / "data_dependent.py", "--tracer", "fx")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "data_dependent.py:11:" in result.stderr and "x.sum() > 0" in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_file_and_bad_options_exit_two():
    assert run("check", "does_not_exist.py").exit_code == 2
    assert run("check", ROOT / "fixtures/clean_mlp.py", "--profile", "bogus").exit_code == 2
    assert run("check", ROOT / "fixtures/clean_mlp.py", "--mass-of", "nomatch.*=2").exit_code == 2
    assert run("check", ROOT / "fixtures/clean_mlp.py", "--exit-zero", "--input-shape", "x,y").exit_code == 2


def test_unknown_op_is_reported_not_skipped():
    result = run("check", ROOT / "fixtures/uncertified_ops.py", "-f", "json", "--exit-zero")
    network = json.loads(result.stdout)["network"]
    assert network["certified"] is False and network["sensitivity"] is None
    assert any("cumprod" in op for op in network["unknown_ops"])


def test_input_shape_option_replaces_example_inputs(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("from torch import nn\nmodel = nn.Sequential(nn.Linear(8, 8), nn.Tanh())\n")
    assert run("check", model, "--exit-zero").exit_code == 2
    result = run("check", model, "--input-shape", "2,8", "-f", "json", "--exit-zero")
    assert result.exit_code == 0 and json.loads(result.stdout)["layers"][0]["shape"] == [8, 8]


@pytest.mark.slow  # tens of seconds: CI's second step (pytest -m slow)
def test_a_65b_parameter_llama_shape_is_analysed_on_meta_in_little_memory():
    """Issue #2: a 65B-parameter configuration on the meta device: no weights allocated. README's claim, "peak RSS
    under 500 MB" (about 370 MB measured), is measured in a fresh child process, by the child itself
    (RUSAGE_SELF at its exit), so no other process of the test run enters the number."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "from modnorm.cli import main\n"
            "sys.argv = ['modnorm', 'check', sys.argv[1], '--kwargs', 'dim=8192', '--kwargs', 'n_layers=61',\n"
            "            '--kwargs', 'n_heads=64', '-f', 'json', '--exit-zero']\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as exit:\n"
            "    code = exit.code\n"
            "else:\n"
            "    code = 0\n"
            "print(f'peak-rss-kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "fixtures/llama_block.py")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stderr.split("peak-rss-kb ")[-1].split()[0]) / 1024
    report = json.loads(done.stdout)
    print(f"65B-shaped check: peak RSS of the child {peak_mb:.0f} MB")
    assert report["model"]["device"] == "meta" and report["model"]["parameters"] >= 65e9
    assert report["network"]["unknown_ops"] == []
    assert peak_mb < 500


def test_input_dtype_long_feeds_token_ids(tmp_path):
    """--input-shape with --input-dtype long builds integer ids: the embedding is the input atom and the network's
    sensitivity is counted from the lookup (ids carry no perturbation)."""
    model = tmp_path / "lm.py"
    model.write_text("from torch import nn\nmodel = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))\n")
    result = run("check", model, "--input-shape", "2,6", "--input-dtype", "long", "-f", "json", "--exit-zero")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(layer["kind"], layer["role"]) for layer in report["layers"]] == [("Embedding", "input"),
                                                                                ("Linear", "output")]
    assert report["network"]["sensitivity"] is not None and report["network"]["certified"]


def test_norm_input_rms_replaces_eps_in_the_normalization_constant(tmp_path):
    """A LayerNorm(eps=1e-5) with nothing bounding its input RMS from below has constant 1/√eps ≈ 316.2; with
    --norm-input-rms 0.5 the constant is 1/0.5 = 2, and the assumption is listed (docs/theory/constants.md)."""
    model = tmp_path / "ln.py"
    model.write_text("from torch import nn\nmodel = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))\n")

    def gain(*extra):
        report = json.loads(run("check", model, "--input-shape", "2,8", "-f", "json", "--exit-zero", "--profile",
                                "certified", *extra).stdout)
        layer = next(layer for layer in report["layers"] if layer["kind"] == "Gain")
        return layer["sensitivity"], report["network"]["assumptions"]

    plain, assumptions = gain()
    assert plain == pytest.approx(1 / 1e-5 ** 0.5, rel=1e-3) and assumptions == []
    assumed, assumptions = gain("--norm-input-rms", "0.5")
    assert assumed == pytest.approx(2.0, rel=1e-6)
    assert len(assumptions) == 1 and "0.5" in assumptions[0] and "--norm-input-rms" in assumptions[0]


def test_verbose_adds_the_sharpness_columns():
    quiet = run("check", ROOT / "fixtures/clean_mlp.py", "--color", "never")
    loud = run("check", ROOT / "fixtures/clean_mlp.py", "--color", "never", "--verbose")
    assert quiet.exit_code == loud.exit_code == 0
    assert loud.stdout.count("α") > quiet.stdout.count("α")  # the per-layer α column, beyond the summary line
    assert len(loud.stdout.splitlines()) > len(quiet.stdout.splitlines())
