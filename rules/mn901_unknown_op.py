"""MN901 uncertified-op."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class UncertifiedOp(Rule):
    """## What it does
    Reports every op on a path to the output whose bound could not be certified: ops missing from the registry,
    division by an activation, comparisons of activations, constants whose value is unknown on the meta device.

    ## Why is this bad?
    modnorm never skips an op silently: an op it cannot bound makes every bound downstream of it meaningless, so
    the network's sensitivity is reported as not certified and this finding says where and why.

    ## Example
        x = x / x.sum(-1, keepdim=True)     # division by an activation

    ## Use instead
        x = F.softmax(x, -1)                 # or register the op's semantics: @modnorm.register(...)

    ## Options
    None.

    ## References
    [Bonds](../theory/constants.md#bonds); [Products of activations](../theory/constants.md#products);
    [Profiles: assumptions](../theory/profiles.md#certified).
    """

    code = "MN901"
    name = "uncertified-op"
    severity = Severity.WARNING

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        live = reaches_output(analysis)
        for op in analysis.ops:
            if op.certified or op.name not in live or "normalization" in op.tags:
                continue
            severity = Severity.ERROR if op.kind == "unknown" else Severity.WARNING
            yield self.finding(f"{op.target}: {op.reason or 'bound not certified'}",
                               fix="rewrite with registered ops, or mark the module a leaf and register its "
                                   "semantics", module=op.module, file=op.file, line=op.line, op=op.name,
                               severity=severity)


def reaches_output(analysis: Analysis) -> set[str]:
    """Ops on a path to the output through edges that can carry a change: an atom's input always does (a
    zero-initialised head has downstream sensitivity 0 today, not by structure), another op's input when its
    constant for that input is not 0 (integer bookkeeping, a shape-only operand, the old state of a copy_)."""
    ops = analysis.ops_by_name()
    todo = [op.name for op in analysis.ops if op.kind == "output"]
    live: set[str] = set()
    while todo:
        name = todo.pop()
        if name in live or name not in ops:
            continue
        live.add(name)
        op = ops[name]
        for i, source in enumerate(op.inputs):
            constant = op.lipschitz[i] if i < len(op.lipschitz) else 1.0
            if op.kind in ("atom", "output") or constant != 0:
                todo.append(source)
    return live
