"""MN503 io-mass-starved."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class IoMassStarved(Rule):
    """## What it does
    Flags a network whose input atoms together, or output atoms together, hold less than `min_share` of the
    mass (e.g. `--hidden-mass 200` gives the input and output 1/202 ≈ 0.5% each).

    ## Why is this bad?
    Under a normalized update of size η an atom moves the output by at most η·m_i/M: with 0.5%
    of the mass the embedding or the readout barely learns, whatever the learning rate, and raising the rate to
    compensate destabilises the hidden layers.

    ## Example
        modnorm check model.py --hidden-mass 200

    ## Use instead
        modnorm check model.py --hidden-mass 5       # 1:5:1, Modula's GPT default

    ## Options
    - `min_share` (0.01).

    ## References
    [Mass: the share of feature learning](../theory/modular-norm.md#mass) (Proposition 3 of Large et al. 2024).
    """

    code = "MN503"
    name = "io-mass-starved"
    severity = Severity.WARNING
    options = {"min_share": 0.01}

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for group in analysis.network.mass_groups:
            if group.by != "role" or group.name not in ("input", "output") or group.share >= self.config["min_share"]:
                continue
            first = next(l for l in analysis.layers if l.role == group.name)
            yield self.layer_finding(
                first, f"the {group.name} atoms ({group.atoms}) hold {group.share:.2%} of the mass "
                       f"(minimum {self.config['min_share']:.0%})",
                fix=f"lower the hidden mass or raise the {group.name} mass (--mass-of '{first.name}=1'); "
                    "1:m:1 with m between 1 and 20 is what Modula uses")
