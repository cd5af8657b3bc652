"""MN401 width-drift."""

from __future__ import annotations

import math
from typing import Any, Iterator

from modnorm.result import Finding
from modnorm.rules import Rule, Severity


class WidthDrift(Rule):
    """## What it does
    On a sweep over a width-like keyword (`--sweep width=128,256,512`), flags a layer role whose norm at init,
    sensitivity, downstream sensitivity or target scales like width^p with |p| above `max_exponent`, and network
    figures (sensitivity, sharpness, gradient Lipschitz bound) that do.

    ## Why is this bad?
    With the modular norm, a learning rate transfers across width only if these quantities are width-invariant:
    a readout whose norm grows like sqrt(width) makes the tuned rate too large on the wide model; a target that
    shrinks makes a layer stop learning there. This is what μP coordinate checks look for, found statically.

    ## Example
        self.lm_head = nn.Linear(n_embd, vocab)       # default init: norm ∝ sqrt(n_embd / vocab)

    ## Use instead
        self.lm_head = nn.Linear(n_embd, vocab)
        nn.init.orthogonal_(self.lm_head.weight, gain=(vocab / n_embd) ** 0.5)   # norm 1 at every width

    ## Options
    - `max_exponent` (0.25).

    ## References
    [Sweep width and depth](../guides/sweep.md); [Default initialisation](../theory/constants.md#default-init);
    [Second-order constants](../theory/sharpness.md#atoms-and-bonds) (the `√d` of elementwise nonlinearities);
    Large et al. 2024 (learning-rate transfer); Yang et al., Tensor Programs V.
    """

    code = "MN401"
    name = "width-drift"
    severity = Severity.WARNING
    options = {"max_exponent": 0.25}

    def check_sweep(self, sweep: Any) -> Iterator[Finding]:
        widths = [a for a in sweep.axes if not a.is_depth]
        for axis in widths:
            drifting: dict[str, list[str]] = {}
            where: dict[str, Any] = {}
            for series in sweep.series:
                p = series.exponents.get(axis.name, math.nan)
                if not series.should_be_flat or series.quantity == "attention_logit_bound" or math.isnan(p):
                    continue
                if abs(p) > self.config["max_exponent"]:
                    drifting.setdefault(series.role, []).append(f"{series.quantity} ∝ {axis.name}^{p:.2f}")
                    where[series.role] = series
            for role, quantities in drifting.items():
                series = where[role]
                yield self.finding(
                    f"`{role}` drifts with {axis.name} ({', '.join(map(str, axis.values))}): {'; '.join(quantities)}",
                    fix="make the atom well-normed at every width (orthogonal init with gain sqrt(fan_out/fan_in), "
                        "or a width-aware multiplier) so its norm, sensitivity and target do not depend on width",
                    module=role, file=series.file, line=series.line, op=series.quantity)
