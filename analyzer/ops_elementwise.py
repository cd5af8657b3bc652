"""Elementwise ops of the registry: activations (bonds), powers, where, softmax family."""

from __future__ import annotations

import math
from typing import Any
from dataclasses import replace
import operator

import torch
import torch.nn.functional as F
from torch import nn

from .registry import (GELU_SLOPE, INF, OpView, SILU_SLOPE, SQRT2, Semantics, bond, feature_width, is_number, linear,
                       output_feature_width, register, sup_bound)


# ----------------------------------------------------------------------------------------------- elementwise bonds
# Curvatures max |phi''| (sharpness), each derived here and measured on a grid in tests/test_constants.py:
#   GELU   x·Φ(x): phi'' = φ(x)(2 - x²), largest at 0: 2φ(0) = √(2/π) = 0.797885 -> 0.7979 (rounded up); the tanh
#          form has the same value at 0 (it matches erf-GELU to third order there).
#   SiLU   x·σ(x): phi'' = σ'(x)(2 + x(1 - 2σ(x))), largest at 0: 2σ'(0) = 1/2.
#   tanh   phi'' = -2 tanh(x) sech²(x), largest at tanh x = 1/√3: 4/(3√3) = 0.76980036 -> 0.76981 (rounded up:
#          a bound may never sit below the true value, not even by 4e-7).
#   sigmoid  σ'' = σ(1-σ)(1-2σ), largest at σ = 1/2 ± 1/(2√3): 1/(6√3) = 0.096225 -> 0.09623.
#   Mish   no closed form: measured max |phi''| = 0.64420 on [-30, 30] (grid step 1e-4) -> 0.6443.
#   QuickGELU  x·σ(1.702x) = silu(1.702x)/1.702: phi'' = 1.702·silu''(1.702x), largest 1.702/2 = 0.851.
bond(nn.ReLU, F.relu, torch.relu, "relu", "relu_", F.relu_, torch.relu_, certified=1.0, modula=1 / SQRT2,
     smooth=False, sign=1, source="ReLU: Jacobian diag(1[x>0]) has norm 1 (Modula's 1/sqrt2 is typical-case)")
bond(nn.GELU, F.gelu, "gelu", certified=GELU_SLOPE, modula=1 / SQRT2, curvature=0.7979,
     source="GELU: max gelu' = 1.12900 (Modula nominal 1/sqrt2)")
bond(nn.SiLU, F.silu, "silu", certified=SILU_SLOPE, curvature=0.5, source="SiLU: max silu' = 1.0999")
bond(nn.Tanh, torch.tanh, F.tanh, "tanh", certified=1.0, curvature=0.76981, sup=1.0,
     source="tanh: max tanh' = 1")
bond(nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid", certified=0.25, curvature=0.09623, sup=1.0, at_zero=0.5, sign=1,
     source="sigmoid: max sigma' = 1/4, max |sigma''| = 1/(6 sqrt 3)")
bond(nn.Hardtanh, F.hardtanh, nn.ReLU6, F.relu6, certified=1.0, smooth=False, sup=6.0, source="clip: 1-Lipschitz")
bond(nn.Hardswish, F.hardswish, certified=1.5, smooth=False, source="hardswish: max slope (2x+3)/6 = 1.5 at x=3")
bond(nn.Hardsigmoid, F.hardsigmoid, certified=1 / 6 + 1e-8, smooth=False, sup=1.0, at_zero=0.5,
     source="hardsigmoid: slope 1/6 (torch's kernel multiplies by float32 1/6: 0.16666667)")
bond(nn.Mish, F.mish, certified=1.089, curvature=0.6443, source="mish: max slope 1.089")
bond(torch.abs, "abs", operator.abs, certified=1.0, smooth=False, source="abs: Jacobian diag(sign x)")


@register(operator.neg, torch.neg, "neg")
def _neg(op: OpView) -> Semantics:
    sign = -op.bounds[0].sign if op.bounds else 0
    return linear(Semantics("bond", (1.0,), "negation is an isometry", label="neg", sign=sign,
                            upper=op.bounds[0].upper if op.bounds else None, lower=op.bounds[0].lower if op.bounds else 0.0,
                            sup=op.bounds[0].sup if op.bounds else None))
