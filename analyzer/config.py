"""`[tool.modnorm]` in the nearest pyproject.toml: the same keys as the command line, validated strictly.

Precedence, lowest first: built-in defaults, the configuration file, command-line options. The nearest
pyproject.toml that has a `[tool.modnorm]` table wins, searched upward from the model file (or from the working
directory for a bare `modnorm check`); `--config PATH` names one explicitly and `--isolated` ignores them all.

    [tool.modnorm]
    models = ["model.py:build_model"]
    select = ["ALL"]
    ignore = ["MN602"]
    fail-on = "warning"
    profile = "assumed"
    hidden-mass = 5
    loss = "xent"
    per-module-ignores = { "blocks.*.attn" = ["MN301"] }
    sweep = { width = [128, 256, 512], depth = [2, 4, 8] }   # --sweep from the file
    leaf-modules = ["MyGatedUnit"]   # --leaf: traced as one op, semantics registered with modnorm.register
    tracer = "auto"                  # or "fx", "export", "oplog", "modules"
    timeout = 600                    # seconds the model's code may run (import, build, trace) before exit 2

    [tool.modnorm.mass]          # module-path globs; matching atoms share the total, as Modula's tare
    "blocks.*" = 5

    [tool.modnorm.rules.MN204]   # per-rule options
    max-sensitivity = 20
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModnormError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Settings", "find_config", "load_config", "settings_from_table", "KEYS", "validate", "check_value"]

# One list of choices per option: the command line, [tool.modnorm] and `modnorm.analyze` all check against these.
SEVERITIES = ("info", "warning", "error")
PROFILES = ("assumed", "certified", "modula")  # assumed: the default (README, docs/theory/profiles.md)
MASS_SCHEMES = ("roles", "uniform")
LOSSES = ("xent", "mse")
DEVICES = ("auto", "meta", "cpu")
TRACERS = ("auto", "fx", "export", "oplog", "modules")  # the routes of tracing.trace, in fallback order
OUTPUT_FORMATS = ("full", "concise", "json", "json-lines", "sarif", "github", "junit", "html")
COLORS = ("auto", "always", "never")
INPUT_DTYPES = ("float", "float32", "float64", "long", "int")
PROBE_FORMATS = ("full", "json")
RULES_FORMATS = ("table", "markdown", "json")
RULE_FORMATS = ("text", "json")
DEFAULT_TIMEOUT = 600.0  # seconds for the model's code (import, build, trace) in the worker process


@dataclass(frozen=True)
class Settings:
    """Everything a check needs besides the model: the merged configuration."""

    models: tuple[str, ...] = ()
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    fail_on: str = "warning"
    profile: str = "assumed"
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
    timeout: float = DEFAULT_TIMEOUT  # seconds the model's code may run (worker.py) before it is stopped
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


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError("a finite number")
    return float(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TypeError("a finite non-negative number")
    return float(value)


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TypeError("a finite positive number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("a non-negative integer")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError("a positive integer")
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
    "profile": ("profile", _choice(*PROFILES)),
    "mass-scheme": ("mass", _choice(*MASS_SCHEMES)),
    "hidden-mass": ("hidden_mass", _number),
    "mass": ("mass_of", _mass_table),
    "loss": ("loss", _choice(*LOSSES)),
    "per-module-ignores": ("per_module_ignores", _ignore_table),
    "rules": ("rule_options", _rule_options),
    "norm-input-rms": ("norm_input_rms", _positive),
    "device": ("device", _choice(*DEVICES)),
    "max-params": ("max_params", _integer),
    "output-format": ("output_format", _choice(*OUTPUT_FORMATS)),
    "sweep": ("sweep", _sweep_table),
    "tracer": ("tracer", _choice(*TRACERS)),
    "leaf-modules": ("leaf", _strings),
    "timeout": ("timeout", _positive),
}

# The scalar settings a command-line option can override, with the option's spelling: `validate` re-checks
# them after the merge with the same checkers the configuration file uses (KEYS), so both refuse the same values.
SCALAR_OPTIONS: dict[str, str] = {field_name: key for key, (field_name, _) in KEYS.items()
                                  if field_name in ("fail_on", "profile", "mass", "hidden_mass", "loss",
                                                    "norm_input_rms", "device", "max_params", "output_format",
                                                    "tracer", "timeout")}


def check_value(key: str, value: Any, option: str) -> Any:
    """`value` converted by the checker of configuration key `key`, or a ModnormError naming `option`."""
    try:
        return KEYS[key][1](value)
    except TypeError as exc:
        raise ModnormError(f"{option} must be {exc}, not {_shown(value)}",
                           "`modnorm check --help` gives its meaning and default") from None


def _shown(value: Any) -> str:
    return f"`{value}`" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def check_rule_option(code: str, name: str, value: Any, default: Any, option: str) -> Any:
    """A rule option's value, of the type of its default (numbers: finite), or a ModnormError naming `option`."""
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return _real(value)
        except TypeError:
            raise ModnormError(f"{option} must be a finite number like its default {default!r}, not {_shown(value)}",
                               f"fix {option}") from None
    if not isinstance(value, type(default)):
        raise ModnormError(f"{option} must be a {type(default).__name__} like its default {default!r}, not "
                           f"{_shown(value)}", f"fix {option}")
    return value


