"""`[tool.modnorm]` in the nearest pyproject.toml: the same keys as the command line, validated strictly.

Precedence, lowest first: built-in defaults, the configuration file, command-line options. The nearest
pyproject.toml that has a `[tool.modnorm]` table wins, searched upward from the model file (or from the working
directory for a bare `modnorm check`); `--config PATH` names one explicitly and `--isolated` ignores them all.

    [tool.modnorm]
    models = ["model.py:build_model"]
    select = ["ALL"]
    ignore = ["MN602"]
    fail-on = "warning"
    profile = "certified"
    hidden-mass = 5
    loss = "xent"
    per-module-ignores = { "blocks.*.attn" = ["MN301"] }
    sweep = { width = [128, 256, 512], depth = [2, 4, 8] }   # --sweep from the file
    leaf-modules = ["MyGatedUnit"]   # --leaf: traced as one op, semantics registered with modnorm.register
    tracer = "auto"                  # or "fx", "export", "oplog", "modules"

    [tool.modnorm.mass]          # module-path globs; matching atoms share the total, as Modula's tare
    "blocks.*" = 5

    [tool.modnorm.rules.MN204]   # per-rule options
    max-sensitivity = 20
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModnormError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Settings", "find_config", "load_config", "settings_from_table", "KEYS"]

SEVERITIES = ("info", "warning", "error")
TRACERS = ("auto", "fx", "export", "oplog", "modules")  # the routes of tracing.trace, in fallback order
OUTPUT_FORMATS = ("full", "concise", "json", "json-lines", "sarif", "github", "junit", "html")


@dataclass(frozen=True)
class Settings:
    """Everything a check needs besides the model: the merged configuration."""

    models: tuple[str, ...] = ()
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    fail_on: str = "warning"
    profile: str = "certified"
    mass: str = "roles"
    hidden_mass: float = 1.0
    mass_of: tuple[tuple[str, float], ...] = ()
    loss: str = "xent"
    per_module_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    norm_input_rms: float | None = None
    device: str = "auto"
    max_params: int = 100_000_000
    output_format: str | None = None
    sweep: tuple[str, ...] = ()  # "NAME=V1,V2" items, as --sweep takes them
    weights: str | None = None  # "init" or a checkpoint path (--weights)
    tracer: str = "auto"  # "auto" (fx, export, oplog, modules in turn) | "fx" | "export" | "oplog" | "modules"
    leaf: tuple[str, ...] = ()  # module class names traced as one op (their semantics registered by the user)
    config_file: str | None = None
    root: str | None = None  # the directory paths in the report are made relative to


# key -> (Settings field, checker). A checker returns the converted value or raises TypeError with the expectation.
def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return tuple(value)


def _codes(value: Any) -> tuple[str, ...]:
    return tuple(code.strip().upper() for code in _strings(value))


def _choice(*choices: str) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise TypeError(" or ".join(f'"{c}"' for c in choices))
        return value
    return check


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TypeError("a non-negative number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("a non-negative integer")
    return value


def _mass_table(value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict):
        raise TypeError('a table of module-path globs to masses, e.g. { "blocks.*" = 5 }')
    return tuple((glob, _number(total)) for glob, total in value.items())


def _ignore_table(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise TypeError('a table of module-path globs to lists of codes, e.g. { "blocks.*.attn" = ["MN301"] }')
    return tuple((glob, _codes(codes)) for glob, codes in value.items())


def _sweep_table(value: Any) -> tuple[str, ...]:
    if not isinstance(value, dict) or not all(isinstance(v, list) and v for v in value.values()):
        raise TypeError('a table of factory keywords to lists of sizes, e.g. { width = [128, 256, 512] }')
    return tuple(f"{name}={','.join(str(x) for x in values)}" for name, values in value.items())


def _rule_options(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise TypeError("a table of rule codes to tables of options, e.g. [tool.modnorm.rules.MN204]")
    return {code.upper(): {k.replace("-", "_"): v for k, v in options.items()} for code, options in value.items()}


KEYS: dict[str, tuple[str, Any]] = {
    "models": ("models", _strings),
    "select": ("select", _codes),
    "ignore": ("ignore", _codes),
    "extend-select": ("extend_select", _codes),
    "fail-on": ("fail_on", _choice(*SEVERITIES)),
    "profile": ("profile", _choice("certified", "modula")),
    "mass-scheme": ("mass", _choice("roles", "uniform")),
    "hidden-mass": ("hidden_mass", _number),
    "mass": ("mass_of", _mass_table),
    "loss": ("loss", _choice("xent", "mse")),
    "per-module-ignores": ("per_module_ignores", _ignore_table),
    "rules": ("rule_options", _rule_options),
    "norm-input-rms": ("norm_input_rms", _number),
    "device": ("device", _choice("auto", "meta", "cpu")),
    "max-params": ("max_params", _integer),
    "output-format": ("output_format", _choice(*OUTPUT_FORMATS)),
    "sweep": ("sweep", _sweep_table),
    "tracer": ("tracer", _choice(*TRACERS)),
    "leaf-modules": ("leaf", _strings),
}


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start` that has a [tool.modnorm] table."""
    start = start.resolve()
    for directory in [start, *start.parents] if start.is_dir() else start.parents:
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and "[tool.modnorm" in candidate.read_text(errors="replace"):
            return candidate
    return None