bond(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, F.dropout, "contiguous", "clone", "detach",
     "float", "double", "half", "bfloat16", "to", "type", "type_as", "requires_grad_", certified=1.0,
     source="identity in eval mode (dropout analysed in eval mode)")


# Activation modules of libraries modnorm does not import, registered by qualified class name. The tracer keeps
# them whole (a leaf), as it keeps torch.nn's, so the pattern of their formula need not be recognised.
bond("transformers.activations.NewGELUActivation", "transformers.activations.GELUActivation",
     "transformers.activations.FastGELUActivation", "transformers.activations.PytorchGELUTanh",
     "transformers.activations.GELUTanh", "timm.layers.activations.GELU", "timm.layers.activations.GELUTanh",
     certified=GELU_SLOPE, modula=1 / SQRT2, curvature=0.7979, source="GELU (tanh or erf form): max slope 1.12900")
bond("transformers.activations.QuickGELUActivation", certified=SILU_SLOPE, curvature=0.851,
     source="QuickGELU x·σ(1.702x): max slope = max silu' = 1.0999")
bond("transformers.activations.SiLUActivation", certified=SILU_SLOPE, curvature=0.5, source="SiLU: max slope 1.0999")
# BLOOM's GeLUFunction is an autograd.Function: its forward is the tanh GELU and its backward (bloom_gelu_back) is
# that function's exact derivative (tests/test_hf.py compares it with autograd through the forward), so the
# forward's constants hold for the gradients it returns.
bond("transformers.models.bloom.modeling_bloom.GeLUFunction", certified=GELU_SLOPE, modula=1 / SQRT2,
     curvature=0.7979, source="BLOOM GeLUFunction (tanh GELU, exact backward): max slope 1.12900")


@register(torch.pow, "pow", operator.pow, "square", torch.square)
def _power(op: OpView) -> Semantics:
    """x^p elementwise (p a constant ≥ 1): |d/dx x^p| = p |x|^(p-1) <= p s^(p-1) with s the input's sup bound
    (√d × its RMS bound when nothing tighter is known). Sound, and as loose as that sup; p < 1 is not Lipschitz."""
    exponent = 2.0 if op.node.target in ("square", torch.square) else op.arg(1, "exponent")
    if not op.inputs or op.arg(0, "input") not in op.inputs or not is_number(exponent):
        return Semantics("unknown", (INF,) * max(1, len(op.inputs)), "pow", certified=False,
                         reason="a power with a data-dependent exponent or base is not modelled")
    p = float(exponent)
    if p == 1.0:
        return linear(Semantics("bond", (1.0,), "x^1", label="pow"))
    if p < 1.0:
        return Semantics("bond", (INF,), f"x^{p:g}", certified=False, smooth=False,
                         reason=f"x^{p:g} has an unbounded slope near 0")
    width = output_feature_width(op)
    sup = sup_bound(op.bounds[0], width)
    slope = Semantics("bond", (p * sup ** (p - 1),), f"x^{p:g}: slope p·sup|x|^(p-1) with sup from the input bound",
                      upper=sup ** p, label=f"x^{p:g}")
    if p < 2.0 and p != int(p):  # 1 < p < 2: the slope is bounded, but x^(p-2) in the second derivative is not
        return replace(slope, smooth=False, hessian=None)
    return replace(slope, curvature=p * (p - 1) * sup ** (p - 2),
                   hessian=p * (p - 1) * sup ** (p - 2) * math.sqrt(max(width, 1)))


