"""THE registry: every spelling fx records an op under -> its modular semantics.

An entry maps a `call_module` class, a `call_function` target (the function object, e.g. `torch._C._nn.linear`,
which is what `F.linear` is) or a `call_method` name to a function `(op: OpView) -> Semantics`. Simple bonds are
one line (`bond(...)`); atoms and ops whose constant depends on their inputs' bounds are small functions.

Norm convention (docs/theory/modular-norm.md#norms): a tensor is measured by the RMS over its feature axis,
maximised over every other position (batch, token, pixel). The feature axis is the last one, or axis 1 for NCHW
feature maps; layout ops say where it goes. "certified" constants are worst-case over the unit ball; "modula"
constants are the nominal values of Modula 0.0.0.0.0.2 (`--profile modula`), kept so that the paper's
package can be reproduced.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Semantics", "AtomSpec", "Bounds", "OpView", "REGISTRY", "lookup", "register", "bond",
           "INF", "layout_lipschitz"]

INF = math.inf
SQRT2 = math.sqrt(2.0)
GELU_SLOPE = 1.1290  # max gelu' = Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.128904 (erf), 1.128993 (tanh form)
SILU_SLOPE = 1.0999  # max silu' = 1.099839, at x ≈ 2.40 (also x·σ(1.702x), QuickGELU)


@dataclass(frozen=True)
class Bounds:
    """What the forward pass knows about a tensor: RMS bounds over its feature axis (max over positions)."""

    upper: float = 1.0
    lower: float = 0.0
    sup: float | None = None  # bound on the largest |entry|, when known better than sqrt(F) * upper
    fdim: int | None = None  # index of the feature axis; None for non-tensors
    discrete: bool = False  # integer ids (tokens, positions): no norm, no sensitivity


@dataclass(frozen=True)
class AtomSpec:
    """A parameterised op: the weight tensor, its shape and the natural norm of its effective map."""

    kind: str  # "Linear" | "Conv1d" | "Conv2d" | "Embedding" | "Gain"
    weight: str  # qualified parameter name
    shape: tuple[int, ...]
    norm: float  # operator norm of the effective map, forward scale included (docs/theory/constants.md#atoms)
    norm_source: str  # "measured" | "predicted"
    scale: float = 1.0
    params: tuple[str, ...] = ()
    bias_rms: float = 0.0
    # norm = factor × the raw norm of the weight: σ_max (Linear), max σ over kernel positions and groups (Conv),
    # max row RMS (Embedding), max |w| (Gain). modnorm.optim measures updates with it.
    factor: float = 1.0
    groups: int = 1


@dataclass(frozen=True)
class Semantics:
    """An op's modular semantics: Lipschitz constant per data input, provenance, atom if parameterised."""

    kind: str  # "atom" | "bond" | "constant" | "unknown"
    lipschitz: tuple[float, ...]
    source: str
    design: tuple[float, ...] | None = None  # constants for targets (normalizers at their well-normed value)
    nominal: tuple[float, ...] | None = None  # Modula's value, for the report of nominal vs certified
    certified: bool = True
    reason: str = ""
    atom: AtomSpec | None = None
    upper: float | None = None  # output RMS upper bound; default sum_i L_i * U_i
    lower: float = 0.0
    sup: float | None = None
    fdim: int | None = -1  # -1: same as the first data input
    smooth: bool = True
    curvature: float = 0.0  # max |phi''| of an elementwise op (docs/theory/sharpness.md#atoms-and-bonds)
    # Bound on the second derivative w.r.t. the data inputs, ||D²f[u, v]|| <= hessian ||u|| ||v|| (sum norm over the
    # inputs, RMS units): 0 for ops linear in their data, None where no bound is derived — sharpness then names
    # this op as the reason it is not certified. Unknown is the default so that nothing passes silently.
    hessian: float | None = None
    label: str = ""
    tags: tuple[str, ...] = ()  # e.g. "normalization", "product", "attention", "layout"
    info: dict[str, Any] = field(default_factory=dict)


class WeightView(Protocol):
    def spectral(self, name: str, transpose: bool = False) -> tuple[float, str]: ...
    def conv(self, name: str, groups: int) -> tuple[float, str]: ...
    def row_rms(self, name: str) -> tuple[float, float, str]: ...
    def abs_max(self, name: str) -> tuple[float, str]: ...
    def abs_min(self, name: str) -> tuple[float, str]: ...
    def rms(self, name: str) -> tuple[float, str]: ...
    def max_row_l1(self, name: str) -> tuple[float, str]: ...
    def batch_norm(self, prefix: str, eps: float) -> tuple[float, str]: ...


class OpView(Protocol):
    """What an entry may ask about the node it describes (implemented in calculus.py)."""

    node: Any
    module: nn.Module | None
    profile: str
    scale: float
    inputs: list[Any]
    bounds: list[Bounds]
    weights: WeightView
    norm_input_rms: float | None

    def arg(self, index: int, name: str, default: Any = None) -> Any: ...
    def param_name(self, index: int, name: str) -> str | None: ...
    def constant_value(self, index: int, name: str) -> Any: ...
    @property
    def value(self) -> Any: ...
    def in_shape(self, i: int = 0) -> tuple[int, ...]: ...
    def out_shape(self) -> tuple[int, ...]: ...


