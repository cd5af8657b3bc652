"""MN102 fan-in-drift."""

from __future__ import annotations

import math
from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity
from modnorm.whatif import Fix


class FanInDrift(Rule):
    """## What it does
    Flags a Linear atom with a large fan-in to fan-out ratio (`sqrt(fan_in/fan_out)` above `max_ratio`, typically a
    readout or classifier head) whose norm is over the unit band: with a variance-style init (std ∝
    1/sqrt(fan_in)) its operator norm in RMS units is ≈ (1 + sqrt(fan_in/fan_out))/sqrt(3), which grows like
    sqrt(width).

    ## Why is this bad?
    The head's norm, and with it the network's sensitivity and the size of an update's effect on the logits,
    changes every time the model is widened: a learning rate tuned on a small model is too large on a wide one.
    This is the head half of what μP fixes with its 1/width readout multiplier.

    ## Example
        self.head = nn.Linear(3072, 10)     # sqrt(3072/10) ≈ 17.5: N ≈ 10.7, and doubling the width → 15

    ## Use instead
        self.head = nn.Linear(3072, 10)
        nn.init.orthogonal_(self.head.weight, gain=(10 / 3072) ** 0.5)   # N = 1 at every width

    ## Options
    - `max_ratio` (4.0): the largest sqrt(fan_in/fan_out) tolerated; `high` (1.25): the norm it must exceed too.

    ## References
    [Default initialisation](../theory/constants.md#default-init); Yang et al., Tensor Programs V (μP readout
    scaling).
    """

    code = "MN102"
    name = "fan-in-drift"
    severity = Severity.WARNING
    options = {"max_ratio": 4.0, "high": 1.25}

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        """The atom initialised at norm 1."""
        return Fix(norms={finding.module: 1.0}) if any(l.name == finding.module for l in analysis.layers) else None

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for layer in analysis.layers:
            if layer.kind != "Linear" or len(layer.shape) != 2:
                continue
            fan_out, fan_in = layer.shape
            ratio = math.sqrt(fan_in / fan_out)
            if ratio <= self.config["max_ratio"] or layer.norm_at_init <= self.config["high"]:
                continue
            yield self.layer_finding(
                layer, f"`{layer.name}` {fan_out}×{fan_in} has sqrt(fan_in/fan_out) = {ratio:.3g} and norm "
                       f"{layer.norm_at_init:.3g}: with its init the norm grows like sqrt(width) "
                       f"(×{math.sqrt(2):.3g} per doubling of {fan_in})",
                fix=f"initialise orthogonally with gain sqrt(fan_out/fan_in) = {1 / ratio:.3g}, or multiply the output "
                    f"by {1 / layer.norm_at_init:.3g} (a width-aware readout multiplier)")
