"""Machine output formats: concise, json, json-lines, sarif, github, junit, and `--statistics`.

Each takes the list of `CheckResult`s of one run (one per model) and returns text. Paths are made relative to
`root` (the directory of the configuration file, else the working directory), which is what GitHub code
scanning and editors expect. `full` (rich) lives in report.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from urllib.parse import quote
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence
from xml.etree import ElementTree as ET

from ._version import __version__
from .result import Finding
from .report import SCHEMA, assumption_lines, fmt, relative_path, relative_text, to_dict

__all__ = ["FORMATS", "render", "statistics", "github_step_summary", "relative_path", "fingerprint",
           "stable_identity"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}
_RANK = {"error": 0, "warning": 1, "info": 2}


def _dumps(document: Any, indent: int | None = 2) -> str:
    """JSON with every non-finite number as null: a bare NaN or Infinity token is not JSON, and parsers refuse it."""
    return json.dumps(_finite(document), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _all(results: Sequence[Any]) -> list[tuple[Any, Finding]]:
    pairs = [(r, f) for r in results for f in r.findings]
    return sorted(pairs, key=lambda p: (_RANK[p[1].severity], p[1].file or "", p[1].line or 0, p[1].code))


def _location(f: Finding, root: str | None, fallback: str | None) -> tuple[str, int]:
    """The finding's file and line; a finding with no source line points at the model file, line 1."""
    return relative_path(f.file or fallback, root), f.line or 1


# ------------------------------------------------------------------------------------------------- concise
def concise(results: Sequence[Any], root: str | None = None) -> str:
    lines = []
    for result, f in _all(results):
        path, line = _location(f, root, result.analysis.model.file)
        lines.append(f"{path}:{line}:1: {f.code} [{f.module or '<model>'}] {f.message}")
    count = len(lines)
    lines.append(f"Found {count} finding{'s' if count != 1 else ''}." if count else "All checks passed!")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- json
def json_report(results: Sequence[Any], root: str | None = None) -> str:
    """One model: the `modnorm/1` document. Several (from `models = [...]`): a JSON array of them."""
    documents = [to_dict(r.analysis, r.findings, root, getattr(r, "changes", ())) | {"target": r.target}
                 | ({"note": relative_text(r.note, root)} if getattr(r, "note", "") else {}) | _sweep_dict(r.sweep)
                 for r in results]
    return _dumps(documents[0] if len(documents) == 1 else documents)


def _sweep_dict(sweep: Any) -> dict[str, Any]:
    if sweep is None:
        return {}
    number = lambda x: x if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") else None  # noqa: E731
    return {"sweep": {
        "axes": [{"name": a.name, "values": list(a.values), "depth": a.is_depth} for a in sweep.axes],
        "points": [dict(p) for p in sweep.points],
        "series": [{"role": s.role, "quantity": s.quantity, "values": [number(v) for v in s.values],
                    "exponents": {k: number(v) for k, v in s.exponents.items()}, "spread": number(s.spread),
                    "should_be_flat": s.should_be_flat} for s in sweep.series]}}


def json_lines(results: Sequence[Any], root: str | None = None) -> str:
    """One finding per line (a stream for log processors); nothing for a clean run."""
    rows = []
    for result, f in _all(results):
        path, line = _location(f, root, result.analysis.model.file)
        rows.append(_dumps({"schema": SCHEMA, "target": result.target, "code": f.code, "name": f.name,
                                "severity": f.severity, "message": f.message, "fix": f.fix, "module": f.module,
                                "file": path, "line": line, "op": f.op,
                                "related": [{"file": relative_path(p, root), "line": n} for p, n in f.related],
                                "fingerprint": fingerprint(f, result.analysis)}, indent=None))
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------- sarif
def stable_identity(f: Finding, analysis: Any = None) -> tuple[str, str, str]:
    """(rule, module path, role) of a finding: what stays the same when unrelated code changes.

    The role is the op's part in its module: "atom" for a layer (its module path already names it), else the op's
    readable name and its ordinal among the module's ops of that name in graph order ("add#1": the second residual
    add of `blocks.3`). fx node names (`add_3`) count over the whole graph and shift with any edit above them;
    lines move with every edit, and many layers share one line."""
    if not f.op:
        return f.code, f.module, ""
    roles = _roles(analysis) if analysis is not None else {}
    return f.code, f.module, roles.get(f.op, f.op)


