"""pytest plugin (entry point `pytest11`): `assert_well_normed` and a `modnorm` fixture for users' test suites.

Light to import: torch and the analysis load only when an assertion runs.
"""

from __future__ import annotations

from typing import Any, Iterable

import pytest

__all__ = ["assert_well_normed"]


def assert_well_normed(model: Any, example_inputs: Any, *, select: Iterable[str] = ("ALL",),
                       ignore: Iterable[str] = (), fail_on: str = "warning", **options: Any) -> Any:
    """Analyse `model` and fail with the findings (codes, locations, messages) at or above `fail_on`."""
    import modnorm
    from modnorm.rules import RuleSelection, run_rules

    analysis = modnorm.analyze(model, example_inputs, **options)
    findings = run_rules(analysis, RuleSelection(tuple(select), tuple(ignore)))
    rank = {"info": 0, "warning": 1, "error": 2}
    failing = [f for f in findings if rank[f.severity] >= rank[fail_on]]
    if failing:
        lines = []
        for f in failing:
            where = f"{f.file}:{f.line}: " if f.file and f.line else ""
            lines.append(f"{where}{f.code} {f.severity} [{f.module}] {f.message}" + (f" (fix: {f.fix})" if f.fix else ""))
        count = len(failing)
        raise AssertionError(f"modnorm found {count} problem{'s' if count != 1 else ''}:\n  " + "\n  ".join(lines))
    return analysis


@pytest.fixture
def modnorm() -> Any:
    """The `modnorm` package, for tests that call `modnorm.analyze` or `modnorm.testing.assert_well_normed`."""
    import modnorm as package
    import modnorm.testing  # noqa: F401 - so that `modnorm.testing.assert_well_normed` resolves

    return package