Entry = Callable[[OpView], Semantics]
REGISTRY: dict[Any, Entry] = {}


def register(*spellings: Any) -> Callable[[Entry], Entry]:
    """Register an entry under every spelling fx may record the op as."""

    def decorate(entry: Entry) -> Entry:
        for spelling in spellings:
            REGISTRY[spelling] = entry
        return entry

    return decorate


def linear(semantics: Semantics) -> Semantics:
    """Mark an op as linear in its data inputs (second derivative 0)."""
    return replace(semantics, hessian=0.0)


def feature_width(op: OpView) -> int:
    """The size of the feature axis of the first data input (channels for images)."""
    shape = op.in_shape(0) if op.inputs else op.out_shape()
    fdim = op.bounds[0].fdim if op.bounds and op.bounds[0].fdim is not None else -1
    return int(shape[fdim]) if shape else 1


def bond(*spellings: Any, certified: float, modula: float | None = None, source: str, smooth: bool = True,
         curvature: float = 0.0, sup: float | None = None, label: str = "", at_zero: float = 0.0) -> None:
    """Register a weightless elementwise op with a fixed Lipschitz constant.

    `at_zero` is |φ(0)|: the output RMS is at most |φ(0)| + L·(input RMS), capped by `sup` (found by the
    property tests: sigmoid(0) = 1/2 and softplus(0) = log 2 are not 0).
    """

    def entry(op: OpView) -> Semantics:
        nominal = certified if modula is None else modula
        constant = nominal if op.profile == "modula" else certified
        n = max(1, len(op.inputs))
        upper = None
        if op.bounds:
            upper = at_zero + constant * op.bounds[0].upper
        if sup is not None:
            upper = min(sup, upper) if upper is not None else sup
        # In RMS norms ||phi''(x) ⊙ a ⊙ b|| <= max|phi''| ||a||_inf ||b|| <= max|phi''| sqrt(d) ||a|| ||b||.
        hessian = curvature * math.sqrt(feature_width(op)) if smooth else None
        return Semantics("bond", (constant,) * n, source, nominal=(nominal,) * n, smooth=smooth,
                         curvature=curvature, sup=sup, upper=upper, label=label, hessian=hessian)

    register(*spellings)(entry)


def lookup(key: Any) -> Entry | None:
    """The entry for a module class (MRO walked), a function object, a method name, or an aten op (from the
    torch.export fallback: the op itself if registered, else its alias below)."""
    if isinstance(key, type):
        for klass in key.__mro__:
            if klass in REGISTRY:
                return REGISTRY[klass]
            named = REGISTRY.get(f"{klass.__module__}.{klass.__qualname__}")
            if named is not None:
                return named
        return None
    if isinstance(key, torch._ops.OpOverload):
        return REGISTRY.get(key) or REGISTRY.get(key.overloadpacket) or REGISTRY.get(ATEN_ALIASES.get(
            key.overloadpacket.__name__, ""))
    try:
        return REGISTRY.get(key)
    except TypeError:  # unhashable target
        return None


# aten op (torch.export graphs) -> the spelling whose entry reads the same arguments in the same order.
ATEN_ALIASES: dict[str, Any] = {
    "linear": "aten:linear", "layer_norm": "aten:layer_norm", "rms_norm": "aten:rms_norm",
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv, "neg": operator.neg,
    "matmul": torch.matmul, "mm": torch.mm, "bmm": torch.bmm, "addmm": torch.addmm,
    "gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "softplus": F.softplus, "abs": torch.abs, "softmax": "softmax", "_softmax": "softmax",
    "log_softmax": "log_softmax", "mean": torch.mean, "sum": torch.sum, "cat": torch.cat,
    "split": "split", "split_with_sizes": "split", "chunk": "chunk", "unbind": "unbind",
    "view": "view", "_unsafe_view": "view", "reshape": "reshape", "flatten": "flatten", "permute": "permute",
    "unflatten": "unflatten",
    "transpose": "transpose", "t": "t", "unsqueeze": "unsqueeze", "squeeze": "squeeze", "expand": "expand",
    "contiguous": "contiguous", "clone": "clone", "alias": "clone", "dropout": F.dropout, "_to_copy": "to",
    "to": "to", "where": torch.where, "pow": torch.pow,
    "conv1d": F.conv1d, "conv2d": F.conv2d, "scaled_dot_product_attention": F.scaled_dot_product_attention,
    "adaptive_avg_pool1d": F.adaptive_avg_pool1d, "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "avg_pool2d": F.avg_pool2d, "max_pool2d": F.max_pool2d, "embedding": "aten:embedding", "slice": "aten:slice",
    "select": "aten:slice", "_assert_tensor_metadata": torch._assert, "batch_norm": "aten:batch_norm",
}


# ----------------------------------------------------------------------------------------------- elementwise bonds
bond(nn.ReLU, F.relu, torch.relu, "relu", "relu_", F.relu_, torch.relu_, certified=1.0, modula=1 / SQRT2,
     smooth=False, source="ReLU: Jacobian diag(1[x>0]) has norm 1 (Modula's 1/sqrt2 is typical-case)")
bond(nn.GELU, F.gelu, "gelu", certified=GELU_SLOPE, modula=1 / SQRT2, curvature=0.7979,
     source="GELU: max gelu' = 1.12900 (Modula nominal 1/sqrt2)")
