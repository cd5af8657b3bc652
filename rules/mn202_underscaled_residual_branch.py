"""MN202 underscaled-residual-branch."""

from __future__ import annotations

import math
from typing import Iterator

from modnorm.result import Analysis, Finding, Merge
from modnorm.whatif import Fix, rescale_merge
from modnorm.rules import Rule, Severity


class UnderscaledResidualBranch(Rule):
    """## What it does
    Flags residual merges `y = x + b·f(x)` that scale the branch down (`b < 1`) but keep the skip at 1, so that
    the block sensitivity `1 + b·s_f` still exceeds `1 + 2/L`. The common case is `b = 1/sqrt(L)`.

    ## Why is this bad?
    Sensitivities multiply along the stream: `(1 + 1/sqrt(L))^L ≈ e^sqrt(L)`, which grows without bound with
    depth (×40 at L = 16, ×2,400 at L = 64). Early layers' normalization targets shrink by the same factor, so
    they barely learn, and a learning rate tuned at one depth does not transfer. Only the convex combination
    `(1 - 1/L)·x + (1/L)·f(x)` keeps every block at sensitivity 1.

    ## Example
        x = x + block(x) / math.sqrt(L)

    ## Use instead
        x = (1 - 1 / L) * x + (1 / L) * block(x)

    ## Options
    - `slack` (2.0): a block may exceed sensitivity 1 by slack / L, as in MN201.

    ## References
    [Residual networks](../theory/modular-norm.md#residual) (`x + f(x)/√L` has sensitivity `(1 + 1/√L)^L ≈
    e^√L`); [Residual merges](../theory/dag.md#residual-merges); Large et al. 2024.
    """

    code = "MN202"
    name = "underscaled-residual-branch"
    severity = Severity.ERROR
    options = {"slack": 2.0}

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        return merge_at_one(analysis, finding.op)

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for merge, depth, block in merges_over_budget(analysis, self.config["slack"]):
            a, b = abs(merge.skip_coefficient), abs(merge.branch_coefficient)
            if not is_underscaled_branch(a, b):
                continue
            growth = block ** depth
            yield self.finding(
                f"residual merge x + {b:.3g}·f(x) keeps the skip at 1: block sensitivity {block:.3g}, "
                f"×{growth:.3g} over the {depth} merges of the stream"
                + (f" (b ≥ 1/√L = {1 / math.sqrt(depth):.3g}: growth ≈ e^√L)" if b >= 1 / math.sqrt(depth) - 1e-9
                   else ""),
                fix=f"scale the skip too: {convex_multipliers(depth)[0]:.3g}·x + {convex_multipliers(depth)[1]:.3g}·f(x) "
                    f"(1 - 1/L and 1/L)",
                module=merge.module, file=merge.file, line=merge.line, op=merge.op)


def convex_multipliers(depth: int) -> tuple[float, float]:
    """(1 - 1/L, 1/L) for a stream of L merges. A stream of one merge (post-norm: a normalizer after every merge)
    gets (1/2, 1/2): with L = 1 the formula would delete the skip connection."""
    L = max(depth, 2)
    return 1 - 1 / L, 1 / L


def merge_at_one(analysis: Analysis, op: str) -> Fix | None:
    """The multipliers MN201 and MN202 print, as numbers: 1 - 1/L on the skip and 1/L on the branch. The block's
    design sensitivity becomes (1 - 1/L) + s_f/L: 1 for a well-normed branch. Constants inside the branch that keep
    s_f above 1 are not part of this fix (an attention scale is MN301's); the fix text names them."""
    merge = next((m for m in analysis.merges if m.op == op), None)
    depth = next((s.depth for s in analysis.streams if op in s.merges), 1)
    if merge is None or not merge.skip_coefficient or not merge.branch_coefficient:
        return None
    skip, branch = convex_multipliers(depth)
    return rescale_merge(analysis, merge, skip / abs(merge.skip_coefficient), branch / abs(merge.branch_coefficient))


def merges_over_budget(analysis: Analysis, slack: float) -> Iterator[tuple[Merge, int, float]]:
    """(merge, L, block sensitivity) for each residual merge whose block sensitivity exceeds 1 + slack/L, L the
    number of merges in its stream: the budget under which L blocks compound to at most e^slack."""
    for stream in analysis.streams:
        for name in stream.merges:
            merge = analysis.merge(name)
            block = merge.design_block_sensitivity
            if math.isinf(block):
                continue  # an op without a bound inside the block: MN901 names it, a budget says nothing more
            if block > 1 + slack / stream.depth + 1e-9:
                yield merge, stream.depth, block


def is_underscaled_branch(skip: float, branch: float) -> bool:
    """An unscaled skip with a branch multiplier strictly between 0 and 1 (MN201 takes the rest)."""
    return abs(skip - 1) < 1e-9 and 0 < branch < 1 - 1e-9
