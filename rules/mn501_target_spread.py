"""MN501 target-spread."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class TargetSpread(Rule):
    """## What it does
    Flags a network whose normalization targets `t_i = (m_i/M) / S_down(i)` differ by more than `max_ratio`
    between atoms, or in which one atom holds more than `max_share` of the mass.

    ## Why is this bad?
    A target is how far an atom may move under a normalized update. A spread of 100× means some layers must move
    100 times less than others — the signature of exploding downstream sensitivity — and those layers barely learn.

    ## Example
        x = x + block(x)   # 8 blocks: the first block's target is 2^8 smaller than the last's

    ## Use instead
        x = (1 - 1 / L) * x + (1 / L) * block(x)

    ## Options
    - `max_ratio` (100.0), `max_share` (0.5).

    ## References
    [Normalization targets](../theory/modular-norm.md#targets); [Mass](../theory/modular-norm.md#mass).
    """

    code = "MN501"
    name = "target-spread"
    severity = Severity.WARNING
    options = {"max_ratio": 100.0, "max_share": 0.5}
    explained_by = ("MN103", "MN201", "MN202", "MN301")  # targets divide by downstream sensitivities, which those fixes bring to 1

    def same_site(self, finding: Finding, other: Finding) -> bool:
        spread = "targets span"  # one spread per network, reported on whichever atom has the smallest target
        if finding.message.startswith(spread) or other.message.startswith(spread):
            return finding.message.startswith(spread) and other.message.startswith(spread)
        return finding.module == other.module

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        massive = [l for l in analysis.layers if l.mass > 0 and l.target_norm > 0]
        if len(massive) >= 2:
            low = min(massive, key=lambda l: l.target_norm)
            high = max(massive, key=lambda l: l.target_norm)
            ratio = high.target_norm / low.target_norm
            if ratio > self.config["max_ratio"]:
                yield self.layer_finding(
                    low, f"targets span ×{ratio:.3g}: `{low.name}` {low.target_norm:.3g} vs `{high.name}` "
                    f"{high.target_norm:.3g}", fix="reduce the downstream sensitivity of the early layers "
                    "(scaled residual branches, well-normed atoms)")
        for layer in analysis.layers:
            if layer.mass_share > self.config["max_share"] and len(massive) > 2:
                yield self.layer_finding(layer, f"`{layer.name}` holds {layer.mass_share:.0%} of the mass",
                                         fix="give the hidden atoms more mass (--hidden-mass) or this one less "
                                             "(--mass-of)")
