"""MN204 network-sensitivity-high."""

from __future__ import annotations

import math
from typing import Iterator

from modnorm.report import fmt_log10
from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class NetworkSensitivityHigh(Rule):
    """## What it does
    Flags a network whose sensitivity to its input (with normalizers at their well-normed value, i.e. the design
    sensitivity) exceeds e, as an error above 10.

    ## Why is this bad?
    A well-normed network maps the unit ball into the unit ball with sensitivity ≤ 1; beyond that, every
    downstream "≤ ‖Δw‖" bound is multiplied by the input norm and updates normalized in the modular norm are no
    longer the size they claim.

    ## Example
        return self.fc3(self.fc2(self.fc1(x)) * 4)

    ## Use instead
        return self.fc3(self.fc2(self.fc1(x)))

    ## Options
    - `warn` (e), `error` (10.0). The warn threshold is the `(1 + 1/L)^L <= e` envelope MN203 accepts for a
      residual stream: calibrated on the corpus (tests/corpus/), where the clean 1/L-residual MLP of depth 16
      has design sensitivity (1 + 1/16)^16 = 2.64 and must not warn.

    ## References
    [Well-normed modules](../theory/modular-norm.md#well-normed); [Design values](../theory/profiles.md#design);
    [Downstream sensitivity as a path sum](../theory/dag.md#path-sum).
    """

    code = "MN204"
    name = "network-sensitivity-high"
    severity = Severity.WARNING
    options = {"warn": math.e, "error": 10.0}
    explained_by = ("MN103", "MN201", "MN202", "MN301")  # what the figure is made of (fix_text names the same)

    def same_site(self, finding: Finding, other: Finding) -> bool:
        return True  # one figure per network

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        net = analysis.network
        s = net.design_sensitivity
        if math.isinf(s) and math.isfinite(net.log10_design_sensitivity):  # beyond float range: judge its log
            s = 10 ** min(net.log10_design_sensitivity, 300.0)
        if not math.isfinite(s) or s <= self.config["warn"]:
            return
        severity = Severity.ERROR if s > self.config["error"] else Severity.WARNING
        first = analysis.layers[0] if analysis.layers else None
        design = fmt_log10(net.design_sensitivity, net.log10_design_sensitivity, 3)
        certified = fmt_log10(net.sensitivity, net.log10_sensitivity, 3)
        yield self.finding(
            f"network sensitivity {design} (design constants; {analysis.profile} bound {certified})",
            fix=fix_text(analysis),
            module=first.name if first else "", file=first.file if first else analysis.model.file,
            line=first.line if first else None, severity=severity)


def fix_text(analysis: Analysis, top: int = 3) -> str:
    """Name what the figure is made of, largest first: residual merges whose design block sensitivity exceeds 1
    (their product along a stream is usually the dominant factor), then the op constants (per kind of op, e.g. a
    CNN's three max-pools, the product of its constants above 1; the report prints the same under the figures)."""
    parts = []
    growing = [m for m in analysis.merges if m.design_block_sensitivity > 1.05]
    if growing:
        product = math.prod(m.design_block_sensitivity for m in growing)
        worst = max(m.design_block_sensitivity for m in growing)
        parts.append(f"{len(growing)} residual merge{'s' if len(growing) > 1 else ''} with design block sensitivity "
                     f"above 1 (up to {worst:.3g}, product {product:.3g}): scale skip and branch as MN201 says")
    named = "; ".join(f"{c.target} {c.largest:.3g}" + (f" ×{c.count} ops = {c.product:.3g}" if c.count > 1 else "")
                      for c in analysis.op_constants(top))
    if named:
        pools = " (multiply a max-pool by 1/sqrt(window size), or use an average pool)" if "MaxPool" in named else ""
        parts.append(f"the largest op constants on the way: {named}; scale those down{pools}")
    if not parts:
        return "bring every atom to norm 1 (MN101) and keep residual blocks at 1 (MN201)"
    return "; ".join(parts) + ("" if growing else "; keep residual blocks at 1")