bond(nn.SiLU, F.silu, "silu", certified=SILU_SLOPE, curvature=0.5, source="SiLU: max silu' = 1.0999")
bond(nn.Tanh, torch.tanh, F.tanh, "tanh", certified=1.0, curvature=0.7698, sup=1.0,
     source="tanh: max tanh' = 1")
bond(nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid", certified=0.25, curvature=0.09623, sup=1.0, at_zero=0.5,
     source="sigmoid: max sigma' = 1/4, max |sigma''| = 1/(6 sqrt 3)")
bond(nn.Hardtanh, F.hardtanh, nn.ReLU6, F.relu6, certified=1.0, smooth=False, sup=6.0, source="clip: 1-Lipschitz")
bond(nn.Hardswish, F.hardswish, certified=1.5, smooth=False, source="hardswish: max slope (2x+3)/6 = 1.5 at x=3")
bond(nn.Hardsigmoid, F.hardsigmoid, certified=1 / 6 + 1e-8, smooth=False, sup=1.0, at_zero=0.5,
     source="hardsigmoid: slope 1/6 (torch's kernel multiplies by float32 1/6: 0.16666667)")
bond(nn.Softplus, F.softplus, certified=1.0, curvature=0.25, at_zero=math.log(2), source="softplus: slope < 1")
bond(nn.Mish, F.mish, certified=1.089, curvature=0.6443, source="mish: max slope 1.089")
bond(nn.ELU, F.elu, certified=1.0, smooth=False, source="ELU(alpha=1): slope <= 1")
bond(torch.abs, "abs", operator.abs, certified=1.0, smooth=False, source="abs: Jacobian diag(sign x)")
bond(operator.neg, torch.neg, "neg", certified=1.0, source="negation is an isometry")
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
LEAF_CLASS_NAMES = {k for k in REGISTRY if isinstance(k, str) and k.count(".") >= 2}


@register(torch.pow, "pow", operator.pow, "square", torch.square)
def _power(op: OpView) -> Semantics:
    """x^p elementwise (p a constant ≥ 1): |d/dx x^p| = p |x|^(p-1) <= p s^(p-1) with s the input's sup bound
    (√d × its RMS bound when nothing tighter is known). Sound, and as loose as that sup; p < 1 is not Lipschitz."""
    exponent = 2.0 if op.node.target in ("square", torch.square) else op.arg(1, "exponent")
    if not op.inputs or op.arg(0, "input") not in op.inputs or not _is_number(exponent):
        return Semantics("unknown", (INF,) * max(1, len(op.inputs)), "pow", certified=False,
                         reason="a power with a data-dependent exponent or base is not modelled")
    p = float(exponent)
    if p == 1.0:
        return linear(Semantics("bond", (1.0,), "x^1", label="pow"))
    if p < 1.0 or p != int(p) and p < 2.0:
        return Semantics("bond", (INF,), f"x^{p:g}", certified=False, smooth=False,
                         reason=f"x^{p:g} has an unbounded slope near 0")
    width = op.out_shape()[-1] if op.out_shape() else 1
    sup = _sup(op.bounds[0], width)
    return Semantics("bond", (p * sup ** (p - 1),), f"x^{p:g}: slope p·sup|x|^(p-1) with sup from the input bound",
                     upper=sup ** p, curvature=p * (p - 1) * sup ** max(p - 2, 0.0), label=f"x^{p:g}",
                     hessian=p * (p - 1) * sup ** max(p - 2, 0.0) * math.sqrt(max(width, 1)))


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


# ------------------------------------------------------------------------------------------------ softmax family
@register(nn.Softmax, F.softmax, torch.softmax, "softmax")
def _softmax(op: OpView) -> Semantics:
    # Jacobian diag p - p p^T: u^T J u = Var_p(u) <= 1/2 (l2), and each row has l1 norm 2p(1-p) <= 1/2 .
    width = op.out_shape()[-1] if op.out_shape() else 1
    constant = 1.0 if op.profile == "modula" else 0.5
    # D²p[a, b]_j = p_j((a_j - ā)(b_j - b̄) - Cov_p(a, b)): its l1 norm is <= 3 max|a| max|b| <= 3n ||a|| ||b||
    # in RMS units, and ||.||_RMS <= ||.||_1 / sqrt(n): 3 sqrt(n).
    return Semantics("bond", (constant,), "softmax: ||diag p - pp^T|| <= 1/2", nominal=(1.0,),
                     curvature=1.0, sup=1.0, upper=1.0 / math.sqrt(max(width, 1)) if width else 1.0,
                     hessian=3 * math.sqrt(max(width, 1)))


@register(nn.LogSoftmax, F.log_softmax, torch.log_softmax, "log_softmax")
def _log_softmax(op: OpView) -> Semantics:
    width = op.out_shape()[-1]
    return Semantics("bond", (1.0 + math.sqrt(width),), "log_softmax: ||I - 1p^T|| <= 1 + sqrt(n)",
                     upper=INF, reason="log-probabilities are unbounded")


# ---------------------------------------------------------------------------------------------------- arithmetic
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
    return linear(Semantics("bond", (abs(value),), f"scalar multiple |c| = {abs(value):.4g}", label=f"× {value:.4g}",
                     tags=("scalar",), info={"factor": value}))