def _roles(analysis: Any) -> dict[str, str]:
    cached = analysis.__dict__.get("_modnorm_roles")
    if cached is None:
        cached, seen = {}, Counter()
        for op in analysis.ops:
            if op.kind == "atom":
                cached[op.name] = "atom"
                continue
            key = (op.module, op.target)
            cached[op.name] = f"{op.target}#{seen[key]}"
            seen[key] += 1
        object.__setattr__(analysis, "_modnorm_roles", cached)  # a frozen dataclass: cache beside its fields
    return cached


def fingerprint(f: Finding, analysis: Any = None) -> str:
    """Stable identity of a finding across runs, hashed: rule, module path and the op's role in its module
    (`stable_identity`), never the fx node name or the line."""
    return hashlib.sha256("\0".join(stable_identity(f, analysis)).encode()).hexdigest()[:32]


def _sarif_rule(rule: Any) -> dict[str, Any]:
    import inspect

    from .docsite import absolute_links, rule_page, rule_url

    doc = absolute_links(inspect.cleandoc(rule.__doc__ or ""), rule_page(rule.code))
    summary = " ".join(doc.split("## What it does")[-1].split("##")[0].split())
    return {
        "id": rule.code, "name": _camel(rule.name),
        "shortDescription": {"text": f"{rule.code} {rule.name}"},
        "fullDescription": {"text": summary},
        "help": {"text": doc, "markdown": doc},
        "helpUri": rule_url(rule.code),
        "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]},
        "properties": {"tags": ["modnorm", rule.name]},
    }


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _artifact(file: str | None, root: str | None) -> dict[str, str]:
    """SARIF's artifactLocation: a percent-encoded URI relative to %SRCROOT% when the file is inside the source
    root, else an absolute file:// URI with no base (SARIF 2.1.0 §3.4.3, §3.10)."""
    if not file:
        return {"uri": "", "uriBaseId": "%SRCROOT%"}
    base = Path(root) if root else Path.cwd()
    try:
        inside = Path(file).resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):
        return {"uri": Path(file).resolve().as_uri()}
    return {"uri": quote(inside, safe="/"), "uriBaseId": "%SRCROOT%"}


def _sarif_location(file: str | None, line: int, root: str | None, message: str | None = None,
                    index: int | None = None) -> dict[str, Any]:
    location: dict[str, Any] = {"physicalLocation": {
        "artifactLocation": _artifact(file, root), "region": {"startLine": line}}}
    if index is not None:
        location["id"] = index
    if message:
        location["message"] = {"text": message}
    return location


def sarif(results: Sequence[Any], root: str | None = None) -> str:
    from modnorm.rules import all_rules

    rules = all_rules()
    index = {code: i for i, code in enumerate(rules)}
    sarif_results = []
    for result, f in _all(results):
        line = f.line or 1
        entry: dict[str, Any] = {
            "ruleId": f.code, "ruleIndex": index[f.code], "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message} [{f.module}]" + (f" Fix: {f.fix}" if f.fix else "")},
            "locations": [_sarif_location(f.file or result.analysis.model.file, line, root)],
            "partialFingerprints": {"modnormFinding/v2": fingerprint(f, result.analysis)},
            "properties": {"module": f.module, "op": f.op, "target": result.target,
                           "profile": result.analysis.profile,
                           "certification": result.analysis.network.certification,
                           **({"assumptions": assumption_lines(result.analysis)}
                              if result.analysis.network.assumptions else {}),
                           **({"note": relative_text(result.note, root)} if getattr(result, "note", "") else {})},
        }
        if f.related:
            entry["relatedLocations"] = [_sarif_location(p, n, root, "related", i)
                                         for i, (p, n) in enumerate(f.related)]
        sarif_results.append(entry)
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "modnorm", "version": __version__, "semanticVersion": __version__,
                                "informationUri": "https://github.com/modnorm/modnorm",
                                "rules": [_sarif_rule(rule) for rule in rules.values()]}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": Path(root or Path.cwd()).resolve().as_uri() + "/"}},
            "results": sarif_results,
            "columnKind": "unicodeCodePoints",
        }],
    }
    return _dumps(document)


