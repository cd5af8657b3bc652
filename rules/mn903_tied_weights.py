"""MN903 tied-weights."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class TiedWeights(Rule):
    """## What it does
    Reports a parameter used by several atoms (e.g. a token embedding tied to the output head).

    ## Why is this bad?
    Modula does not support weight sharing: a tied tensor receives one update whose effect is the sum over its
    uses, each measured in its own operator norm (ℓ1→RMS for the embedding, RMS→RMS for the head). modnorm
    reports each use as its own atom, so the tied tensor's target and mass are approximate.

    ## Example
        self.transformer.wte.weight = self.lm_head.weight

    ## Use instead
        keep the tie if you need it, and treat the reported targets of both uses as approximate

    ## Options
    None.

    ## References
    [Weight sharing](../theory/dag.md#weight-sharing).
    """

    code = "MN903"
    name = "tied-weights"
    severity = Severity.INFO

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for group in analysis.network.tied_weights:
            layers = [l for l in analysis.layers if l.weight in group]
            if len(layers) < 2:
                continue
            first = layers[0]
            yield self.layer_finding(first, f"one tensor is used by {len(layers)} atoms: "
                                            f"{', '.join(l.name for l in layers)}",
                                     fix="the targets of tied atoms are approximate (one tensor, several targets)",
                                     related=tuple((l.file, l.line) for l in layers[1:] if l.file))