@register(operator.truediv, torch.div, torch.true_divide, "div", "true_divide", operator.itruediv, "div_")
def _div(op: OpView) -> Semantics:
    if op.bounds and len(op.inputs) == 1 and op.inputs[0] is op.node.args[0]:
        divisor = op.arg(1, "other")
        if _is_number(divisor):
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
    alpha = op.arg(2, "alpha", 1) if op.node.op != "call_method" else op.arg(2, "alpha", 1)
    alpha = alpha if _is_number(alpha) else 1
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
        if _is_number(raw):
            return abs(float(raw))
        value = op.constant_value(index, name)
        if value is not None:
            return float(value.float().abs().max())
    return INF


def _constant_factor(op: OpView) -> tuple[str, Any, str] | None:
    """The non-data factor of a product: ("scalar", c) or ("gain", param name)."""
    data = op.inputs[0]
    for index, name in ((0, "input"), (1, "other")):
        raw = op.arg(index, name)
        if raw is data:
            continue
        if _is_number(raw):
            return "scalar", float(raw), "number"
        param = op.param_name(index, name)
        if param is not None:
            return "gain", param, "parameter"
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


def _gain(op: OpView, param: str, source: str) -> Semantics:
    largest, origin = op.weights.abs_max(param)
    shape = tuple(getattr(op.weights, "shape")(param))
    atom = AtomSpec("Gain", param, shape, largest, origin, params=(param,))
    return linear(Semantics("atom", (largest,), "diagonal gain: ||diag w|| = max|w|", atom=atom, label="gain"))


def _sup(bound: Bounds, width: int) -> float:
    rms_based = math.sqrt(max(width, 1)) * bound.upper
    return min(bound.sup, rms_based) if bound.sup is not None else rms_based


def _product(op: OpView) -> Semantics:
    # d(a*b) = da*b + a*db: w.r.t. a the constant is ||b||_inf (docs/theory/constants.md#products).
    width = op.out_shape()[-1] if op.out_shape() else 1
    a, b = op.bounds
    sup_a, sup_b = _sup(a, width), _sup(b, width)
    via_rms = a.sup is None and b.sup is None
    reason = ("product of two activations: bounded only through ||x||_inf <= sqrt(d) ||x||_RMS"
              if via_rms else "")
    # D²(a ⊙ b)[(a1, b1), (a2, b2)] = a1 ⊙ b2 + a2 ⊙ b1, and ||a1 ⊙ b2|| <= sqrt(d) ||a1|| ||b2|| in RMS norms.
    return Semantics("bond", (sup_b, sup_a), "elementwise product: ||b||_inf and ||a||_inf",
                     upper=min(sup_a * b.upper, sup_b * a.upper), reason=reason, tags=("product",),
                     smooth=True, curvature=1.0, label="a ⊙ b", hessian=math.sqrt(width))


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


# ------------------------------------------------------------------------------------------------------- layouts
def layout_lipschitz(in_shape: Sequence[int], fdim: int, out_shape: Sequence[int]) -> tuple[float, int, str]:
    """Constant and new feature axis of a reshape, from shapes alone (see the module docstring).

    Merging whole feature vectors into a bigger group keeps the max-position RMS (a mean of squares is at most
    the max); splitting a feature axis of size F into pieces of size f lets one piece carry all the energy:
    sqrt(F/f). Anything else falls back to sqrt(F), which bounds any map that only selects or copies entries.
    """
    in_shape, out_shape = list(in_shape), list(out_shape)
    if in_shape == out_shape:
        return 1.0, fdim, "same shape"
    width = in_shape[fdim] if in_shape else 1
    groups = _reshape_groups(in_shape, out_shape)
    for in_dims, out_dims in groups:
        if fdim not in in_dims:
            continue
        real_in = [d for d in in_dims if in_shape[d] != 1]
        real_out = [d for d in out_dims if out_shape[d] != 1] or out_dims[-1:]
        if real_in == [fdim] and len(real_out) == 1:
            return 1.0, real_out[0], "feature axis unchanged"
        if real_in == [fdim]:
            new = real_out[-1]
            return math.sqrt(width / out_shape[new]), new, "feature axis split"
        if len(real_out) == 1 and real_in and real_in[-1] == fdim:
            return 1.0, real_out[0], "whole feature vectors merged"
        if len(real_out) == 1:
            return 1.0, real_out[0], "feature axis merged with positions"
        break
    return math.sqrt(width), len(out_shape) - 1, "layout change not understood: sqrt(F) bound"


def _reshape_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = [], []
        pa = pb = 1
        if i < len(a):
            gi.append(i); pa *= a[i]; i += 1
        if j < len(b):
            gj.append(j); pb *= b[j]; j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i); pa *= a[i]; i += 1
            elif j < len(b):
                gj.append(j); pb *= b[j]; j += 1
            else:
                break
        while i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            gi.append(i); i += 1
        while j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            gj.append(j); j += 1
        groups.append((gi, gj))
    return groups


def _first_fdim(op: OpView) -> int:
    bound = op.bounds[0] if op.bounds else None
    shape = op.in_shape(0)
    if bound is None or bound.fdim is None:
        return len(shape) - 1
    return bound.fdim % max(1, len(shape))


