"""MN601 normalization-without-floor."""

from __future__ import annotations

import math
from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class NormalizationWithoutFloor(Rule):
    """## What it does
    Notes every normalization (LayerNorm, RMSNorm, hand-written RMS division) whose sensitivity is 1 only if its
    input has RMS ≥ 1, when nothing in the model guarantees a lower bound on that RMS.

    ## Why is this bad?
    x / rms(x) has Jacobian (1/r)(I − x̂x̂ᵀ): it amplifies perturbations by 1/r when the input RMS r is small. A
    GPT's residual stream shrinks to RMS ≈ 0.25 before its final LayerNorm (measured), which then amplifies ×4.
    The certified bound falls back to 1/sqrt(eps) (316 at eps = 1e-5) or is unbounded without eps.

    ## Example
        x = x / x.square().mean(-1, keepdim=True).sqrt()

    ## Use instead
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5)   # and keep the stream at RMS ≈ 1

    A warning, not a note, when a normalizer *without eps* already amplifies at init: its input RMS measured (or
    predicted) at init r₀ gives 1/r₀ above `warn_amplification` — a stream that shrinks on its way to the
    normalizer (x ← 0.5 x + 0.1 f(x) falls like 0.6^L): the sensitivity is large now, and nothing caps it as the
    stream shrinks further in training. With an eps the cap 1/sqrt(eps) exists, and a small input at init is
    often by design (BERT's and GPT-2's embeddings of std 0.02 into a LayerNorm): those stay notes. (Not for
    normalizers whose groups span positions: their floor is a lower bound of the group's RMS, not its value.)

    ## Options
    - `warn_amplification` (25): the amplification at init above which the finding is a warning. Calibrated on the
      labeled corpus: a stream shrinking like 0.6^8 reaches ×179; Modula's GPT's own eps-free norms sit at ×3-6,
      and a GPT whose embeddings lack their sqrt(d) multiplier at ×12 (that defect is MN101's).

    ## References
    [Normalization](../theory/constants.md#normalization); [Forward pass of
    bounds](../theory/dag.md#norm-bounds); [Profiles: assumptions](../theory/profiles.md#certified).
    """

    code = "MN601"
    name = "normalization-without-floor"
    severity = Severity.INFO
    options = {"warn_amplification": 25.0}

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for op in analysis.ops:
            if "normalization" not in op.tags or analysis.profile == "modula":
                continue
            assumed = op.assumption
            if assumed is not None and assumed.basis == "stated":  # the user stated the floor (--norm-input-rms)
                continue
            bound = max(op.lipschitz) if op.lipschitz else math.inf
            eps = op.eps or 0.0
            text = "unbounded (no eps)" if not math.isfinite(bound) else f"{bound:.3g} = ||w||/sqrt(eps={eps:g})"
            if assumed:  # the default profile's floor from init: an assumption, not a guarantee
                text = (f"{bound:.3g} given {assumed.text}; without that assumption "
                        + ("unbounded (no eps)" if eps <= 0 else f"||w||/sqrt(eps={eps:g})"))
            amplification = _amplification_at_init(op)
            loud = amplification > self.options["warn_amplification"]
            if loud:
                text += f"; at init it already amplifies ×{amplification:.3g} (input RMS {op.assumption.at_init:.3g})"
            yield self.finding(
                f"{op.target} is 1-Lipschitz only for input RMS ≥ 1; {analysis.profile} bound {text}",
                fix="keep its input at RMS ≈ 1 (scaled residuals), add eps, or state the floor with "
                    "--norm-input-rms", module=op.module, file=op.file, line=op.line, op=op.name,
                severity=Severity.WARNING if loud else None)


def _amplification_at_init(op) -> float:
    """1/r0 for an eps-free normalizer at the input RMS r0 seen at init (0 when it has an eps, r0 is not known, or
    the floor only bounds a group spanning positions from below)."""
    assumed = op.assumption
    if assumed is None or not assumed.at_init or "coupled_positions" in op.info or op.eps:
        return 0.0
    return 1 / assumed.at_init
