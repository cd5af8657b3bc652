"""Arithmetic and reductions of the registry: +, -, ×, ÷ by constants, gains, activation products, mean, sum."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx

from . import atoms
from .registry import (AtomSpec, Bounds, INF, OpView, Semantics, is_number, linear, output_feature_width, register,
                       sup_bound)


# ---------------------------------------------------------------------------------------------------- arithmetic
@register(operator.mul, torch.mul, "mul", operator.imul, "mul_")
def _mul(op: OpView) -> Semantics:
    if len(op.inputs) == 2:
        return _product(op)
    factor = _constant_factor(op)
    if factor is None:
        return _unknown_factor(op, "multiplication")
    kind, value, source = factor
    if kind == "gain":
        return _gain(op, value, source)
    if kind == "offset_gain":
        return _gain(op, value[0], source, offset=value[1])
    return linear(Semantics("bond", (abs(value),), f"scalar multiple |c| = {abs(value):.4g}", label=f"× {value:.4g}",
                     tags=("scalar",), info={"factor": value}, sign=_product_sign(op)))


def _product_sign(op: OpView) -> int:
    """The sign of c ⊙ x from the constant's sign and the data's (0 when either is not known)."""
    data = op.inputs[0]
    other = next((op.arg(i, n) for i, n in ((0, "input"), (1, "other")) if op.arg(i, n) is not data), None)
    sign = getattr(op, "constant_sign", lambda arg: 0)(other)
    return sign * op.bounds[0].sign


@register(operator.truediv, torch.div, torch.true_divide, "div", "true_divide", operator.itruediv, "div_")
def _div(op: OpView) -> Semantics:
    if op.bounds and len(op.inputs) == 1 and op.inputs[0] is op.node.args[0]:
        divisor = op.arg(1, "other")
        if is_number(divisor):
            if divisor == 0:
                return Semantics("bond", (INF,), "division by zero", certified=False, reason="divides by 0")
            return linear(Semantics("bond", (1 / abs(divisor),), f"scalar multiple 1/|c| = {1 / abs(divisor):.4g}",
                             label=f"÷ {divisor:.4g}", tags=("scalar",), info={"factor": 1 / divisor}))
        value = op.constant_value(1, "other")
        if value is not None:
            smallest = float(value.abs().min())
            if smallest > 0:
                return linear(Semantics("bond", (1 / smallest,), "division by a constant tensor: 1 / min|c|",
                                 tags=("scalar",)))
    return Semantics("bond", (INF,) * max(1, len(op.inputs)), "division by an activation",
                     certified=False, reason="division by an activation is not Lipschitz without a lower bound "
                     "on the divisor (write the normalization in a recognised form)")


@register(operator.add, torch.add, "add", operator.iadd, "add_", operator.sub, torch.sub, "sub", operator.isub,
          "sub_", torch.rsub)
def _add(op: OpView) -> Semantics:
    n = len(op.inputs)
    alpha = op.arg(2, "alpha", 1)  # x + alpha·y (torch.add) or x.add(y, alpha=...): same position
    alpha = alpha if is_number(alpha) else 1
    if n >= 2:
        lipschitz = (1.0, abs(alpha)) if n == 2 else (1.0,) * n
        return linear(Semantics("bond", lipschitz, "Add: triangle inequality (sum norm on the pair)",
                         tags=("merge",), label="add"))
    shift = _shift_rms(op)
    upper = op.bounds[0].upper + shift if op.bounds else None
    return linear(Semantics("bond", (1.0,), "adding a constant does not change the Lipschitz constant",
                     upper=upper, label="+ const"))


def _shift_rms(op: OpView) -> float:
    for index, name in ((1, "other"), (0, "input")):
        raw = op.arg(index, name)
        if is_number(raw):
            return abs(float(raw))
        value = op.constant_value(index, name)
        if value is not None:
            return float(value.float().abs().max())
        bound = op.constant_abs_bound(index, name) if hasattr(op, "constant_abs_bound") else None
        if bound is not None and op.arg(index, name) not in op.inputs:
            return bound
    return INF


def _constant_factor(op: OpView) -> tuple[str, Any, str] | None:
    """The non-data factor of a product: ("scalar", c) or ("gain", param name)."""
    data = op.inputs[0]
    for index, name in ((0, "input"), (1, "other")):
        raw = op.arg(index, name)
        if raw is data:
            continue
        if is_number(raw):
            return "scalar", float(raw), "number"
        param = op.param_name(index, name)
        if param is not None:
            return "gain", param, "parameter"
        offset = _offset_gain(op, raw)
        if offset is not None:
            return "offset_gain", offset, "parameter plus a constant"
        value = op.constant_value(index, name)
        if value is not None:
            return "scalar", float(value.float().abs().max()), "constant tensor: max |c|"
        bound = op.constant_abs_bound(index, name) if hasattr(op, "constant_abs_bound") else None
        if bound is not None:
            return "scalar", bound, "constant tensor of unknown values: |c| bounded by its formula (cos, sin, ...)"
    return None


def _unknown_factor(op: OpView, what: str) -> Semantics:
    return Semantics("bond", (INF,), f"{what} by a constant of unknown value", certified=False,
                     reason=f"{what} by a constant tensor whose values are unknown on the meta device "
                     f"(build with --device cpu so modnorm can read it)")


def _offset_gain(op: OpView, raw: Any) -> tuple[str, float] | None:
    """`c + w` with w a parameter (Gemma's RMSNorm gain `x * (1.0 + self.weight.float())`): (w's name, c)."""
    if not (isinstance(raw, fx.Node) and raw.op == "call_function" and raw.target in (operator.add, torch.add)
            and len(raw.args) == 2):
        return None
    for number, other in ((raw.args[0], raw.args[1]), (raw.args[1], raw.args[0])):
        while isinstance(other, fx.Node) and other.op == "call_method" and other.target in CASTS:
            other = other.args[0]
        if is_number(number) and isinstance(other, fx.Node) and other.op == "get_attr" \
                and other.target in op.ctx.parameter_names:
            return other.target, float(number)
    return None


CASTS = ("to", "float", "double", "half", "bfloat16", "type_as", "contiguous")


def _gain(op: OpView, param: str, source: str, offset: float = 0.0) -> Semantics:
    """A diagonal gain diag(c + w): an atom whose effective map has norm max|c + w| (an update dw changes the map
    by diag(dw), so the offset c does not enter the atom's natural norm of updates)."""
    largest, origin = op.weights.abs_max(param)
    if offset:
        weight = op.weights.tensor(param) if hasattr(op.weights, "tensor") else None
        real = isinstance(weight, torch.Tensor) and not weight.is_meta
        largest = float((weight.detach().double() + offset).abs().max()) if real else abs(offset) + largest
    shape = tuple(getattr(op.weights, "shape")(param))
    atom = AtomSpec(atoms.Gain.kind, param, shape, atoms.Gain(shape).factor * largest, origin, params=(param,))
    what = f"diagonal gain: ||diag({offset:g} + w)|| = max|{offset:g} + w|" if offset else \
        "diagonal gain: ||diag w|| = max|w|"
    return linear(Semantics("atom", (largest,), what, atom=atom, label="gain"))


def _product(op: OpView) -> Semantics:
    # d(a*b) = da*b + a*db: w.r.t. a the constant is ||b||_inf (docs/theory/constants.md#products).
    width = output_feature_width(op)
    a, b = op.bounds
    sup_a, sup_b = _sup_of(op, 0, a, width), _sup_of(op, 1, b, width)
    via_rms = a.sup is None and b.sup is None
    reason = ("product of two activations: bounded only through ||x||_inf <= sqrt(d) ||x||_RMS"
              if via_rms else "")
    # D²(a ⊙ b)[(a1, b1), (a2, b2)] = a1 ⊙ b2 + a2 ⊙ b1, and ||a1 ⊙ b2|| <= sqrt(d) ||a1|| ||b2|| in RMS norms.
    design = (min(sup_b, _typical_sup(op, 1, width)), min(sup_a, _typical_sup(op, 0, width)))
    return Semantics("bond", (sup_b, sup_a), "elementwise product: ||b||_inf and ||a||_inf",
                     upper=_product_upper(a, b, sup_a, sup_b), reason=reason, tags=("product",),
                     smooth=True, curvature=1.0, label="a ⊙ b", hessian=math.sqrt(width), design=design)


def _typical_sup(op: OpView, index: int, width: int) -> float:
    """The design value of max |entry| of an operand (docs/theory/constants.md#products): d entries of RMS r
    spread like a Gaussian's reach about r·sqrt(2 ln d) — not r·sqrt(d), the worst case of one spike that the
    certified constant keeps. r is the operand's RMS at init (measured or predicted), 1 (well-normed) if unknown."""
    finder = getattr(op, "input_rms_at_init", None)
    rms = finder(index) if finder is not None else None
    rms = rms if rms is not None and math.isfinite(rms) and rms > 0 else 1.0
    return rms * max(1.0, math.sqrt(2 * math.log(max(width, 1))))


def _sup_of(op: OpView, index: int, bound: Bounds, width: int) -> float:
    """max |entry| of a product's operand. A discrete operand (a routing mask, a one-hot dispatch) has no RMS
    bound (upper 0 means "not perturbed", not "zero"): a boolean or one-hot mask is at most 1, other integers are
    unbounded as far as modnorm knows."""
    if not bound.discrete:
        return sup_bound(bound, width)
    node = op.inputs[index] if index < len(op.inputs) else None
    value = node.meta.get("value") if node is not None else None
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return 1.0
    source = node
    while source is not None and getattr(source, "op", "") in ("call_function", "call_method"):
        name = source.target if isinstance(source.target, str) else getattr(source.target, "__name__", "")
        if name == "one_hot":
            return 1.0
        if name not in ("getitem", "to", "float", "long", "int", "unsqueeze", "view", "reshape"):
            break
        source = source.args[0]
    return INF


def _product_upper(a: Bounds, b: Bounds, sup_a: float, sup_b: float) -> float:
    if a.discrete or b.discrete:  # only the continuous operand has an RMS bound
        return (sup_b * a.upper) if b.discrete and not a.discrete else (sup_a * b.upper if not b.discrete else 0.0)
    return min(sup_a * b.upper, sup_b * a.upper)


# ---------------------------------------------------------------------------------------------------- reductions
@register(torch.mean, "mean")
def _mean(op: OpView) -> Semantics:
    return linear(Semantics("bond", (1.0,), "mean: Jensen, ||mean x|| <= ||x||", fdim=_reduced_fdim(op),
                     label="mean"))


@register(torch.sum, "sum")
def _sum(op: OpView) -> Semantics:
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    count = max(1, math.prod(in_shape) // max(1, math.prod(out_shape)))
    return linear(Semantics("bond", (float(count),), f"sum over {count} entries = {count} x mean",
                     fdim=_reduced_fdim(op), label="sum"))


def _reduced_fdim(op: OpView) -> int:
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    fdim = op.bounds[0].fdim if op.bounds and op.bounds[0].fdim is not None else len(in_shape) - 1
    if len(out_shape) == len(in_shape):
        return fdim
    dims = op.arg(1, "dim")
    if dims is None:
        return max(0, len(out_shape) - 1)
    dims = [d % len(in_shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if fdim in dims:
        return max(0, len(out_shape) - 1)
    return fdim - sum(1 for d in dims if d < fdim)
