"""The rule engine: one rule per file in this package, registered automatically by its code.

A rule reads only an `Analysis` (never fx or torch), so it is testable on hand-built analyses. Codes are `MN`
plus three digits whose hundreds are a family: MN0xx the linter itself (suppressions), MN1xx well-normed atoms, MN2xx depth and residual streams,
MN3xx attention, MN4xx width/depth drift (sweeps, `check_sweep`), MN5xx mass and targets, MN6xx normalization and nominal
constants, MN9xx could not certify.
"""

from __future__ import annotations

import fnmatch
from graphlib import TopologicalSorter
import importlib
import pkgutil
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterable, Iterator

from modnorm.grouping import role_of
from modnorm.result import Analysis, Change, Finding, Layer, Severity
from modnorm.whatif import Fix, apply, effect

__all__ = ["Rule", "RuleSelection", "all_rules", "run_rules", "explain", "rank_changes", "fix_of", "run_sweep_rules", "sort_findings", "SEVERITIES",
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
    # Codes whose fixes can remove this rule's finding: when the calculus, re-run with those fixes applied
    # (modnorm.whatif), no longer gives the finding, it is a consequence, not a second defect (`explain`).
    explained_by: ClassVar[tuple[str, ...]] = ()

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

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        """This finding's fix as the numbers it changes (modnorm.whatif.Fix), for rules whose fix the calculus can
        re-run; None for the others."""
        return None

    def same_site(self, finding: Finding, other: Finding) -> bool:
        """Whether `other` (from a re-run) reports what `finding` reports: the same op, else the same module."""
        return (finding.op, finding.module) == (other.op, other.module)

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
    return sort_findings(explain(analysis, findings, selection))


FOLLOWS = "— follows from"  # how a consequence's message names its cause (explain), read back by rank_changes


def _blocking(finding: Finding) -> bool:
    return finding.severity != Severity.INFO


def fix_of(analysis: Analysis, findings: Iterable[Finding], selection: RuleSelection = RuleSelection()) -> Fix:
    """The fixes of `findings` together, as far as their rules can state them as numbers."""
    fix = Fix()
    rules = all_rules()
    for f in findings:
        rule = rules[f.code](**selection.options.get(f.code, {}))
        fix = fix | (rule.counterfactual(f, analysis) or Fix())
    return fix


def explain(analysis: Analysis, findings: list[Finding], selection: RuleSelection = RuleSelection()) -> list[Finding]:
    """One defect, one code: a finding at warning or above that the fixes of its causes (`Rule.explained_by`)
    would remove is a consequence. It stays in the report as info, naming the finding it follows from; the cause
    keeps its severity. Judged by re-running the rule on the analysis with the causes' fixes applied (whatif.py);
    rules are judged causes first, so a consequence names the root (MN301), not a link (MN201), where it can."""
    rules = all_rules()
    order = TopologicalSorter({code: set(rule.explained_by) & set(rules) for code, rule in rules.items()})
    rank = {code: i for i, code in enumerate(order.static_order())}
    rerun = _Reruns(analysis, findings, selection)
    blocking: dict[str, list[int]] = {}  # code -> its findings at warning or above, in order
    for j, f in enumerate(findings):
        if _blocking(f):
            blocking.setdefault(f.code, []).append(j)
    final: dict[int, Finding] = {}
    for i in sorted(range(len(findings)), key=lambda i: rank[findings[i].code]):
        finding = findings[i]
        causes = tuple(sorted(j for code in rules[finding.code].explained_by for j in blocking.get(code, ())))
        if causes and _blocking(finding) and rerun.removes(finding, causes):
            roots = tuple(j for j in causes if _blocking(final[j])) or causes
            for code in sorted({findings[j].code for j in roots}):  # one cause alone may suffice: name just that one
                alone = tuple(j for j in roots if findings[j].code == code)
                if len(alone) < len(roots) and rerun.removes(finding, alone):
                    roots = alone
                    break
            named = _named([findings[j] for j in roots])
            finding = replace(finding, severity=Severity.INFO,
                              message=f"{finding.message} {FOLLOWS} {named}; fixing "
                                      f"{'it' if ',' not in named else 'them'} removes this")
        final[i] = finding
    return [final[i] for i in range(len(findings))]


class _Reruns:
    """The rules re-run on fixed analyses, once per (rule, set of causes): the 64 merges of a 32-layer model share
    their causes, so they share one re-run (what keeps `explain` linear in the findings)."""

    def __init__(self, analysis: Analysis, findings: list[Finding], selection: RuleSelection) -> None:
        self.analysis, self.findings, self.selection = analysis, findings, selection
        self.cache: dict[tuple[str, tuple[int, ...]], list[Finding]] = {}

    def _rule(self, code: str) -> Rule:
        return all_rules()[code](**self.selection.options.get(code, {}))

    def removes(self, finding: Finding, causes: tuple[int, ...]) -> bool:
        """Whether the finding's rule, re-run with the causes' fixes applied, no longer gives it at warning+."""
        key = (finding.code, causes)
        if key not in self.cache:
            fix = fix_of(self.analysis, [self.findings[j] for j in causes], self.selection)
            self.cache[key] = ([g for g in self._rule(finding.code).check(apply(self.analysis, fix)) if _blocking(g)]
                               if fix else [finding])  # no fix stated as numbers: nothing is explained
        rule = self._rule(finding.code)
        return not any(rule.same_site(finding, g) for g in self.cache[key])


def rank_changes(analysis: Analysis, findings: Iterable[Finding], selection: RuleSelection = RuleSelection(),
                 top: int = 3) -> tuple[Change, ...]:
    """The changes that matter most: the findings at warning or above whose fix the calculus can re-run, one
    change per code and role (a repeated block is fixed once, in its code), ranked by how many orders of magnitude
    the fix brings the network's design sensitivity toward 1 and the targets toward equal (`Change.gain`), then by
    how many findings it clears (its own instances and the consequences that name it). Fixes that move neither
    figure closer (an atom's norm alone) are left to their findings."""
    findings = list(findings)
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        if _blocking(f):
            groups.setdefault((f.code, role_of(f.module)), []).append(f)
    changes = []
    for (code, role), instances in groups.items():
        fix = fix_of(analysis, instances, selection)
        if not fix:
            continue
        moved = effect(analysis, fix)
        named = f"{code} ({role or '<model>'})"
        follows = sum(1 for f in findings if FOLLOWS in f.message and named in f.message.split(FOLLOWS)[-1])
        first = min(instances, key=lambda f: (f.file or "", f.line or 0))
        changes.append(Change(code, role, len(instances), first.fix, first.file, first.line, moved.sensitivity,
                              moved.spread, len(instances) + follows))
    helpful = [c for c in changes if c.gain > 0.01]
    return tuple(sorted(helpful, key=lambda c: (-round(c.gain, 2), -c.removes, c.code, c.role))[:top])


def _named(findings: list[Finding]) -> str:
    """`MN201 (blocks.*)`, the causes by code and role, in a stable order."""
    roles: dict[str, set[str]] = {}
    for f in findings:
        roles.setdefault(f.code, set()).add(role_of(f.module) or "<model>")
    return ", ".join(f"{code} ({', '.join(sorted(r))})" for code, r in sorted(roles.items()))


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
