"""MN602 nominal-constant-underestimates."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class NominalConstantUnderestimates(Rule):
    """## What it does
    Lists ops whose Modula (nominal) constant is smaller than the certified worst case: ReLU and GELU 1/sqrt(2)
    vs 1 and 1.129, max-pooling 1 vs sqrt(window), attention heads split 1 vs sqrt(h).

    ## Why is this bad?
    The paper's package uses typical-case constants, which measurement exceeds (up to 6× per atom in a GPT at
    init). Bounds built on them are not guarantees; this note says by how much the nominal calculus is optimistic.

    ## Example
        x = F.gelu(x)    # Modula: 1/sqrt(2); worst case: 1.1289

    ## Use instead
        x = F.gelu(x) / 1.1289   # if a certified sensitivity of 1 is wanted

    ## Options
    - `min_factor` (1.05): report only factors above this.

    ## References
    [Nominal constants that are not upper bounds](../theory/constants.md#nominal);
    [Profiles](../theory/profiles.md#modula).
    """

    code = "MN602"
    name = "nominal-constant-underestimates"
    severity = Severity.INFO
    options = {"min_factor": 1.05}

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        seen = set()
        for op in analysis.ops:
            if not op.nominal or not op.lipschitz or op.kind == "atom" or "normalization" in op.tags:
                continue
            certified, nominal = max(op.lipschitz), max(op.nominal)
            if nominal <= 0 or certified / nominal <= self.config["min_factor"]:
                continue
            key = (op.target, round(certified / nominal, 3))
            if key in seen:
                continue
            seen.add(key)
            yield self.finding(
                f"{op.target}: Modula's constant {nominal:.4g} underestimates the certified {certified:.4g} "
                f"(×{certified / nominal:.3g})", fix="nothing to change if you accept typical-case constants; "
                "modnorm prints the certified ones", module=op.module, file=op.file, line=op.line, op=op.name)
