"""MN103 affine-scale."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.whatif import Fix
from modnorm.rules import Rule, Severity


class AffineScale(Rule):
    """## What it does
    Flags the elementwise gain of a normalization layer (LayerNorm, RMSNorm, GroupNorm, BatchNorm weight) whose
    largest entry `‖w‖_∞` lies outside `[low, high]` — typical of checkpoints after long training or of a custom
    init, since the default is exactly 1.

    ## Why is this bad?
    The gain multiplies the normalizer's output: its sensitivity is `‖w‖_∞`, so a gain of 5
    makes every downstream bound five times larger and the normalizer no longer well-normed. In a checkpoint it
    often marks a layer that compensated for a badly scaled neighbour.

    ## Example
        norm = nn.LayerNorm(d); norm.weight.data.fill_(4.0)

    ## Use instead
        norm = nn.LayerNorm(d)   # weight 1; or fold the scale into the next Linear and re-normalize it

    ## Options
    - `low` (0.25), `high` (2.0).

    ## References
    [Atoms: the gain of a normalization](../theory/constants.md#atoms);
    [Normalization](../theory/constants.md#normalization); [Audit a checkpoint](../guides/checkpoint.md).
    """

    code = "MN103"
    name = "affine-scale"
    severity = Severity.WARNING
    options = {"low": 0.25, "high": 2.0}

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        """The gain reset to 1: the constant it contributes is divided by its ‖w‖_∞."""
        layer = next((l for l in analysis.layers if l.name == finding.module and l.kind == "Gain"), None)
        if layer is None or not 0 < layer.norm_at_init < float("inf"):
            return None
        return Fix(scale={layer.op: (1 / layer.norm_at_init,)}, norms={layer.name: 1.0})

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for layer in analysis.layers:
            if layer.kind != "Gain" or self.config["low"] <= layer.norm_at_init <= self.config["high"]:
                continue
            yield self.layer_finding(
                layer, f"normalization gain `{layer.weight}` has ‖w‖_∞ = {layer.norm_at_init:.3g} "
                       f"({layer.norm_source}); its natural scale is 1",
                fix="reset the gain to 1 and fold its scale into the following atom, or check the checkpoint")
