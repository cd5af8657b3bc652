"""MN402 depth-growth."""

from __future__ import annotations

import math
from typing import Any, Iterator

from modnorm.result import Finding
from modnorm.rules import Rule, Severity


class DepthGrowth(Rule):
    """## What it does
    On a sweep over a depth-like keyword (`--sweep depth=2,4,8`), flags a network whose sensitivity, sharpness or
    gradient Lipschitz bound grows like depth^p with p above `max_exponent`, or whose layers' downstream
    sensitivity does (their targets then shrink faster than their 1/L share of the mass); one finding per depth
    axis, naming the worst layer role.

    ## Why is this bad?
    A learning rate tuned on a shallow model transfers to a deep one only if the network's sensitivity and
    sharpness are depth-independent — which the (1 - 1/L, 1/L) residual multipliers guarantee and `x + f(x)` or
    `x + f(x)/sqrt(L)` do not.

    ## Example
        for block in self.blocks:
            x = x + block(x)

    ## Use instead
        for block in self.blocks:
            x = (1 - 1 / L) * x + (1 / L) * block(x)

    ## Options
    - `max_exponent` (0.25).

    ## References
    [Sweep width and depth](../guides/sweep.md); [Depth-independent
    sharpness](../theory/sharpness.md#residual-limit); [Residual networks](../theory/modular-norm.md#residual);
    Large et al. 2024 (depth transfer).
    """

    code = "MN402"
    name = "depth-growth"
    severity = Severity.WARNING
    options = {"max_exponent": 0.25}

    _GROWING = ("sensitivity", "design_sensitivity", "alpha", "gradient_lipschitz")

    def check_sweep(self, sweep: Any) -> Iterator[Finding]:
        limit = self.config["max_exponent"]
        for axis in (a for a in sweep.axes if a.is_depth):
            growing = [s for s in sweep.series if s.role == "network" and s.quantity in self._GROWING
                       and s.should_be_flat and s.exponents.get(axis.name, math.nan) > limit]
            roles = [s for s in sweep.series if s.quantity == "design_downstream_sensitivity"
                     and s.exponents.get(axis.name, math.nan) > limit]
            if not growing and not roles:
                continue
            parts = [f"{s.quantity} ∝ {axis.name}^{s.exponents[axis.name]:.2f} (×{s.spread:.3g})" for s in growing]
            worst = max(roles, key=lambda s: s.exponents[axis.name], default=None)
            if worst is not None:
                parts.append(f"`{worst.role}` downstream sensitivity ∝ {axis.name}^{worst.exponents[axis.name]:.2f}")
            where = worst or growing[0]
            yield self.finding(
                f"the network grows with {axis.name} ({', '.join(map(str, axis.values))}): {'; '.join(parts)}",
                fix="scale residual merges as (1 - 1/L)·x + (1/L)·f(x) so each block has sensitivity 1",
                module=worst.role if worst is not None else "", file=where.file, line=where.line,
                op=where.quantity)
