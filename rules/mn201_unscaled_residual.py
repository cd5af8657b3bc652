"""MN201 unscaled-residual."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding, Merge
from modnorm.rules import Rule, Severity
from modnorm.rules.mn202_underscaled_residual_branch import (convex_multipliers, is_underscaled_branch, merge_at_one,
                                                         merges_over_budget)
from modnorm.whatif import Fix


class UnscaledResidual(Rule):
    """## What it does
    Flags residual merges `y = a·x + b·f(x)` whose block sensitivity `|a| + |b|·s_f` exceeds `1 + 2/L`, where L
    is the number of merges in the residual stream (a transformer has 2 per layer).

    ## Why is this bad?
    Sensitivities multiply along the stream, so unscaled `x + f(x)` blocks give `(1 + s_f)^L`: earlier layers
    must move 2^L times less (their targets shrink), and a learning rate tuned at one depth does not transfer.

    ## Example
        x = x + self.attn(self.ln_1(x))

    ## Use instead
        x = (1 - 1 / L) * x + (1 / L) * self.attn(self.ln_1(x))

    A block whose sensitivity is unbounded (an op no constant bounds) is left to MN901, which names the op.

    ## Options
    - `slack` (2.0): the allowed excess is slack / L.

    ## References
    [Residual networks](../theory/modular-norm.md#residual); [Residual
    merges](../theory/dag.md#residual-merges); [Depth-independent
    sharpness](../theory/sharpness.md#residual-limit); Large et al. 2024.
    """

    code = "MN201"
    name = "unscaled-residual"
    severity = Severity.WARNING
    options = {"slack": 2.0}
    explained_by = ("MN103", "MN301")  # a branch made sensitive by an attention scale or a gain

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        return merge_at_one(analysis, finding.op)

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for merge, depth, block in merges_over_budget(analysis, self.config["slack"]):
            if is_underscaled_branch(abs(merge.skip_coefficient), abs(merge.branch_coefficient)):
                continue  # MN202 reports x + b·f(x) with 0 < b < 1
            a, b = merge.skip_coefficient, merge.branch_coefficient
            culprits = branch_constants(analysis, merge)
            ops = "; ".join(f"{name} {c:.3g}" for name, c in culprits)
            skip, branch = convex_multipliers(depth)
            if abs(abs(a) - skip) < 1e-6 and abs(abs(b) - branch) < 1e-6:
                fix = (f"the multipliers 1 - 1/L and 1/L are in place; the branch's sensitivity "
                       f"{merge.design_branch_sensitivity:.3g} comes from its largest constants ({ops}): bring those to 1")
            else:
                fix = f"scale the skip by {skip:.3g} and the branch by {branch:.3g} (1 - 1/L and 1/L)"
                fix += f"; the branch's largest constants: {ops}" if ops else ""
            yield self.finding(
                f"residual merge {a:.3g}·x + {b:.3g}·f(x) has block sensitivity {block:.3g} "
                f"(limit {1 + self.config['slack'] / depth:.3g} for {depth} merges in the stream)",
                fix=fix, module=merge.module, file=merge.file, line=merge.line, op=merge.op)


def branch_constants(analysis: Analysis, merge: Merge, top: int = 3) -> list[tuple[str, float]]:
    """The ops of f(x) (upstream of the branch input, not of the skip) with the largest constants above 1: where
    the branch's sensitivity comes from, named as the report's op table names them."""
    constants: dict[str, float] = {}
    for n in analysis.upstream_only(merge.branch, merge.skip):
        op = analysis.op(n)
        value = op.design_constant
        if value > 1.005:
            label = f"{op.target}{f' `{op.module}`' if op.module else ''}"
            constants[label] = max(constants.get(label, 0.0), value)
    return sorted(constants.items(), key=lambda item: (-item[1], item[0]))[:top]  # ties in name order: stable

