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
        for op in analysis.ops:
            if op.certified or op.downstream_sensitivity == 0 or "normalization" in op.tags:
                continue
            severity = Severity.ERROR if op.kind == "unknown" else Severity.WARNING
            yield self.finding(f"{op.target}: {op.reason or 'bound not certified'}",
                               fix="rewrite with registered ops, or mark the module a leaf and register its "
                                   "semantics", module=op.module, file=op.file, line=op.line, op=op.name,
                               severity=severity)
