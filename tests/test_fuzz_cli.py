"""The command line fuzzed in-process: whatever the arguments, the exit code is 0, 1 or 2, nothing escapes as a
traceback, and a machine format on stdout parses (JSON without bare NaN tokens, SARIF, JUnit XML, JSON lines).

Bounded (about 20 s): most drawn argument lists are refused before a model runs; the ones that are valid
analyse a 6k-parameter MLP.
"""

import json
import math
from pathlib import Path
from xml.etree import ElementTree

from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

HOSTILE = ["", "-1", "0", "nan", "inf", "-inf", "1e309", "abc", "2,4", "4,24", "-1,24", "'", "\x00", "a|b",
           "MN101", "MN101.high=abc", "MN101.high=3", "0=-3", "fc*=2", "x=1", "long", "float", "json", "…", "\n"]
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10, 10**12).map(str))
VALUE = st.one_of(st.sampled_from(HOSTILE), NUMBERS, st.text(max_size=8))
OPTIONS = ["--hidden-mass", "--norm-input-rms", "--mass-of", "--rule-option", "--max-params", "--input-shape",
           "--input-dtype", "--profile", "--mass", "--loss", "--device", "--tracer", "--fail-on", "--select",
           "--ignore", "--kwargs", "--timeout", "--color"]
MACHINE = ["json", "json-lines", "sarif", "junit", "concise", "github"]
TARGETS = [ROOT / "fixtures/clean_mlp.py", ROOT / "tests/data/bad/no_model.py", ROOT / "no/such.py"]


@st.composite
def command_lines(draw) -> list[str]:
    options = draw(st.lists(st.tuples(st.sampled_from(OPTIONS), VALUE), max_size=3))
    args = ["check", str(draw(st.sampled_from(TARGETS))), "-f", draw(st.sampled_from(MACHINE))]
    for option, value in options:
        args += [option, value]
    return args


def assert_parses(output_format: str, text: str) -> None:
    no_nan = {"parse_constant": lambda token: (_ for _ in ()).throw(AssertionError(f"bare {token}"))}
    if output_format in ("json", "sarif"):
        json.loads(text, **no_nan)
    elif output_format == "json-lines":
        for line in text.splitlines():
            json.loads(line, **no_nan)
    elif output_format == "junit":
        ElementTree.fromstring(text.split("\n", 1)[1])


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(args=command_lines())
def test_any_command_line_exits_0_1_or_2_without_a_traceback(args):
    if "\x00" in "".join(args):  # the OS refuses NUL in argv before modnorm sees it
        return
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output and "internal error" not in result.output, (args, result.output)
    if result.exit_code in (0, 1):
        assert_parses(args[3], result.stdout)
    else:
        assert result.output.strip().startswith(("modnorm: error:", "Usage:")), (args, result.output)


def test_a_float_option_drawn_as_nan_is_refused():
    """The fuzzer's most common catch, pinned: nan and inf are not numbers an option may take."""
    for value in ("nan", "inf", repr(math.inf)):
        result = runner.invoke(app, ["check", str(TARGETS[0]), "--hidden-mass", value])
        assert result.exit_code == 2 and "--hidden-mass" in result.output