@register("view", "reshape", torch.reshape, "flatten", torch.flatten, "unflatten", torch.unflatten, "squeeze",
          torch.squeeze, "unsqueeze", torch.unsqueeze, nn.Flatten, nn.Unflatten, "view_as", "reshape_as")
def _reshape(op: OpView) -> Semantics:
    constant, fdim, why = layout_lipschitz(op.in_shape(0), _first_fdim(op), op.out_shape())
    if op.profile == "modula":
        constant = 1.0
    return linear(Semantics("bond", (constant,), f"layout: {why}", fdim=fdim, tags=("layout",), label="reshape"))


@register("transpose", torch.transpose, "permute", torch.permute, "movedim", torch.movedim, "t", "swapaxes")
def _permute(op: OpView) -> Semantics:
    ndim = len(op.in_shape(0))
    order = _permutation(op, ndim)
    fdim = _first_fdim(op)
    new = order.index(fdim) if order is not None else ndim - 1
    constant = 1.0 if order is not None or op.profile == "modula" else math.sqrt(op.in_shape(0)[fdim])
    return linear(Semantics("bond", (constant,), "layout: axes permuted, feature vectors unchanged", fdim=new,
                     tags=("layout",), label="permute"))


def _permutation(op: OpView, ndim: int) -> list[int] | None:
    target = op.node.target
    if isinstance(target, torch._ops.OpOverload):  # aten.transpose.int (torch.export fallback)
        target = target.overloadpacket
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    order = list(range(ndim))
    if name in ("transpose", "swapaxes"):
        a, b = op.arg(1, "dim0"), op.arg(2, "dim1")
        a, b = a % ndim, b % ndim
        order[a], order[b] = order[b], order[a]
        return order
    if name == "t":
        return order[::-1]
    if name == "permute":
        dims = [op.arg(i, "dims") for i in range(1, len(op.node.args))]
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
        return [d % ndim for d in dims] if len(dims) == ndim else None
    return None


@register("expand", "expand_as", "repeat", torch.broadcast_to, "broadcast_to")
def _expand(op: OpView) -> Semantics:
    shift = len(op.out_shape()) - len(op.in_shape(0))
    same_width = op.out_shape()[_first_fdim(op) + shift] == op.in_shape(0)[_first_fdim(op)]
    constant = 1.0 if same_width else math.sqrt(op.in_shape(0)[_first_fdim(op)] or 1)
    return linear(Semantics("bond", (constant,), "broadcast copies positions", fdim=_first_fdim(op) + shift,
                     tags=("layout",)))


@register(operator.getitem)
def _getitem(op: OpView) -> Semantics:
    source = op.inputs[0].meta.get("value") if op.inputs else None
    if isinstance(source, (tuple, list)):
        return linear(Semantics("bond", (1.0,), "element of a tuple (pieces bounded at the split)", tags=("layout",)))
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    fdim = _first_fdim(op)
    if fdim == len(in_shape) - 1 and out_shape and out_shape[-1] == in_shape[-1] and not _indexes_last(op):
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=len(out_shape) - 1,
                         tags=("layout",)))
    if fdim == len(in_shape) - 1 and out_shape and out_shape[-1] < in_shape[-1] and len(out_shape) == len(in_shape):
        return linear(Semantics("bond", (math.sqrt(in_shape[-1] / max(1, out_shape[-1])),),
                         "slice of the feature axis: sqrt(F/f)", fdim=len(out_shape) - 1, tags=("layout",)))
    if fdim != len(in_shape) - 1 and len(out_shape) == len(in_shape) and out_shape[fdim] == in_shape[fdim]:
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=fdim,
                         tags=("layout",)))
    width = in_shape[fdim] if in_shape else 1
    return linear(Semantics("bond", (math.sqrt(width),), "indexing not understood: sqrt(F) bound",
                     fdim=max(0, len(out_shape) - 1), tags=("layout",)))


def _indexes_last(op: OpView) -> bool:
    index = op.node.args[1]
    if not isinstance(index, tuple):
        return False
    if Ellipsis in index:
        after = index[index.index(Ellipsis) + 1:]
        return any(not (isinstance(i, slice) and i == slice(None)) for i in after)
    return len(index) >= len(op.in_shape(0)) and not (isinstance(index[-1], slice) and index[-1] == slice(None))


@register(torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split", torch.unbind, "unbind")
def _split(op: OpView) -> Semantics:
    pieces = op.value if isinstance(op.value, (tuple, list)) else ()
    fdim = _first_fdim(op)
    in_shape = op.in_shape(0)
    widths = [p.shape[fdim] for p in pieces if isinstance(p, torch.Tensor) and p.dim() == len(in_shape)]
    if widths and min(widths) < in_shape[fdim] and op.profile != "modula":
        constant = math.sqrt(in_shape[fdim] / min(widths))
        return linear(Semantics("bond", (constant,), "split of the feature axis: a piece carries sqrt(F/f)",
                         fdim=fdim, tags=("layout",)))
    drop = 1 if widths == [] and pieces else 0  # unbind removes the axis
    return linear(Semantics("bond", (1.0,), "split into positions", fdim=fdim - drop if fdim > 0 else fdim,
                     tags=("layout",)))


@register(torch.cat, torch.concat, torch.concatenate, torch.stack)
def _cat(op: OpView) -> Semantics:
    return linear(Semantics("bond", (1.0,) * len(op.inputs), "cat: RMS of the union <= max of the parts",
                     tags=("layout",), label="cat"))


# ----------------------------------------------------------------------------------------------------- pooling
@register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, F.adaptive_avg_pool1d,
          F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d)
