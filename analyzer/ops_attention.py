"""Attention in the registry: scaled dot-product attention and the bound shared with recognised patterns."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .folding import abs_bound
from .registry import INF, OpView, Semantics, linear, register


# ------------------------------------------------------------------------------------------------- attention
def attention(op: OpView, scale: float | None, label: str = "attention", mask_scale: float = 1.0) -> Semantics:
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
    if len(op.inputs) > 3:  # an additive logit bias: from parameters (T5's relative position bias) or the input
        # Softmax: ||J u||_1 = E_p|u - ū| <= sqrt(Var_p u) <= ||u||_inf <= sqrt(n_keys) ||u||_RMS; the output row
        # moves by at most ||Δp||_1 max_j ||v_j||: sqrt(n_keys) V, times any factor applied to the logits after
        # the bias (`(s + bias) * c`). Its second derivative is not derived here.
        keys = op.in_shape(1)[-2] if len(op.in_shape(1)) >= 2 else 1
        mask = math.sqrt(keys) * v.upper * mask_scale
        lipschitz, design, nominal, hessian = (*lipschitz, mask), (*design, mask), (*nominal, mask), None
    return Semantics("bond", lipschitz, "attention: (c d ||k|| ||v||, c d ||q|| ||v||, 1)",
                     design=design, nominal=nominal, upper=v.upper, curvature=aligned, hessian=hessian,
                     tags=("attention",), label=label,
                     info={"scale": c, "head_dim": d, "aligned_logit": aligned * q.upper * k.upper,
                           "default_scale": scale is None, "operand_atom_scale": _operand_atom_scale(op)})


def _operand_atom_scale(op: OpView) -> float:
    """The product of the multipliers written after the atoms that make q and k (`q_proj(x) * head_dim**-0.5`,
    Whisper's and BART's spelling of 1/sqrt(d), reached through views and transposes): part of the logit scale a
    user reads, though the calculus counts it in the atom (a Modula multiplier)."""
    product = 1.0
    for record in getattr(op, "sources", [])[:2]:
        while record.semantics is not None and len(record.inputs) == 1 and (
                "layout" in record.semantics.tags or record.semantics.source.startswith("identity")):
            record = record.inputs[0]
        atom = record.semantics.atom if record.semantics is not None else None
        product *= abs(atom.scale) if atom is not None and math.isfinite(atom.scale) else 1.0
    return product


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


# --------------------------------------------------------------------------------------------------- rotary
def rotary(op: OpView, cos: Any, sin: Any) -> Semantics:
    """Rotary position embedding y = x ⊙ cos + rotate_half(x) ⊙ sin, one op (patterns._match_rotary),
    docs/theory/constants.md#rotary.

    Coordinates i and i + h (h = half the last axis) go through the 2×2 block [[c_i, -s_i], [s_(i+h), c_(i+h)]]
    and nothing else, so in the RMS norm the constant is the largest block's spectral norm: computed when the
    tables have values (1 for a true rotation: c_i = c_(i+h), s_i = s_(i+h), c² + s² = 1). On meta the certified
    constant stays max|cos| + max|sin|, the two terms apart, and the design constant is the rotation's 1."""
    shape = op.in_shape(0)
    c, s = _table(op, cos, shape), _table(op, sin, shape)
    if c is not None and s is not None:
        gain = _largest_block_norm(c, s)
        return linear(Semantics("bond", (gain,), "rotary: largest 2×2 block norm of its cos/sin tables",
                                design=(gain,), tags=("rotary",), label="rotary"))
    bounds = (abs_bound(cos, op.weights), abs_bound(sin, op.weights))
    if None in bounds:
        return linear(Semantics("bond", (INF,), "rotary: tables of unknown size", design=(1.0,), certified=False,
                                reason="rotary embedding whose cos/sin tables have no known bound (build with "
                                       "--device cpu so modnorm can read them)", tags=("rotary",), label="rotary"))
    return linear(Semantics("bond", (bounds[0] + bounds[1],), "rotary: max|cos| + max|sin| (tables not known)",
                            design=(1.0,), tags=("rotary",), label="rotary"))


def _table(op: OpView, table: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A cos/sin table's values broadcast to x's shape, or None when they are not known (meta)."""
    value = table.meta.get("value") if isinstance(table, torch.fx.Node) else table
    if isinstance(table, torch.fx.Node) and table.op == "get_attr":  # folded into the graph as a constant
        value = op.weights.tensor(table.target)
    if not isinstance(value, torch.Tensor) or value.is_meta or not shape:
        return None
    try:
        return torch.broadcast_to(value.detach().double(), shape)
    except RuntimeError:
        return None


def _largest_block_norm(c: torch.Tensor, s: torch.Tensor) -> float:
    """max over pairs of the spectral norm of [[a, b], [e, d]] = [[c_i, -s_i], [s_(i+h), c_(i+h)]]:
    sigma² = (S + sqrt(S² - 4 det²)) / 2 with S the squared Frobenius norm."""
    h = c.shape[-1] // 2
    a, b, e, d = c[..., :h], -s[..., :h], s[..., h:], c[..., h:]
    frob = a * a + b * b + e * e + d * d
    det = a * d - b * e
    sigma2 = (frob + (frob * frob - 4 * det * det).clamp(min=0).sqrt()) / 2
    return float(sigma2.max().sqrt()) if sigma2.numel() else 0.0


@register(F.scaled_dot_product_attention)
def _sdpa(op: OpView) -> Semantics:
    return attention(op, op.arg(6, "scale"), "sdpa")


# nn.MultiheadAttention is read through its forward written in the ops above (the fx tracer calls this instead of
# the module when it is self-attention with packed projections, tracing.ShapeTracer.call_module)
def is_packed_self_attention(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> bool:
    """The case `multi_head_attention_ops` spells out: self-attention with packed projections, no extras."""
    names = ("query", "key", "value", "key_padding_mask")
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    return (bound.get("query") is bound.get("key") is bound.get("value") and m._qkv_same_embed_dim
            and m.bias_k is None and not m.add_zero_attn and bound.get("key_padding_mask") is None)


def multi_head_attention_ops(m: nn.MultiheadAttention, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                          need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                          is_causal: bool = False) -> tuple[Any, Any]:
    """nn.MultiheadAttention's forward for self-attention, in the ops the registry reads (eval mode)."""
    x = query if m.batch_first else query.transpose(0, 1)
    batch, tokens, embed = x.shape
    heads = m.num_heads
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(batch, tokens, heads, embed // heads).transpose(1, 2) for z in (q, k, v))
    weights = None
    if need_weights:
        scores = q @ k.transpose(-2, -1) * (1 / (embed // heads) ** 0.5)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        probabilities = torch.softmax(scores, dim=-1)
        out = probabilities @ v
        weights = probabilities.mean(1) if average_attn_weights else probabilities
    else:
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = attn_mask.logical_not()  # MultiheadAttention masks out True; sdpa keeps True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    out = F.linear(out.transpose(1, 2).reshape(batch, tokens, embed), m.out_proj.weight, m.out_proj.bias)
    return (out if m.batch_first else out.transpose(0, 1)), weights
