"""MN603 assumption-broken-at-example-inputs."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class BrokenAssumption(Rule):
    """## What it does
    Flags a normalizer whose stated floor (`--norm-input-rms R`, or `norm-input-rms` in the configuration) is
    already broken by the model's own example inputs: the (centred) RMS entering it, measured when the example
    inputs run on the CPU, is below `R`.

    ## Why is this bad?
    A normalizer's constant is `||w||_inf / r` at input RMS `r`; with a stated floor modnorm divides by `R`
    instead of `sqrt(eps)`, and every figure that depends on it is certified *given* that floor. If the example
    inputs already fall below it, the printed sensitivity, targets and sharpness are smaller than what the model
    does on its own data: the assumption is false, not merely unchecked.

    ## Example
        modnorm check model.py --norm-input-rms 1     # but the final LayerNorm sees RMS 0.25 at init

    ## Use instead
        modnorm check model.py                        # the default profile derives each floor from init
        modnorm check model.py --norm-input-rms 0.2   # or state a floor the inputs respect

    or keep the stream at RMS ≈ 1 (scaled residuals) so that the stated floor holds.

    ## Options
    None.

    ## References
    [Normalization](../theory/constants.md#normalization); [Profiles: assumptions](../theory/profiles.md#certified).
    """

    code = "MN603"
    name = "assumption-broken-at-example-inputs"
    severity = Severity.WARNING

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for op in analysis.ops:
            assumed = op.assumption
            if assumed is None or assumed.basis != "stated" or assumed.at_init is None:
                continue
            if assumed.at_init >= assumed.floor:
                continue
            yield self.finding(
                f"{op.target}: the stated floor {assumed.quantity} >= {assumed.floor:g} is broken by the example "
                f"inputs, which give {assumed.at_init:.3g}; the figures resting on it are {assumed.floor / assumed.at_init:.3g}x "
                "too optimistic for this normalizer at least",
                fix=f"state a floor at or below {assumed.at_init:.3g} with --norm-input-rms, or drop it (the "
                    "default profile derives each floor from init)",
                module=op.module, file=op.file, line=op.line, op=op.name)
