"""The JSON report of every fixture equals its golden (tests/data/golden, written by `python tests/golden.py --update`
from the code before the structural refactoring): a change of structure must not change what modnorm prints."""

import json
import math

import pytest

from tests.golden import FIXTURES, golden_path, report_of


def differences(expected, actual, where="$", rel=1e-5, tiny=2e-6):
    """Paths at which two JSON values differ; floats compare to a relative tolerance, and below `tiny` are noise.
    The certified norm brackets of measured weights come from LAPACK and iterative solvers whose last digits
    differ between CPUs (1.00000097 vs 1.00000066 for one spectral norm, fitted exponents of 2e-7 vs 3e-7 for a
    flat sweep): a golden guards what modnorm says, to the digits it prints, not the machine's rounding."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}.{k}: missing" for k in expected.keys() - actual.keys()]
        out += [f"{where}.{k}: unexpected" for k in actual.keys() - expected.keys()]
        for k in expected.keys() & actual.keys():
            out += differences(expected[k], actual[k], f"{where}.{k}", rel, tiny)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: length {len(expected)} != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]", rel, tiny)]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        if math.isclose(expected, actual, rel_tol=rel, abs_tol=tiny) or expected == actual:
            return []
        return [f"{where}: {expected!r} != {actual!r}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def test_differences_sees_a_changed_float_and_ignores_rounding():
    assert differences({"a": [1.0, "x"]}, {"a": [1.0 + 1e-7, "x"]}) == []
    assert differences({"a": 2e-7}, {"a": 3e-7}) == []
    assert differences({"a": [1.0]}, {"a": [1.001]}) == ["$.a[0]: 1.0 != 1.001"]
    assert differences({"a": 1}, {"b": 1}) == ["$.a: missing", "$.b: unexpected"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_report_matches_golden(fixture):
    expected = json.loads(golden_path(fixture).read_text())
    found = differences(expected, report_of(fixture))
    assert not found, f"{fixture.stem} changed (update with `python tests/golden.py --update` only for a deliberate " \
                      f"fix):\n" + "\n".join(found[:30])
