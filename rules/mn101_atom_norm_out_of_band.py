"""MN101 atom-norm-out-of-band."""

from __future__ import annotations

import math
import re
from typing import Iterator

from modnorm.result import Analysis, Finding, Layer
from modnorm.rules import Rule, Severity
from modnorm.whatif import Fix


class AtomNormOutOfBand(Rule):
    """## What it does
    Flags an atom (Linear, Conv, Embedding) whose natural norm at init — the operator norm of its effective map,
    forward scale included — lies outside the unit band.

    ## Why is this bad?
    The modular norm assumes well-normed atoms (norm ≈ 1). An atom at norm N moves its output N times more (or
    less) than the calculus says, and training aligns inputs with its top singular directions, so a 3072→10
    head at default init (N ≈ 10.6) amplifies aligned features tenfold.

    ## Example
        self.head = nn.Linear(3072, 10)          # default init: N ≈ (1 + sqrt(3072/10)) / sqrt(3)

    ## Use instead
        self.head = nn.Linear(3072, 10)
        nn.init.orthogonal_(self.head.weight, gain=(10 / 3072) ** 0.5)   # N = 1

    One tensor tied to several atoms (a token embedding used as the output head) gets one finding for the group:
    scaling the tensor scales every use's norm alike, so the fix makes the first use well-normed and gives the
    others output multipliers (or unties them). Frozen atoms (`requires_grad=False`, a base model under LoRA) are
    not flagged: their init is not the user's to change.

    A zero weight is flagged ("initialise the weight"), except the up-projection of a low-rank adapter: LoRA's B
    (`lora_B`, `lora_up`, a raw parameter `B`, with fewer inputs than outputs) starts at 0 by design, so the
    adapted model equals the base model at step 0; its norm grows with training, not at init.

    ## Options
    - `low` (0.5), `high` (1.25): the warning band; `error` (4.0): above it the finding is an error.

    ## References
    [Well-normed modules](../theory/modular-norm.md#well-normed); [Atoms](../theory/constants.md#atoms) and
    [default initialisation](../theory/constants.md#default-init).
    """

    code = "MN101"
    name = "atom-norm-out-of-band"
    severity = Severity.WARNING
    options = {"low": 0.5, "high": 1.25, "error": 4.0}
    explained_by = ("MN102",)  # a readout whose init law drifts with width

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        """The atom initialised at norm 1."""
        return Fix(norms={finding.module: 1.0}) if any(l.name == finding.module for l in analysis.layers) else None

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        tied = tied_groups(analysis)
        for layer in analysis.layers:
            if layer.kind == "Gain" or layer.frozen:
                continue
            group = tied.get(layer.weight, (layer,))
            if layer is not group[0] or all(self._in_band(l) for l in group):
                continue
            norm = max(l.norm_at_init for l in group)
            severity = Severity.ERROR if norm > self.config["error"] else Severity.WARNING
            when = "at init" if analysis.model.weights == "init" else "in the checkpoint"
            if len(group) > 1:
                yield self.layer_finding(
                    layer, f"one tensor {'×'.join(map(str, layer.shape))} serves {len(group)} atoms with norms "
                    + ", ".join(f"{l.name} {l.norm_at_init:.3g}" for l in group)
                    + f" {when} ({layer.norm_source}); well-normed is 1 for each", fix=tied_fix_text(group),
                    severity=severity, related=tuple((l.file, l.line) for l in group[1:] if l.file))
                continue
            yield self.layer_finding(
                layer, f"{layer.kind} `{layer.name}` {'×'.join(map(str, layer.shape))} has norm {norm:.3g} {when} "
                f"({layer.norm_source}); well-normed is 1", fix=fix_text(layer), severity=severity)

    def _in_band(self, layer: Layer) -> bool:
        norm = layer.norm_at_init
        return self.config["low"] <= norm <= self.config["high"] or (norm == 0 and is_lora_up(layer))


def tied_groups(analysis: Analysis) -> dict[str, tuple[Layer, ...]]:
    """Weight name -> the atoms that use that one tensor (in execution order), for tensors used by several."""
    groups: dict[str, tuple[Layer, ...]] = {}
    for names in analysis.network.tied_weights:
        layers = tuple(l for l in analysis.layers if l.weight in names and not l.frozen)
        if len(layers) > 1:
            groups.update({l.weight: layers for l in layers})
    return groups


