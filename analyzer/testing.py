"""pytest plugin (entry point `pytest11`): `assert_well_normed` and a `modnorm` fixture for users' test suites.

`assert_well_normed` reports what `modnorm check` reports for the same model and configuration: it reads the
nearest `[tool.modnorm]` (searched upward from the file that defines the model's class, as the CLI searches from
the model file), applies per-module ignores and `# modnorm: ignore[...]` comments, and locates findings the same
way. Light to import: torch and the analysis load only when an assertion runs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterable

import pytest

__all__ = ["assert_well_normed", "check_module"]

_RANK = {"info": 0, "warning": 1, "error": 2}


def _model_source(model: Any) -> tuple[str | None, int | None]:
    """The file and line defining the model's class, when that is the user's code (not torch's own Sequential)."""
    from modnorm.errors import _INTERNAL

    try:
        file = inspect.getsourcefile(type(model))
        line = inspect.getsourcelines(type(model))[1]
    except (OSError, TypeError):
        return None, None
    if file is None or _INTERNAL.search(file):
        return None, None
    return str(Path(file).resolve()), line


def _settings(source: str | None, config: str | Path | None, isolated: bool, overrides: dict[str, Any]) -> Any:
    from modnorm.config import Settings, find_config, load_config, merge

    base = Settings()
    if config is not None:
        base = load_config(Path(config))
    elif not isolated:
        found = find_config(Path(source).parent if source else Path.cwd())
        base = load_config(found) if found is not None else base
    return merge(base, **overrides)


def check_module(model: Any, example_inputs: Any, *, file: str | None = None, config: str | Path | None = None,
                 isolated: bool = False, **overrides: Any) -> Any:
    """Analyse an `nn.Module` as `modnorm check` would (configuration, suppressions): a `CheckResult`.

    `overrides` are `Settings` fields (select, ignore, fail_on, profile, mass, hidden_mass, mass_of, loss,
    norm_input_rms, rule_options, per_module_ignores) and win over the configuration file.
    """
    return _check(model, example_inputs, file, config, isolated, overrides)[0]


def _check(model: Any, example_inputs: Any, file: str | None, config: str | Path | None, isolated: bool,
           overrides: dict[str, Any]) -> tuple[Any, Any]:
    import modnorm
    from modnorm.check import check_analysis

    source, line = (str(Path(file).resolve()), None) if file else _model_source(model)
    settings = _settings(source, config, isolated, overrides)
    analysis = modnorm.analyze(model, example_inputs, file=source, profile=settings.profile, mass=settings.mass,
                               hidden_mass=settings.hidden_mass, mass_of=settings.mass_of,
                               norm_input_rms=settings.norm_input_rms, loss=settings.loss)
    return check_analysis(type(model).__name__, analysis, settings, source, line), settings


def assert_well_normed(model: Any, example_inputs: Any, *, select: Iterable[str] | None = None,
                       ignore: Iterable[str] | None = None, fail_on: str | None = None,
                       config: str | Path | None = None, isolated: bool = False, **options: Any) -> Any:
    """Analyse `model` and fail with its findings at or above `fail_on` (default: the configuration's, else
    warning), listed as `path:line: CODE severity [module] message (fix: ...)`. Returns the `Analysis`.

    `select`, `ignore` and `options` (profile, hidden_mass, ...) override `[tool.modnorm]`; `config` names a
    pyproject.toml, `isolated=True` ignores every configuration file.
    """
    __tracebackhide__ = True  # pytest: show the user's assertion line, not this plugin's frames and arguments
    from modnorm.errors import ModnormError

    overrides = {**options, "select": tuple(select) if select is not None else None,
                 "ignore": tuple(ignore) if ignore is not None else None, "fail_on": fail_on}
    try:
        result, settings = _check(model, example_inputs, None, config, isolated, overrides)
    except ModnormError as exc:
        raise AssertionError(f"modnorm could not check {type(model).__name__}: {exc}") from None
    failing = [f for f in result.findings if _RANK[f.severity] >= _RANK[settings.fail_on]]
    if failing:
        raise AssertionError(_message(type(model).__name__, failing, settings.root)) from None
    return result.analysis


def _message(model: str, findings: list[Any], root: str | None) -> str:
    from modnorm.report import relative_path

    lines = []
    for f in findings:
        where = f"{relative_path(f.file, root)}:{f.line}: " if f.file and f.line else ""
        lines.append(f"{where}{f.code} {f.severity} [{f.module or '<model>'}] {f.message}"
                     + (f" (fix: {f.fix})" if f.fix else ""))
    count = len(findings)
    return f"modnorm found {count} problem{'s' if count != 1 else ''} in {model}:\n  " + "\n  ".join(lines)


@pytest.fixture
def modnorm() -> Any:
    """The `modnorm` package, for tests that call `modnorm.analyze` or `modnorm.testing.assert_well_normed`."""
    import modnorm as package
    import modnorm.testing  # noqa: F401 - so that `modnorm.testing.assert_well_normed` resolves

    return package