@register(torch.exp, "exp")
def _exp(op: OpView) -> Semantics:
    """e^x elementwise: slope e^x <= e^s with s the input's sup bound (√d × its RMS bound when nothing tighter is
    known). Certified, and as loose as e^s: an exponent that is never positive (Mamba's e^(A·dt), A < 0 <= dt)
    would give 1, but the forward pass does not track signs. Overflowing e^s is an unbounded constant."""
    width = output_feature_width(op)
    if op.bounds[0].sign < 0:  # x <= 0 everywhere: e^x in (0, 1], slope and curvature at most 1
        return Semantics("bond", (1.0,), "exp of a non-positive input: slope e^x <= 1", upper=1.0, sup=1.0,
                         curvature=1.0, hessian=math.sqrt(max(width, 1)), label="exp", sign=1)
    sup = sup_bound(op.bounds[0], width)
    slope = math.exp(sup) if sup < 700 else INF
    return Semantics("bond", (slope,), "exp: slope e^sup|x| with sup from the input bound", upper=slope, sup=slope,
                     curvature=slope, hessian=slope * math.sqrt(max(width, 1)), label="exp", sign=1)


@register(torch.where, "where")
def _where(op: OpView) -> Semantics:
    condition = op.arg(0, "condition")
    if condition in op.inputs:
        return Semantics("bond", (INF,) * len(op.inputs), "where", certified=False, smooth=False,
                         reason="torch.where on a condition computed from activations jumps between branches")
    # A fixed mask picks each output element from one input or a constant: 1-Lipschitz in each data input (sum
    # norm), affine, so no curvature. The RMS of a constant fill is at most its magnitude.
    fills = [abs(v) for v in (op.arg(1, "input"), op.arg(2, "other")) if isinstance(v, (int, float))]
    data = sum(b.upper for b in op.bounds) if op.bounds else 0.0
    return linear(Semantics("bond", (1.0,) * len(op.inputs), "where with a fixed mask: a selection, 1-Lipschitz",
                            upper=data + sum(fills)))


@register(torch._assert, torch.fx._symbolic_trace._assert_is_none)
def _assertion(op: OpView) -> Semantics:
    return Semantics("constant", (0.0,) * len(op.inputs), "an assertion carries no data", upper=0.0)


@register(nn.LeakyReLU, F.leaky_relu)
def _leaky_relu(op: OpView) -> Semantics:
    slope = op.module.negative_slope if op.module is not None else op.arg(1, "negative_slope", 0.01)
    constant = max(1.0, abs(slope))
    return Semantics("bond", (constant,), "leaky ReLU: max(1, |slope|)", smooth=False)


def _module_or_arg(op: OpView, attribute: str, index: int, default: float) -> float:
    """A parameter of an activation: the module's attribute, else the functional call's argument."""
    if op.module is not None:
        return float(getattr(op.module, attribute))
    value = op.arg(index, attribute, default)
    return float(value) if is_number(value) else default


def _activation(op: OpView, slope: float, source: str, *, curvature: float = 0.0, smooth: bool = True,
                at_zero: float = 0.0) -> Semantics:
    """A parameterised elementwise activation: |phi(x)| <= |phi(0)| + slope |x|, so the output RMS is at most
    |phi(0)| + slope × (input RMS); the Hessian bound is max|phi''| sqrt(d) in RMS units (docs/theory/sharpness.md#atoms-and-bonds)."""
    upper = at_zero + slope * op.bounds[0].upper if op.bounds else None
    hessian = curvature * math.sqrt(feature_width(op)) if smooth else None
    return Semantics("bond", (slope,), source, smooth=smooth, curvature=curvature, upper=upper, hessian=hessian)


@register(nn.ELU, F.elu)
def _elu(op: OpView) -> Semantics:
    """ELU: x for x > 0, alpha (e^x - 1) below: slope 1 or alpha e^x <= alpha, so max(1, |alpha|); phi'' jumps
    at 0 (0 above, alpha below), so no curvature bound is claimed."""
    alpha = _module_or_arg(op, "alpha", 1, 1.0)
    return _activation(op, max(1.0, abs(alpha)), f"ELU(alpha={alpha:g}): slope <= max(1, |alpha|)", smooth=False)