def _avg_pool(op: OpView) -> Semantics:
    return linear(Semantics("bond", (1.0,), "average pooling: a mean over pixels", fdim=1, label="avgpool"))


@register(nn.MaxPool1d, nn.MaxPool2d, F.max_pool1d, F.max_pool2d, nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d)
def _max_pool(op: OpView) -> Semantics:
    window = _window(op)
    constant = 1.0 if op.profile == "modula" else math.sqrt(window)
    return Semantics("bond", (constant,), f"max pooling: each channel may take its max at a different pixel: "
                     f"sqrt(window = {window})", smooth=False, fdim=1, nominal=(1.0,), label="maxpool")


def _window(op: OpView) -> int:
    kernel = op.module.kernel_size if op.module is not None and hasattr(op.module, "kernel_size") else \
        op.arg(1, "kernel_size")
    if kernel is None:  # adaptive: the window is the ratio of sizes
        return max(1, math.prod(op.in_shape(0)[2:]) // max(1, math.prod(op.out_shape()[2:])))
    kernel = kernel if isinstance(kernel, (tuple, list)) else (kernel,) * (len(op.in_shape(0)) - 2)
    return int(math.prod(kernel))


# ----------------------------------------------------------------------------------------------------- atoms
def _linear_atom(op: OpView, weight: str, bias: str | None, transposed: bool = False) -> Semantics:
    spectral, origin = op.weights.spectral(weight, transpose=transposed)
    shape = tuple(op.weights.shape(weight))
    fan_out, fan_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    scale = abs(op.scale)
    norm = scale * math.sqrt(fan_in / fan_out) * spectral
    bias_rms = op.weights.rms(bias)[0] * scale if bias else 0.0
    atom = AtomSpec("Linear", weight, shape, norm, origin, op.scale, tuple(p for p in (weight, bias) if p), bias_rms,
                    factor=scale * math.sqrt(fan_in / fan_out))
    fdim = _first_fdim(op)
    if fdim != len(op.in_shape(0)) - 1:  # mixes positions (token-mixing MLP): max-row l1 norm
        row_l1, origin = op.weights.max_row_l1(weight)
        constant = scale * row_l1
        return linear(Semantics("atom", (constant,), "Linear over a position axis: ||W||_inf->inf", atom=atom, fdim=fdim,
                         upper=constant * op.bounds[0].upper + bias_rms, label="Linear (positions)"))
    return linear(Semantics("atom", (norm,), "Linear: |c| sqrt(in/out) ||W||_*", atom=atom,
                     upper=norm * op.bounds[0].upper + bias_rms if op.bounds else None, label="Linear"))


@register(nn.Linear, F.linear)
def _linear(op: OpView) -> Semantics:
    if op.module is not None:
        prefix = op.node.target
        bias = f"{prefix}.bias" if op.module.bias is not None else None
        return _linear_atom(op, f"{prefix}.weight", bias)
    weight = op.param_name(1, "weight")
    if weight is None:
        return _bilinear_unknown(op, "F.linear with a weight that is not a parameter")
    return _linear_atom(op, weight, op.param_name(2, "bias"))


@register(torch.addmm)
def _addmm(op: OpView) -> Semantics:
    # GPT-2's Conv1D: addmm(bias, x, W) with W stored (in, out).
    weight = op.param_name(2, "mat2")
    if weight is None:
        return _bilinear_unknown(op, "addmm without a parameter weight")
    return _linear_atom(op, weight, op.param_name(0, "input"), transposed=True)


@register(operator.matmul, torch.matmul, "matmul", torch.mm, "mm", torch.bmm, "bmm")
def _matmul(op: OpView) -> Semantics:
    if len(op.inputs) == 1:
        weight = op.param_name(1, "other")
        if weight is not None and len(op.weights.shape(weight)) == 2:
            return _linear_atom(op, weight, None, transposed=True)
        value = op.constant_value(1, "other")
        if value is not None and value.dim() == 2:
            norm = float(torch.linalg.matrix_norm(value.double(), ord=2))
            fan_in, fan_out = value.shape
            return linear(Semantics("bond", (norm * math.sqrt(fan_in / fan_out),), "constant matrix: ||M||_RMS->RMS"))
        return _bilinear_unknown(op, "matmul with a constant of unknown value")
    # Two activations: |(AB)_i| <= k ||A_i||_RMS max_l ||B_l||_RMS (docs/theory/constants.md#products).
    a, b = op.bounds
    k = op.in_shape(0)[-1]
    return Semantics("bond", (k * b.upper, k * a.upper), "matmul of activations: k ||B||, k ||A||",
                     upper=k * a.upper * b.upper, tags=("product",), label="A @ B",
                     reason="product of two activations: certified through their RMS upper bounds")


def _bilinear_unknown(op: OpView, why: str) -> Semantics:
    return Semantics("unknown", (INF,) * max(1, len(op.inputs)), why, certified=False, reason=why)


def _conv_atom(op: OpView, weight: str, bias: str | None, groups: int) -> Semantics:
    shape = tuple(op.weights.shape(weight))
    kernel = math.prod(shape[2:])
    slice_norm, origin = op.weights.conv(weight, groups)
    c_out, c_in = shape[0], shape[1] * groups
    scale = abs(op.scale)
    norm = scale * kernel * math.sqrt(c_in / c_out) * slice_norm
    bias_rms = op.weights.rms(bias)[0] * scale if bias else 0.0
    kind = "Conv1d" if len(shape) == 3 else "Conv2d"
    atom = AtomSpec(kind, weight, shape, norm, origin, op.scale, tuple(p for p in (weight, bias) if p), bias_rms,
                    factor=scale * kernel * math.sqrt(c_in / c_out), groups=groups)
    return linear(Semantics("atom", (norm,), "Conv: |c| k^2 sqrt(in/out) max_ij ||W_ij||_*", atom=atom, fdim=1,
                     upper=norm * op.bounds[0].upper + bias_rms, label=kind))


@register(nn.Conv1d, nn.Conv2d)
def _conv_module(op: OpView) -> Semantics:
    prefix = op.node.target
    bias = f"{prefix}.bias" if op.module.bias is not None else None
    return _conv_atom(op, f"{prefix}.weight", bias, op.module.groups)


@register(F.conv1d, F.conv2d, torch.conv1d, torch.conv2d)
def _conv_function(op: OpView) -> Semantics:
    weight = op.param_name(1, "weight")
    if weight is None:
        return _bilinear_unknown(op, "convolution with a weight that is not a parameter")
    return _conv_atom(op, weight, op.param_name(2, "bias"), op.arg(6, "groups", 1) or 1)


def _embedding_atom(op: OpView, weight: str) -> Semantics:
    largest, smallest, origin = op.weights.row_rms(weight)
    scale = abs(op.scale)
    shape = tuple(op.weights.shape(weight))
    atom = AtomSpec("Embedding", weight, shape, scale * largest, origin, op.scale, (weight,), factor=scale)
    return linear(Semantics("atom", (scale * largest,), "Embedding: |c| max row RMS (l1 -> RMS)", atom=atom,
                     upper=scale * largest, lower=scale * smallest, fdim=len(op.out_shape()) - 1, label="Embedding"))


@register(nn.Embedding)
def _embedding_module(op: OpView) -> Semantics:
    return _embedding_atom(op, f"{op.node.target}.weight")


@register(F.embedding)
def _embedding_function(op: OpView) -> Semantics:
    weight = op.param_name(1, "weight")
    if weight is None:
        return _bilinear_unknown(op, "embedding lookup in a tensor that is not a parameter")
    return _embedding_atom(op, weight)


# ---------------------------------------------------------------------------------------------- normalization
def normalization(op: OpView, gain: str | None, bias: str | None, eps: float, centred: bool,
                  label: str) -> Semantics:
    """LayerNorm/RMSNorm/RMSDivide: ||w||_inf / max(input RMS floor, sqrt(eps)).

    docs/theory/constants.md#normalization.

    The floor is the forward pass's lower bound on the input RMS (for RMS-type norms only: a lower bound on the
    RMS says nothing about the centred RMS), sqrt(eps), or the user's --norm-input-rms assumption. Targets use
    the well-normed value ||w||_inf (Modula's precondition: normalizer inputs at RMS >= 1).
    """
    w_max, origin = op.weights.abs_max(gain) if gain else (1.0, "none")
    b_rms = op.weights.rms(bias)[0] if bias else 0.0
    floor_from_bounds = 0.0 if centred else op.bounds[0].lower
    floor = math.sqrt(floor_from_bounds ** 2 + eps)
    assumption = ""
    if op.norm_input_rms is not None and op.norm_input_rms > floor:
        floor, assumption = op.norm_input_rms, f"assumes input RMS >= {op.norm_input_rms:g} (--norm-input-rms)"
    if op.profile == "modula":
        constant, certified, reason = w_max, True, "Modula nominal: 1 (valid only for input RMS >= 1)"
    elif floor > 0:
        constant, certified = w_max / floor, True
        reason = assumption or (f"no lower bound on the input RMS: bounded by 1/sqrt(eps) = {1 / math.sqrt(eps):.4g}"
                                if floor_from_bounds == 0 else "")
    else:
        constant, certified = INF, False
        reason = "no eps and no lower bound on the input RMS: unbounded near 0"
    atom = None
    if gain:
        atom = AtomSpec("Gain", gain, tuple(op.weights.shape(gain)), w_max, origin, params=(gain,))
    lower = 0.0 if eps > 0 or centred else 1.0 * (op.weights.abs_min(gain)[0] if gain else 1.0)
    return Semantics("atom" if atom else "bond", (constant,), f"{label}: ||w||_inf / max(RMS floor, sqrt(eps))",
                     design=(w_max,), nominal=(w_max,), certified=certified, reason=reason, atom=atom,
                     upper=w_max + b_rms, lower=max(0.0, lower - b_rms), tags=("normalization",),
                     curvature=2 / math.sqrt(3) / max(floor, 1e-12) ** 2, label=label,
                     hessian=_normalization_hessian(w_max, floor, op.profile, certified),
                     info={"eps": eps, "floor": floor, "assumption": assumption})


def _normalization_hessian(w_max: float, floor: float, profile: str, certified: bool) -> float | None:
    """||D²(w ⊙ n(x))|| <= ||w||_inf (2/sqrt3) / r² in RMS units, r² = (input RMS floor)² + eps
    (docs/theory/sharpness.md#atoms-and-bonds: x ↦ √d x/||x̃|| with x̃ = (x, √(d eps)) is the sphere map
    after an isometric embedding). Modula's profile assumes input RMS >= 1."""
    if profile == "modula":
        return w_max * 2 / math.sqrt(3)
    return w_max * 2 / math.sqrt(3) / floor ** 2 if certified and floor > 0 else None


@register(nn.LayerNorm)
def _layer_norm_module(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    gain = f"{prefix}.weight" if m.weight is not None else None
    bias = f"{prefix}.bias" if getattr(m, "bias", None) is not None else None
    return normalization(op, gain, bias, m.eps, True, "LayerNorm")


@register(F.layer_norm)
def _layer_norm_function(op: OpView) -> Semantics:
    return normalization(op, op.param_name(2, "weight"), op.param_name(3, "bias"), op.arg(4, "eps", 1e-5), True,
                         "LayerNorm")


@register(nn.RMSNorm)
def _rms_norm_module(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps
    gain = f"{prefix}.weight" if m.weight is not None else None
    return normalization(op, gain, None, eps, False, "RMSNorm")


@register(F.rms_norm)
def _rms_norm_function(op: OpView) -> Semantics:
    eps = op.arg(3, "eps")
    eps = eps if eps is not None else torch.finfo(torch.float32).eps
    return normalization(op, op.param_name(2, "weight"), None, eps, False, "RMSNorm")


@register(nn.GroupNorm)
def _group_norm(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    gain = f"{prefix}.weight" if m.affine else None
    bias = f"{prefix}.bias" if m.affine else None
    semantics = normalization(op, gain, bias, m.eps, True, "GroupNorm")
    return Semantics(**{**semantics.__dict__, "fdim": 1})


@register(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(op: OpView) -> Semantics:
    # Eval mode: a per-channel affine map with slope |gamma_c| / sqrt(running_var_c + eps).
    slope, origin = op.weights.batch_norm(op.node.target, op.module.eps)
    return linear(Semantics("bond", (slope,), "BatchNorm (eval): max_c |gamma_c| / sqrt(var_c + eps)",
                     upper=INF if origin == "unknown" else None, fdim=1, certified=origin != "unknown",
                     reason="" if origin != "unknown" else "running statistics unknown", label="BatchNorm",
                     info={"origin": origin}))


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


# ------------------------------------------------------------------------------- aten spellings (torch.export)
@register("aten:linear")
def _aten_linear(op: OpView) -> Semantics:
    return REGISTRY[F.linear](op)


@register("aten:layer_norm")
def _aten_layer_norm(op: OpView) -> Semantics:  # (input, normalized_shape, weight, bias, eps, cudnn_enable)
    return normalization(op, op.param_name(2, "weight"), op.param_name(3, "bias"), op.arg(4, "eps", 1e-5), True,
                         "LayerNorm")


@register("aten:rms_norm")
def _aten_rms_norm(op: OpView) -> Semantics:  # (input, normalized_shape, weight, eps)
    eps = op.arg(3, "eps")
    return normalization(op, op.param_name(2, "weight"), None,
                         eps if eps is not None else torch.finfo(torch.float32).eps, False, "RMSNorm")


@register("aten:embedding")
def _aten_embedding(op: OpView) -> Semantics:  # aten.embedding(weight, indices): the weight comes first
    weight = op.param_name(0, "weight")
    if weight is None:
        return _bilinear_unknown(op, "embedding lookup in a tensor that is not a parameter")
    return _embedding_atom(op, weight)


@register("aten:slice")
def _aten_slice(op: OpView) -> Semantics:
    """aten.slice / aten.select: positions keep their feature vectors; a slice of the feature axis carries
    sqrt(F/f) (the same rules as indexing)."""
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    fdim = _first_fdim(op)
    dim = op.arg(1, "dim", 0)
    dim = dim + len(in_shape) if isinstance(dim, int) and dim < 0 else dim
    if dim != fdim:
        new = fdim - (1 if len(out_shape) < len(in_shape) and dim < fdim else 0)
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=new,
                                tags=("layout",)))
    if len(out_shape) == len(in_shape):
        return linear(Semantics("bond", (math.sqrt(in_shape[fdim] / max(1, out_shape[fdim])),),
                                "slice of the feature axis: sqrt(F/f)", fdim=fdim, tags=("layout",)))
    return linear(Semantics("bond", (math.sqrt(in_shape[fdim]),), "selects one feature: sqrt(F)",
                            fdim=max(0, len(out_shape) - 1), tags=("layout",)))


@register("aten:batch_norm")
def _aten_batch_norm(op: OpView) -> Semantics:
    """aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn), eval."""
    weight = op.param_name(1, "weight") or op.param_name(4, "running_var")
    if weight is None:
        return _bilinear_unknown(op, "batch norm whose statistics are not buffers")
    slope, origin = op.weights.batch_norm(weight.rsplit(".", 1)[0], op.arg(7, "eps", 1e-5))
    return linear(Semantics("bond", (slope,), "BatchNorm (eval): max_c |gamma_c| / sqrt(var_c + eps)",
                            fdim=1, label="BatchNorm", info={"origin": origin}))