def validate(settings: Settings, spell: Any = lambda key: f"--{key}") -> Settings:
    """Every setting checked (finite, in range, a known choice, right type), whichever source set it; the rule
    options converted to their defaults' types. `spell(key)` names the option in the message."""
    from modnorm.rules import all_rules

    for field_name, key in SCALAR_OPTIONS.items():
        value = getattr(settings, field_name)
        if value is not None or field_name not in ("norm_input_rms", "output_format"):
            check_value(key, value, spell(key))
    for glob, total in settings.mass_of:
        check_value("hidden-mass", total, f"{spell('mass')} `{glob}`")
    rules = all_rules()
    options: dict[str, dict[str, Any]] = {}
    for code, values in settings.rule_options.items():
        if code not in rules:
            raise ModnormError(f"rule options name `{code}`, which is no rule code", "`modnorm rules` lists them")
        defaults = rules[code].options
        for name, value in values.items():
            if name not in defaults:
                raise ModnormError(f"{code} has no option `{name.replace('_', '-')}`",
                                   f"its options are: {', '.join(defaults) or 'none'}")
            checked = check_rule_option(code, name, value, defaults[name], f"{spell('rules')} {code}.{name}")
            options.setdefault(code, {})[name] = checked
    return dataclasses.replace(settings, rule_options=options)


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
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ModnormError(f"the configuration is not UTF-8 text (byte {exc.start} cannot be decoded)",
                           "save the file as UTF-8, as TOML requires", path, line) from None
    except OSError as exc:
        raise ModnormError(f"the configuration cannot be read ({exc.strerror or exc})",
                           "pass a readable pyproject.toml with --config, or --isolated", path) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModnormError(f"the configuration is not valid TOML ({exc})", "fix the syntax of the file", path,
                           getattr(exc, "lineno", None)) from exc
    tool = document.get("tool", {})
    table = tool.get("modnorm", {}) if isinstance(tool, dict) else {}
    if not isinstance(tool, dict) or not isinstance(table, dict):
        where = "tool" if not isinstance(tool, dict) else "modnorm"
        raise ModnormError(f"`{'tool' if where == 'tool' else 'tool.modnorm'}` must be a table, not "
                           f"{(tool if where == 'tool' else table)!r}",
                           "write the settings under a [tool.modnorm] header", path, _line_of(path, where))
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
        for name, value in options.items():
            spelled = name.replace("_", "-")
            try:
                check_rule_option(code, name, value, rules[code].options[name],
                                  f"[tool.modnorm.rules.{code}] `{spelled}`")
            except ModnormError as error:
                raise ModnormError(error.problem, "fix the value in the configuration file", path,
                                   _line_of(path, spelled) or _line_of(path, name)
                                   or _line_of(path, f"rules.{code}")) from None


def merge(base: Settings, **overrides: Any) -> Settings:
    """`base` with every override that is not None (command-line options left unset are None)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"unknown settings: {unknown}")
    return dataclasses.replace(base, **given)