@register(nn.Softplus, F.softplus)
def _softplus(op: OpView) -> Semantics:
    """softplus_beta(x) = log(1 + e^(beta x)) / beta: slope sigma(beta x) < 1, phi'' = beta sigma (1 - sigma) <=
    beta / 4, phi(0) = log(2) / beta. Above `threshold` torch switches to x (slope 1: still within the bound)."""
    beta = _module_or_arg(op, "beta", 1, 1.0)
    if beta <= 0:
        return Semantics("bond", (INF,), f"softplus(beta={beta:g})", certified=False, smooth=False,
                         reason="softplus with beta <= 0 is not a standard activation and is not modelled")
    return replace(_activation(op, 1.0, f"softplus(beta={beta:g}): slope < 1, max |phi''| = beta/4",
                               curvature=beta / 4, at_zero=math.log(2) / beta), sign=1)  # softplus > 0


# ------------------------------------------------------------------------------------------------ softmax family
def _reduced_axis_is_feature(op: OpView, dim: Any) -> bool:
    """Whether a softmax-like op normalises along the tracked feature axis of its input (not a position axis)."""
    shape = op.in_shape(0) if op.inputs else op.out_shape()
    fdim = op.bounds[0].fdim if op.bounds and op.bounds[0].fdim is not None else -1
    if not shape or not isinstance(dim, int):
        return False  # an unknown layout or dim: not assumed to be the feature axis
    return dim % len(shape) == fdim % len(shape)


@register(nn.Softmax, F.softmax, torch.softmax, "softmax")
def _softmax(op: OpView) -> Semantics:
    dim = op.module.dim if op.module is not None else op.arg(1, "dim")
    shape = op.in_shape(0) if op.inputs else op.out_shape()
    if _reduced_axis_is_feature(op, dim):
        # Jacobian diag p - p p^T: u^T J u = Var_p(u) <= 1/2 (l2), and each row has l1 norm 2p(1-p) <= 1/2 (docs/theory/constants.md#bonds).
        width = shape[dim] if shape and isinstance(dim, int) else 1
        constant = 1.0 if op.profile == "modula" else 0.5
        # D²p[a, b]_j = p_j((a_j - ā)(b_j - b̄) - Cov_p(a, b)): its l1 norm is <= 3 max|a| max|b| <= 3n ||a|| ||b||
        # in RMS units, and ||.||_RMS <= ||.||_1 / sqrt(n): 3 sqrt(n).
        return Semantics("bond", (constant,), "softmax: ||diag p - pp^T|| <= 1/2", nominal=(1.0,),
                         curvature=1.0, sup=1.0, upper=1.0 / math.sqrt(max(width, 1)) if width else 1.0,
                         hessian=3 * math.sqrt(max(width, 1)))
    # Along a position axis (n positions), independently for each feature j: dy[t, j] = sum_s J_j[t, s] dx[s, j]
    # with J_j = diag p - p p^T, whose rows have l1 norm <= 1/2 and entries |J[t, s]| <= 1/4. Cauchy-Schwarz,
    # dy[t, j]² <= (sum_s |J[t, s]|)(sum_s |J[t, s]| dx[s, j]²) <= 1/8 sum_s dx[s, j]²; the mean over j gives
    # ||dy_t||² <= 1/8 sum_s ||dx_s||² <= (n/8) max_s ||dx_s||²: the constant sqrt(n/8). Every entry is <= 1 and a
    # position may win for every feature, so the output RMS bound is 1 (not 1/sqrt(n)).
    n = shape[dim] if shape and isinstance(dim, int) else None
    if n is None:
        return Semantics("bond", (INF,), "softmax along an unknown axis", certified=False, smooth=False,
                         reason="softmax without a known dim (or input shape) is not modelled")
    constant = math.sqrt(n / 8)
    return Semantics("bond", (constant,), f"softmax along a position axis of {n}: sqrt(n/8)", nominal=(constant,),
                     sup=1.0, upper=1.0, hessian=None,
                     reason="softmax along a position axis: no second-derivative bound is derived")


@register(nn.LogSoftmax, F.log_softmax, torch.log_softmax, "log_softmax")
def _log_softmax(op: OpView) -> Semantics:
    width = op.out_shape()[-1]
    return Semantics("bond", (1.0 + math.sqrt(width),), "log_softmax: ||I - 1p^T|| <= 1 + sqrt(n)",
                     upper=INF, reason="log-probabilities are unbounded")
