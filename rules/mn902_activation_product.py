"""MN902 activation-product."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class ActivationProduct(Rule):
    """## What it does
    Notes elementwise products of two activations (gating, SwiGLU) that are bounded only through
    ‖x‖_∞ ≤ sqrt(d)·‖x‖_RMS, because neither factor is a bounded gate (sigmoid, tanh, softmax).

    ## Why is this bad?
    d(a⊙b) = da⊙b + a⊙db: the sensitivity to `a` is ‖b‖_∞, which RMS bounds control only up to sqrt(d). The
    certified constant therefore grows with width, and the nominal "1" of a gated MLP is not a guarantee.

    ## Example
        return self.down(F.silu(self.gate(x)) * self.up(x))

    ## Use instead
        return self.down(torch.sigmoid(self.gate(x)) * self.up(x))   # a bounded gate, if the model allows

    ## Options
    None.

    ## References
    [Products of activations](../theory/constants.md#products).
    """

    code = "MN902"
    name = "activation-product"
    severity = Severity.INFO

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for op in analysis.ops:
            if "product" in op.tags and op.reason and op.downstream_sensitivity > 0:
                yield self.finding(f"{op.target}: {op.reason} (constants {', '.join(f'{c:.3g}' for c in op.lipschitz)})",
                                   fix="use a bounded gate or accept a width-dependent bound",
                                   module=op.module, file=op.file, line=op.line, op=op.name)
