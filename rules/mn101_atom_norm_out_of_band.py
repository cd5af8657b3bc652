"""MN101 atom-norm-out-of-band."""

from __future__ import annotations

import math
import re
from typing import Iterator

from modnorm.result import Analysis, Finding, Layer
from modnorm.rules import Rule, Severity


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

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for layer in analysis.layers:
            if layer.kind == "Gain":
                continue
            norm = layer.norm_at_init
            if self.config["low"] <= norm <= self.config["high"] or (norm == 0 and is_lora_up(layer)):
                continue
            severity = Severity.ERROR if norm > self.config["error"] else Severity.WARNING
            when = "at init" if analysis.model.weights == "init" else "in the checkpoint"
            yield self.layer_finding(
                layer, f"{layer.kind} `{layer.name}` {'×'.join(map(str, layer.shape))} has norm {norm:.3g} {when} "
                f"({layer.norm_source}); well-normed is 1", fix=fix_text(layer), severity=severity)


_LORA_UP = re.compile(r"(^|\.)(lora_?B|lora_up|B)(\.default)?$", re.IGNORECASE)


def is_lora_up(layer: Layer) -> bool:
    """LoRA's second factor: named like PEFT's `lora_B` (or `lora_up`, `B`) and mapping a rank r up to more
    outputs (shape (out, r), r < out)."""
    return bool(_LORA_UP.search(layer.name)) and len(layer.shape) == 2 and layer.shape[1] < layer.shape[0]


def fix_text(layer: Layer) -> str:
    """An init that gives natural norm exactly 1 for this atom's kind (natural norm = norm_factor × raw norm,
    docs/theory/constants.md#atoms), with the numbers filled in, and the output multiplier that does the same."""
    gain = 1 / layer.norm_factor if layer.norm_factor > 0 else 1.0
    scale = f"or multiply the output by {1 / layer.norm_at_init:.3g}" if layer.norm_at_init > 0 else ""
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
    else:
        init = "initialise so that the effective operator norm is 1"
    if layer.norm_at_init == 0:
        return f"initialise the weight (it is zero): {init}"
    return f"{init}, {scale}" if scale else init
