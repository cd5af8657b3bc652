"""The rule engine: one rule per file in this package, registered automatically by its code.

A rule reads only an `Analysis` (never fx or torch), so it is testable on hand-built analyses. Codes are `MN`
plus three digits whose hundreds are a family: MN0xx the linter itself (suppressions), MN1xx well-normed atoms, MN2xx depth and residual streams,
MN3xx attention, MN4xx width/depth drift (sweeps, `check_sweep`), MN5xx mass and targets, MN6xx normalization and nominal
constants, MN9xx could not certify.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

from modnorm.result import Analysis, Finding, Layer, Severity

__all__ = ["Rule", "RuleSelection", "all_rules", "run_rules", "run_sweep_rules", "sort_findings", "SEVERITIES",
           "Severity"]

SEVERITIES = tuple(Severity)  # ("info", "warning", "error")
_CODE = re.compile(r"^MN\d{3}$")


class Rule:
    """Base class. Subclasses set `code`, `name`, `severity`, optional `options`, and implement `check`."""

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity] = Severity.WARNING
    options: ClassVar[dict[str, Any]] = {}
    registry: ClassVar[dict[str, type["Rule"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _CODE.match(getattr(cls, "code", "")):
            raise TypeError(f"{cls.__name__}: rule code must look like MN123")
        if cls.code in Rule.registry and Rule.registry[cls.code] is not cls:
            raise TypeError(f"duplicate rule code {cls.code} ({cls.__name__}, {Rule.registry[cls.code].__name__})")
        if cls.severity not in SEVERITIES:
            raise TypeError(f"{cls.__name__}: severity must be one of {SEVERITIES}")
        Rule.registry[cls.code] = cls

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"{self.code} has no option {', '.join(sorted(unknown))}")
        self.config = {**self.options, **options}

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        """Rules on single analyses override this; a rule on scale sweeps only (MN4xx) keeps it: nothing."""
        return iter(())

    def check_sweep(self, sweep: Any) -> Iterator[Finding]:
        """Rules on a scale sweep (modnorm.sweep.Sweep) override this; the others see single analyses only."""
        return iter(())

    def finding(self, message: str, *, fix: str = "", module: str = "", file: str | None = None,
                line: int | None = None, op: str = "", severity: str | None = None,
                related: tuple[tuple[str, int], ...] = ()) -> Finding:
        return Finding(self.code, self.name, Severity(severity or self.severity), message, fix, module, file, line, op,
                       related)

    def layer_finding(self, layer: Layer, message: str, *, fix: str = "", severity: str | None = None,
                      related: tuple[tuple[str, int], ...] = ()) -> Finding:
        """A finding on an atom: located where the module is called, its definition as a related location."""
        defined = (layer.defined_at,) if layer.defined_at and layer.defined_at != (layer.file, layer.line) else ()
        return self.finding(message, fix=fix, module=layer.name, file=layer.file, line=layer.line, op=layer.op,
                            severity=severity, related=defined + related)


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("mn"):
            importlib.import_module(f"{__name__}.{info.name}")


def all_rules() -> dict[str, type[Rule]]:
    """Every registered rule, by code, sorted."""
    _load_all()
    return dict(sorted(Rule.registry.items()))


@dataclass(frozen=True)
class RuleSelection:
    """ruff-style selection: codes or prefixes (`MN2`, `ALL`); ignore wins over select."""

    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_module_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (module-path glob, codes or prefixes)

    def enabled(self, code: str) -> bool:
        chosen = any(_matches(code, p) for p in self.select + self.extend_select)
        return chosen and not any(_matches(code, p) for p in self.ignore)

    def ignored_in(self, code: str, module: str) -> bool:
        """True when a per-module ignore glob matches `module` (or one of its parents) and names `code`."""
        parents = module.split(".")
        paths = [".".join(parents[:i]) for i in range(len(parents), 0, -1)]
        return any(any(_matches(code, c) for c in codes) and any(fnmatch.fnmatchcase(p, glob) for p in paths)
                   for glob, codes in self.per_module_ignores)


def _matches(code: str, pattern: str) -> bool:
    return pattern == "ALL" or code.startswith(pattern.upper())


_ORDER = {s: -s.rank for s in Severity}  # most severe first


def run_rules(analysis: Analysis, selection: RuleSelection = RuleSelection()) -> tuple[Finding, ...]:
    """Run every enabled rule; findings sorted most severe first, then by file and line."""
    findings: list[Finding] = []
    for code, rule_class in all_rules().items():
        if selection.enabled(code):
            rule = rule_class(**selection.options.get(code, {}))
            findings.extend(f for f in rule.check(analysis) if not selection.ignored_in(f.code, f.module))
    return sort_findings(findings)


def run_sweep_rules(sweep: Any, selection: RuleSelection = RuleSelection()) -> tuple[Finding, ...]:
    """The MN4xx rules (and any rule with check_sweep) on a sweep."""
    findings: list[Finding] = []
    for code, rule_class in all_rules().items():
        if selection.enabled(code):
            rule = rule_class(**selection.options.get(code, {}))
            findings.extend(f for f in rule.check_sweep(sweep) if not selection.ignored_in(f.code, f.module))
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Most severe first, then by file, line and code."""
    return tuple(sorted(findings, key=lambda f: (_ORDER[f.severity], f.file or "", f.line or 0, f.code)))


def rules_markdown() -> str:
    """The rules table of README.md, generated from the rule docs (a test keeps README in sync)."""
    lines = ["| code | name | severity | what it does |", "| --- | --- | --- | --- |"]
    for code, rule in all_rules().items():
        summary = " ".join(rule.__doc__.split("## What it does")[1].split("##")[0].split())
        lines.append(f"| {code} | {rule.name} | {rule.severity} | {summary} |")
    return "\n".join(lines)