def tied_fix_text(group: tuple[Layer, ...]) -> str:
    """One fix for a tied tensor. Scaling it by c scales every use's natural norm by c, so the ratio between the
    uses is fixed by the tie: scale the tensor so that the first use has norm 1, and multiply each other use's
    output by (first norm / its norm), which brings it to 1 too; or untie."""
    first, others = group[0], group[1:]
    if first.norm_at_init == 0:
        return f"initialise the weight (it is zero): {fix_text(first)}"
    multipliers = ", ".join(f"`{l.name}` by {first.norm_at_init / l.norm_at_init:.3g}" for l in others
                            if l.norm_at_init > 0)
    factor = 1 / first.norm_at_init
    return (f"the tie fixes the ratio of their norms, so one init cannot make both 1: scale the tensor by "
            f"{factor:.3g} (`w.mul_({factor:.3g})` under torch.no_grad(), `{first.name}` at norm 1) and multiply "
            f"the output of {multipliers}; or untie them and give each its own init ("
            + "; ".join(f"{l.name}: {init_text(l)}" for l in group) + ")")


_LORA_UP = re.compile(r"(^|\.)(lora_?B|lora_up|B)(\.default)?$", re.IGNORECASE)


def is_lora_up(layer: Layer) -> bool:
    """LoRA's second factor: named like PEFT's `lora_B` (or `lora_up`, `B`) and mapping a rank r up to more
    outputs (shape (out, r), r < out)."""
    return bool(_LORA_UP.search(layer.name)) and len(layer.shape) == 2 and layer.shape[1] < layer.shape[0]


def fix_text(layer: Layer) -> str:
    """An init that gives natural norm exactly 1 for this atom's kind, and the output multiplier that does the same."""
    init = init_text(layer)
    if layer.norm_at_init == 0:
        return f"initialise the weight (it is zero): {init}"
    return f"{init}, or multiply the output by {1 / layer.norm_at_init:.3g}"


def init_text(layer: Layer) -> str:
    """An init that gives natural norm exactly 1 for this atom's kind (natural norm = norm_factor × raw norm,
    docs/theory/constants.md#atoms), with the numbers filled in."""
    gain = 1 / layer.norm_factor if layer.norm_factor > 0 else 1.0
    if layer.kind == "Embedding":
        times = f" * {gain:.3g}" if abs(gain - 1) > 1e-9 else ""
        init = (f"give every row RMS {gain:.3g}: `w.copy_(w / w.pow(2).mean(1, keepdim=True).sqrt(){times})` "
                f"under torch.no_grad() (the natural norm is the largest row RMS)")
    elif layer.kind.startswith("Conv"):
        positions = "w[:, :, " + ", ".join("i j k".split()[: len(layer.shape) - 2]) + "]"
        per_scale = f" / {abs(layer.scale):.3g}" if abs(abs(layer.scale) - 1) > 1e-9 else ""
        init = (f"initialise each kernel position {positions} orthogonal with gain {gain:.3g} = sqrt(out/in) / "
                f"kernel size {math.prod(layer.shape[2:])}{per_scale} (the natural norm is kernel size · sqrt(in/out) · the "
                f"largest per-position spectral norm)")
    elif layer.kind == "Linear":
        per_scale = f" / {abs(layer.scale):.3g} (its forward multiplier)" if abs(abs(layer.scale) - 1) > 1e-9 else ""
        init = f"initialise it orthogonal with gain {gain:.3g} = sqrt(fan_out/fan_in){per_scale}"
    elif layer.kind == "TokenMixing":
        init = (f"give every row an absolute sum of {gain:.3g}: `w.copy_(w / w.abs().sum(1, keepdim=True)"
                f"{f' * {gain:.3g}' if abs(gain - 1) > 1e-9 else ''})` under torch.no_grad() (a Linear across "
                f"positions: its natural norm is the largest row l1, ||W||_inf->inf)")
    else:
        init = "initialise so that the effective operator norm is 1"
    return init
