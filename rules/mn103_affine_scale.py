"""MN103 affine-scale."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.whatif import Fix
from modnorm.rules import Rule, Severity


class AffineScale(Rule):
    """## What it does
    Flags the elementwise gain of a normalization layer (LayerNorm, RMSNorm, GroupNorm, BatchNorm weight), or a
    free-standing gain such as ConvNeXt's layer scale `gamma * x`, whose largest entry `‖w‖_∞` lies outside
    `[low, high]` — typical of checkpoints after long training, of a custom init, or of a layer scale started at
    1e-6, since the default is exactly 1.

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
            if _follows_normalization(analysis, layer.op):
                message, fix = (f"normalization gain `{layer.weight}` has ‖w‖_∞ = {layer.norm_at_init:.3g} "
                                f"({layer.norm_source}); its natural scale is 1",
                                "reset the gain to 1 and fold its scale into the following atom, or check the "
                                "checkpoint")
            else:  # a free-standing gain: ConvNeXt's / CaiT's layer scale `gamma * x` on a residual branch
                message, fix = (f"gain `{layer.weight}` (a layer scale) has ‖w‖_∞ = {layer.norm_at_init:.3g} "
                                f"({layer.norm_source}); its natural scale is 1: the atoms before it get "
                                f"targets {1 / layer.norm_at_init:.3g}x larger" if layer.norm_at_init else
                                f"gain `{layer.weight}` (a layer scale) is 0 ({layer.norm_source})",
                                "start the gain at 1 and let the residual multipliers (1 - 1/L, 1/L) keep the "
                                "block near the identity, or accept it as a deliberate warm start (ignore MN103 "
                                "for this module)")
            yield self.layer_finding(layer, message, fix=fix)


def _follows_normalization(analysis: Analysis, op_name: str) -> bool:
    """Whether the gain belongs to a normalizer: its own weight (nn.LayerNorm is one op) or a multiplication of a
    normalizer's output (an RMSNorm written by hand), not a gain on a residual branch."""
    ops = analysis.ops_by_name()
    op = ops.get(op_name)
    if op is None or "normalization" in op.tags or not op.inputs:
        return True
    source = ops.get(op.inputs[0])
    return source is None or "normalization" in source.tags
