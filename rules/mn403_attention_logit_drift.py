"""MN403 attention-logit-drift."""

from __future__ import annotations

import math
from typing import Any, Iterator

from modnorm.result import Finding
from modnorm.rules import Rule, Severity


class AttentionLogitDrift(Rule):
    """## What it does
    On a width sweep, flags attention whose aligned-logit bound `c·d·‖q‖·‖k‖` grows like width^p with p above
    `max_exponent` — the signature of the 1/sqrt(d) logit scale when the head dimension grows with width.

    ## Why is this bad?
    Once queries and keys align during training, logits reach `c·d`: with `c = 1/sqrt(d)` that is sqrt(d), so
    wider models saturate their softmax sooner and the learning rate that was stable at small width is not at
    large width. With `c = 1/d` the bound is width-independent (Large et al. 2024, docs/theory/constants.md#attention).

    ## Example
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))

    ## Use instead
        att = (q @ k.transpose(-2, -1)) * (1.0 / k.size(-1))

    ## Options
    - `max_exponent` (0.25).

    ## References
    [Attention](../theory/constants.md#attention); [Sweep width and depth](../guides/sweep.md).
    """

    code = "MN403"
    name = "attention-logit-drift"
    severity = Severity.WARNING
    options = {"max_exponent": 0.25}

    def check_sweep(self, sweep: Any) -> Iterator[Finding]:
        series = next((s for s in sweep.series if s.quantity == "attention_logit_bound"), None)
        if series is None:
            return
        for axis in (a for a in sweep.axes if not a.is_depth):
            p = series.exponents.get(axis.name, math.nan)
            if not math.isnan(p) and p > self.config["max_exponent"]:
                first = next(op for op in sweep.analyses[-1].ops if "attention" in op.tags)
                yield self.finding(
                    f"the aligned attention logit bound grows like {axis.name}^{p:.2f} "
                    f"({series.values[0]:.3g} → {series.values[-1]:.3g} over the sweep)",
                    fix="scale logits by 1/d (d the head dimension) instead of 1/sqrt(d)",
                    module=first.module, file=first.file, line=first.line, op=first.name)