def _line_of(path: Path, key: str) -> int | None:
    """The line that sets `key` (best effort, for the error message)."""
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith((key, f'"{key}"')) or stripped.startswith(f"[tool.modnorm.{key}"):
            return number
    return None


def load_config(path: Path) -> Settings:
    """Read and validate `[tool.modnorm]` of `path`."""
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ModnormError(f"the configuration is not valid TOML ({exc})", "fix the syntax of the file", path,
                           getattr(exc, "lineno", None)) from exc
    table = document.get("tool", {}).get("modnorm", {})
    return settings_from_table(table, path)


def settings_from_table(table: dict[str, Any], path: Path) -> Settings:
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in KEYS:
            close = [k for k in KEYS if k.replace("-", "") == key.replace("-", "").replace("_", "")]
            hint = f"did you mean `{close[0]}`?" if close else f"the keys are: {', '.join(KEYS)}"
            raise ModnormError(f"unknown key `{key}` in [tool.modnorm]", hint, path, _line_of(path, key))
        name, checker = KEYS[key]
        try:
            values[name] = checker(raw)
        except TypeError as exc:
            raise ModnormError(f"[tool.modnorm] `{key}` must be {exc}, not {raw!r}",
                               "fix the value in the configuration file", path, _line_of(path, key)) from None
    _check_codes(values, path)
    root = str(path.parent.resolve())
    return Settings(**values, config_file=str(path), root=root)


def _check_codes(values: dict[str, Any], path: Path) -> None:
    from modnorm.rules import all_rules

    known = set(all_rules())
    for key, name in (("select", "select"), ("ignore", "ignore"), ("extend-select", "extend_select")):
        for code in values.get(name, ()):
            if code != "ALL" and not any(k.startswith(code) for k in known):
                raise ModnormError(f"[tool.modnorm] `{key}` names `{code}`, which is no rule code or prefix",
                                   "`modnorm rules` lists the codes", path, _line_of(path, key))
    for glob, codes in values.get("per_module_ignores", ()):
        for code in codes:
            if code != "ALL" and not any(k.startswith(code) for k in known):
                raise ModnormError(f"[tool.modnorm] `per-module-ignores` for `{glob}` names `{code}`, which is no "
                                   "rule code or prefix", "`modnorm rules` lists the codes", path,
                                   _line_of(path, "per-module-ignores"))
    rules = all_rules()
    for code, options in values.get("rule_options", {}).items():
        if code not in rules:
            raise ModnormError(f"[tool.modnorm.rules] has options for `{code}`, which is no rule code",
                               "`modnorm rules` lists the codes", path, _line_of(path, f"rules.{code}"))
        unknown = set(options) - set(rules[code].options)
        if unknown:
            allowed = ", ".join(k.replace("_", "-") for k in rules[code].options) or "none"
            option = sorted(unknown)[0]
            raise ModnormError(f"{code} has no option `{option.replace('_', '-')}`", f"its options are: {allowed}",
                               path, _line_of(path, option) or _line_of(path, f"rules.{code}"))


def merge(base: Settings, **overrides: Any) -> Settings:
    """`base` with every override that is not None (command-line options left unset are None)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"unknown settings: {unknown}")
    return dataclasses.replace(base, **given)
