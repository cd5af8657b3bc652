"""Findings grouped the way users think: one finding per role of a repeated block (issue 16 item 2).

A 12-layer transformer repeats each defect in every block; the user fixes it once, in the block's code. Findings
with the same code and severity whose modules differ only in their block indices (`transformer.h.3.attn`,
`transformer.h.7.attn`) become one finding on the role (`transformer.h.*.attn`), with the instance count, the
range of each figure that differs between instances, and the worst instance's message and line; the other
instances' locations stay as related locations (SARIF relatedLocations).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable

from .result import Finding

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])|(?<!\w)inf(?!\w)")
_NAMED = re.compile(r"`[^`]*`|\b[A-Za-z_]\w*(?:\.\w+)+")  # quoted names and module paths are not figures


def role_of(module: str) -> str:
    """`transformer.h.3.mlp.c_fc` -> `transformer.h.*.mlp.c_fc`: the module path with its block indices starred."""
    return _INDEX.sub("*", module)


def _figures(message: str) -> list[float]:
    return [float(token) for token in _NUMBER.findall(_NAMED.sub(" ", message))]


def _varying(instances: list[Finding]) -> list[tuple[float, float]]:
    """(min, max) of each figure that differs between the instances' messages, in message order."""
    columns = [_figures(f.message) for f in instances]
    if len({len(c) for c in columns}) != 1:
        return []
    ranges = []
    for values in zip(*columns):
        if min(values) != max(values):
            ranges.append((min(values), max(values)))
    return ranges


def _worst(instances: list[Finding]) -> Finding:
    """The instance with the largest first differing figure (sensitivities, norms: larger is worse)."""
    columns = [_figures(f.message) for f in instances]
    if len({len(c) for c in columns}) != 1 or not columns[0]:
        return instances[0]
    for position in range(len(columns[0])):
        values = [c[position] for c in columns]
        if min(values) != max(values):
            return instances[values.index(max(values))]
    return instances[0]


def _merged(role: str, instances: list[Finding]) -> Finding:
    worst = _worst(instances)
    ranges = _varying(instances)
    span = "; ".join(f"{low:.3g}..{high:.3g}" for low, high in ranges)
    blocks = len({tuple(_INDEX.findall(f.module or "")) for f in instances})
    count = f"×{blocks}" + (f" ({len(instances)} instances)" if blocks != len(instances) else "")
    summary = (f" (role {role} {count}: worst instance {worst.module}"
               + (f", values range {span}" if span else ", identical in every instance") + ")")
    related = [(f.file, f.line) for f in instances if f is not worst and f.file and f.line]
    related += [r for f in instances for r in f.related]
    unique = tuple(dict.fromkeys(r for r in related if r != (worst.file, worst.line)))
    return replace(worst, module=role, message=worst.message + summary, related=unique)


def _instances_of(role: str, modules: Iterable[str]) -> int:
    """How many instances of a role the model has: distinct block indices among modules under the role."""
    parts = role.split(".")
    depth = max(i for i, part in enumerate(parts) if part == "*") + 1  # the repeated block that holds the role
    role = ".".join(parts[:depth])
    found = set()
    for module in modules:
        head = ".".join(module.split(".")[:depth])
        if role_of(head) == role:
            found.add(head)
    return len(found)


def _single(finding: Finding, role: str, instances: int) -> Finding:
    """A finding on one instance of a repeated block (the stream's last block, the layer with the smallest
    target) is still named by its role, with the instance it is about."""
    summary = f" (role {role} ×{instances}: instance {finding.module})"
    return replace(finding, module=role, message=finding.message + summary)


def group_by_role(findings: Iterable[Finding], modules: Iterable[str] = ()) -> tuple[Finding, ...]:
    """One finding per (code, severity, role); a finding outside any repeated block is kept as it is.

    `modules` (the model's module paths) lets a finding on a single instance name its role and count."""
    modules = tuple(modules)
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        key = (finding.code, str(finding.severity), role_of(finding.module or ""))
        groups.setdefault(key, []).append(finding)
    out = []
    for (_, _, role), instances in groups.items():
        if role == (instances[0].module or ""):
            out.extend(instances)
        elif len(instances) == 1 and "*" in role:
            count = _instances_of(role, modules)
            out.append(_single(instances[0], role, count) if count > 1 else instances[0])
        else:
            out.append(_merged(role, instances))
    return tuple(out)
