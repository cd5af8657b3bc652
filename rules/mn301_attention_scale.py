"""MN301 attention-scaled-for-initialization."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.whatif import Fix
from modnorm.rules import Rule, Severity


class AttentionScaledForInitialization(Rule):
    """## What it does
    Flags attention whose logits are scaled by 1/sqrt(d) (the default of `scaled_dot_product_attention`) instead
    of 1/d, and, as an error, any attention whose aligned-logit bound `c·d` exceeds `max_aligned_logit`.

    ## Why is this bad?
    1/sqrt(d) keeps logits O(1) for *random* q and k at init. Once training aligns q with k, the dot product is a
    sum of d aligned terms and the logit grows like sqrt(d): attention saturates and its sensitivity to q and k
    grows with the head dimension. 1/d keeps the aligned logit O(1) at every width.

    ## Example
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))

    ## Use instead
        att = (q @ k.transpose(-2, -1)) / k.size(-1)
        # or F.scaled_dot_product_attention(q, k, v, scale=1 / q.size(-1))

    ## Options
    - `max_aligned_logit` (8.0): error above this `c·d`.
    - `min_aligned_logit` (1.5): no finding at or below this `c·d` (1/d scaling gives exactly 1).

    ## References
    [Attention](../theory/constants.md#attention); Modula's golden rules ("the dot product is the sum of
    key.shape[0] aligned quantities").
    """

    code = "MN301"
    name = "attention-scaled-for-initialization"
    severity = Severity.WARNING
    # 1.5 sits between 1/d scaling (c·d = 1 at every width) and 1/sqrt(d) at the smallest head dim where the two
    # differ clearly (d = 4: c·d = 2), so only the second is flagged.
    options = {"max_aligned_logit": 8.0, "min_aligned_logit": 1.5}

    def counterfactual(self, finding: Finding, analysis: Analysis) -> Fix | None:
        """Logits scaled by 1/d: the design constants for q and k are c·d, which becomes 1."""
        op = next((o for o in analysis.ops if o.name == finding.op), None)
        if op is None:
            return None
        aligned = (op.attention_scale or 0) * op.attention_operand_scale * (op.head_dim or 0)
        return Fix(scale={op.name: (1 / aligned, 1 / aligned, 1.0)}) if aligned > 0 else None

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for op in analysis.ops:
            if "attention" not in op.tags:
                continue
            call, d = op.attention_scale, op.head_dim
            if not call or not d:
                continue
            scale = call * op.attention_operand_scale
            aligned = scale * d
            if aligned <= self.config["min_aligned_logit"]:
                continue
            severity = Severity.ERROR if aligned > self.config["max_aligned_logit"] else Severity.WARNING
            where = (f" ({call:.3g} in the call × {op.attention_operand_scale:.3g} written after the q and k "
                     f"projections)" if op.attention_operand_scale != 1.0 else "")
            yield self.finding(
                f"attention logits scaled by {scale:.3g}{where} with head dim {d}: aligned q·k reaches "
                f"{aligned:.3g} (scaled for initialization, not alignment)",
                fix=fix_text(op.target, d, call, op.attention_operand_scale),
                module=op.module, file=op.file, line=op.line, op=op.name, severity=severity)


def fix_text(target: str, d: int, call: float = 0.0, operand: float = 1.0) -> str:
    """The change in the form the code has: sdpa takes `scale=`, hand-written attention divides its logits, and a
    multiplier written after the q projection (`q_proj(x) * head_dim**-0.5`) changes where it is written."""
    if operand != 1.0 and call:
        return (f"multiply the q projection's output by {1 / (d * call):.3g} instead of {operand:.3g}, so the logits "
                f"are scaled by 1/head_dim = {1 / d:.3g} in all")
    if "pattern" in target:  # softmax(q @ k.transpose(-2, -1) * c) @ v written by hand
        return (f"divide the logits by head_dim instead of sqrt(head_dim): `q @ k.transpose(-2, -1) / {d}` "
                f"(scale {1 / d:.3g})")
    if "scaled_dot_product_attention" in target:
        return f"pass scale=1/head_dim = {1 / d:.3g} to scaled_dot_product_attention"
    return f"scale the attention logits by 1/head_dim = {1 / d:.3g} instead of 1/sqrt(head_dim)"