# -------------------------------------------------------------------------------------------------- github
def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github(results: Sequence[Any], root: str | None = None) -> str:
    """GitHub Actions workflow commands, most severe first."""
    lines = []
    for result, f in _all(results):
        path, line = _location(f, root, result.analysis.model.file)
        title = _escape_property(f"modnorm ({f.code})")
        message = _escape_data(f"[{f.module}] {f.message}" + (f"\nfix: {f.fix}" if f.fix else ""))
        lines.append(f"::{_GITHUB_LEVEL[f.severity]} file={_escape_property(path)},line={line},title={title}::"
                     f"{message}")
    return "\n".join(lines)


def _cell(text: Any) -> str:
    """Text safe inside one Markdown table cell: `|` escaped (also inside code spans), lines joined."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _certification_cell(net: Any) -> str:
    """yes / given N assumptions / no: a conditional bound never reads as an unconditional one."""
    if net.certification == "given assumptions":
        n = len(net.assumptions)
        return f"given {n} assumption{'s' if n > 1 else ''}"
    return "yes" if net.certified else "no"


def github_step_summary(results: Sequence[Any], root: str | None = None) -> str:
    """A Markdown summary for $GITHUB_STEP_SUMMARY: network figures per model, then the findings table."""
    out = ["## modnorm", "", "| model | parameters | sensitivity | certified | findings |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        net = r.analysis.network
        out.append(f"| `{_cell(r.target)}` | {r.analysis.model.parameters:,} | {fmt(net.sensitivity)} | "
                   f"{_certification_cell(net)} | {len(r.findings)} |")
        if getattr(r, "note", ""):
            out.append(f"| | {relative_text(r.note, root)} | | | |")
    pairs = _all(results)
    if pairs:
        out += ["", "| severity | code | location | module | message |", "| --- | --- | --- | --- | --- |"]
        for result, f in pairs:
            path, line = _location(f, root, result.analysis.model.file)
            out.append(f"| {f.severity} | {f.code} | `{_cell(path)}:{line}` | `{_cell(f.module)}` | {_cell(f.message)} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- junit
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: Any) -> str:
    """`text` with the characters XML 1.0 cannot hold (control characters, lone surrogates) shown as \\xNN."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def junit(results: Sequence[Any], root: str | None = None) -> str:
    """One testsuite per model; one failing testcase per finding, one passing testcase for a clean model."""
    suites = ET.Element("testsuites", name="modnorm", tests="0", failures="0")
    total = failures = 0
    for result in results:
        findings = sorted(result.findings, key=lambda f: (_RANK[f.severity], f.file or "", f.line or 0))
        suite = ET.SubElement(suites, "testsuite", name=_xml(result.target), tests=str(max(len(findings), 1)),
                              failures=str(len(findings)), errors="0", skipped="0")
        if not findings:
            ET.SubElement(suite, "testcase", name="modnorm check", classname=_xml(result.target))
        for f in findings:
            path, line = _location(f, root, result.analysis.model.file)
            case = ET.SubElement(suite, "testcase", name=_xml(f"{f.code} {f.module or '<model>'}"),
                                 classname=_xml(path), file=_xml(path), line=str(line))
            failure = ET.SubElement(case, "failure", message=_xml(f.message),
                                    type=f"{f.code} {f.name} ({f.severity})")
            failure.text = _xml(f"{path}:{line}: {f.code} [{f.module}] {f.message}"
                                + (f"\nfix: {f.fix}" if f.fix else ""))
        total += max(len(findings), 1)
        failures += len(findings)
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


# ---------------------------------------------------------------------------------------------- statistics
def statistics(results: Sequence[Any]) -> str:
    """`count  code  name` per rule, most frequent first (ruff's --statistics)."""
    counts = Counter((f.code, f.name) for r in results for f in r.findings)
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0][0]))
    width = max((len(str(c)) for _, c in rows), default=1)
    return "\n".join(f"{count:>{width}}  {code}  {name}" for (code, name), count in rows)


FORMATS: dict[str, Callable[..., str]] = {
    "concise": concise, "json": json_report, "json-lines": json_lines, "sarif": sarif, "github": github,
    "junit": junit,
}


def render(output_format: str, results: Sequence[Any], root: str | None = None) -> str:
    return FORMATS[output_format](results, root)


def append_step_summary(results: Sequence[Any], root: str | None = None) -> None:
    """When running in GitHub Actions, add the summary to the job's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(github_step_summary(results, root))
