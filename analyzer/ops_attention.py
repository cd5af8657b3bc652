"""Attention in the registry: scaled dot-product attention and the bound shared with recognised patterns."""

from __future__ import annotations

import math

import torch.nn.functional as F

from .registry import OpView, Semantics, register


# ------------------------------------------------------------------------------------------------- attention
def attention(op: OpView, scale: float | None, label: str = "attention") -> Semantics:
    """Softmax attention o = softmax(c q k^T + mask) v with logit scale c, docs/theory/constants.md#attention.

    Per head, in the max-over-tokens RMS norm: w.r.t. v the rows of A are probability vectors (1); w.r.t. q,
    |Δs_tj| <= c d ||Δq_t|| ||k_j|| and the centred softmax derivative gives c d max||k|| max||v|| (likewise k).
    """
    q, k, v = op.bounds[:3]
    d = op.in_shape(0)[-1]
    c = scale if scale is not None else 1 / math.sqrt(d)
    aligned = c * d  # the largest logit when q and k align at unit RMS
    if op.profile == "modula":
        lipschitz = (1.0, 1.0, 1.0)
    else:
        lipschitz = (aligned * k.upper * v.upper, aligned * q.upper * v.upper, 1.0)
    design, nominal, hessian = (aligned, aligned, 1.0), (1.0, 1.0, 1.0), attention_hessian(
        aligned, q.upper, k.upper, v.upper, op.profile)
    if len(op.inputs) > 3:  # an additive mask computed from parameters (T5's relative position bias)
        # Softmax: ||J u||_1 = E_p|u - ū| <= sqrt(Var_p u) <= ||u||_inf <= sqrt(n_keys) ||u||_RMS; the output row
        # moves by at most ||Δp||_1 max_j ||v_j||: sqrt(n_keys) V. Its second derivative is not derived here.
        keys = op.in_shape(1)[-2] if len(op.in_shape(1)) >= 2 else 1
        mask = math.sqrt(keys) * v.upper
        lipschitz, design, nominal, hessian = (*lipschitz, mask), (*design, mask), (*nominal, mask), None
    return Semantics("bond", lipschitz, "attention: (c d ||k|| ||v||, c d ||q|| ||v||, 1)",
                     design=design, nominal=nominal, upper=v.upper, curvature=aligned, hessian=hessian,
                     tags=("attention",), label=label,
                     info={"scale": c, "head_dim": d, "aligned_logit": aligned * q.upper * k.upper,
                           "default_scale": scale is None})


def attention_hessian(cd: float, q: float, k: float, v: float, profile: str) -> float:
    """||D²o[Δ, Δ̃]|| <= κ ||Δ|| ||Δ̃|| for o = softmax(c q kᵀ) v, sum norm over (q, k, v), max-position RMS.

    With s = c q kᵀ, |Δs_tj| <= c d (||Δq|| K + Q ||Δk||) <= c d M ||Δ|| (M = max(Q, K)), and o = E_p[v]:
      logits twice:  E_p[(a - ā)(b - b̄)(v - v̄)] <= 2 max|a| max|b| V     -> 2 V (c d M)²
      logits bilinear in (q, k): D²s = c (Δq Δ̃kᵀ + Δ̃q Δkᵀ), through Dp  -> V c d
      logits and values: Σ_j (Dp Δs)_j Δ̃v_j <= max|Δs| ||Δ̃v||, twice   -> c d M
    [derivation; checked against nested jvp in tests/test_sharpness.py]. Modula's profile takes Q = K = V = 1.
    """
    if profile == "modula":
        q = k = v = 1.0
    m = max(q, k)
    return 2 * v * (cd * m) ** 2 + v * cd + cd * m


@register(F.scaled_dot_product_attention)
def _sdpa(op: OpView) -> Semantics:
    return attention(op, op.arg(6, "scale"), "sdpa")
