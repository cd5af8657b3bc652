"""The registry core: what an entry returns (`Semantics`), what it may ask (`OpView`), and the `Registry`.

Every spelling fx records an op under -> its modular semantics. The entries live in one file per family
(ops_elementwise, ops_arithmetic, ops_shape, ops_atoms, ops_normalization, ops_attention, ops_aten), and
`modnorm.semantics` imports them all.

An entry maps a `call_module` class, a `call_function` target (the function object, e.g. `torch._C._nn.linear`,
which is what `F.linear` is) or a `call_method` name to a function `(op: OpView) -> Semantics`. Simple bonds are
one line (`bond(...)`); atoms and ops whose constant depends on their inputs' bounds are small functions.

Norm convention (docs/theory/modular-norm.md#norms).
A tensor is measured by the RMS over its feature axis, maximised over every other
position (batch, token, pixel). The feature axis is the last one, or axis 1 for NCHW feature maps and inputs a conv
reads; layout ops say where it goes. "certified" constants are worst-case over the unit ball; "modula" constants are
the nominal values of Modula 0.0.0.0.0.2 (`--profile modula`), kept so that the paper's package can be reproduced.
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Semantics", "AtomSpec", "Bounds", "OpView", "Registry", "REGISTRY", "lookup", "register", "bond",
           "linear", "feature_width", "is_number", "sup_bound", "leaf_class_names", "INF", "SQRT2", "GELU_SLOPE",
           "SILU_SLOPE", "Entry"]

INF = math.inf
SQRT2 = math.sqrt(2.0)
GELU_SLOPE = 1.1290  # max gelu' = Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.128904 (erf), 1.128993 (tanh form), docs/theory/constants.md#bonds
SILU_SLOPE = 1.0999  # max silu' = 1.099839, at x ≈ 2.40 (also x·σ(1.702x), QuickGELU)


@dataclass(frozen=True)
class Bounds:
    """What the forward pass knows about a tensor: RMS bounds over its feature axis (max over positions)."""

    upper: float = 1.0
    lower: float = 0.0
    sup: float | None = None  # bound on the largest |entry|, when known better than sqrt(F) * upper
    fdim: int | None = None  # index of the feature axis; None for non-tensors
    discrete: bool = False  # integer ids (tokens, positions): no norm, no sensitivity
    sign: int = 0  # 1: every entry >= 0 (relu, softplus, exp), -1: every entry <= 0, 0: not known


@dataclass(frozen=True)
class AtomSpec:
    """A parameterised op: the weight tensor, its shape and the natural norm of its effective map."""

    kind: str  # an atoms.AtomKind value (or a kind registered with atoms.register_atom_kind)
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
    curvature: float = 0.0  # max |phi''| of an elementwise op (sharpness, docs/theory/sharpness.md#atoms-and-bonds)
    # Bound on the second derivative w.r.t. the data inputs, ||D²f[u, v]|| <= hessian ||u|| ||v|| (sum norm over the
    # inputs, RMS units): 0 for ops linear in their data, None where no bound is derived — sharpness then names
    # this op as the reason it is not certified. Unknown is the default so that nothing passes silently.
    hessian: float | None = None
    label: str = ""
    tags: tuple[str, ...] = ()  # e.g. "normalization", "product", "attention", "layout"
    info: dict[str, Any] = field(default_factory=dict)
    sign: int | None = None  # the output's sign (Bounds.sign); None: kept from a layout op's input, else unknown


class WeightView(Protocol):
    def spectral(self, name: str, transpose: bool = False) -> tuple[float, str]: ...
    def conv(self, name: str, groups: int) -> tuple[float, str]: ...
    def row_rms(self, name: str) -> tuple[float, float, str]: ...
    def abs_max(self, name: str) -> tuple[float, str]: ...
    def abs_min(self, name: str) -> tuple[float, str]: ...
    def rms(self, name: str) -> tuple[float, str]: ...
    def max_row_l1(self, name: str) -> tuple[float, str]: ...
    def batch_norm(self, prefix: str, eps: float) -> tuple[float, str]: ...
    def batch_norm_shift(self, prefix: str, eps: float) -> float: ...


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
    def input_rms_at_init(self, index: int) -> float | None: ...


Entry = Callable[[OpView], Semantics]


class Registry(dict):
    """Spelling -> entry. A dict (so `REGISTRY[F.linear]` and `in` work), with a scoped override for tests and
    plugins: `with REGISTRY.override(): register(...)(...)` restores the previous entries on exit."""

    def add(self, spellings: tuple[Any, ...], entry: Entry) -> Entry:
        for spelling in spellings:
            self[spelling] = entry
        return entry

    @contextlib.contextmanager
    def override(self, entries: dict[Any, Entry] | None = None) -> Iterator["Registry"]:
        saved = dict(self)
        self.update(entries or {})
        try:
            yield self
        finally:
            self.clear()
            self.update(saved)

    def names_class(self, klass: type) -> bool:
        """Is this class registered by its qualified name ("transformers.activations.GELUActivation")? The tracer
        keeps such modules whole, read live (a name registered after import counts). A class registered as an
        object is traced through unless it is passed as a leaf (--leaf), as a user's module usually is."""
        return f"{klass.__module__}.{klass.__qualname__}" in self

    def leaf_class_names(self) -> set[str]:
        """Classes registered by qualified name ("transformers.activations.GELUActivation"): the tracer keeps
        them whole. Read live, so a class registered after import is a leaf too."""
        return {k for k in self if isinstance(k, str) and k.count(".") >= 2}


REGISTRY = Registry()


def register(*spellings: Any) -> Callable[[Entry], Entry]:
    """Register an entry under every spelling fx may record the op as."""

    def decorate(entry: Entry) -> Entry:
        return REGISTRY.add(spellings, entry)

    return decorate


def leaf_class_names() -> set[str]:
    return REGISTRY.leaf_class_names()


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def sup_bound(bound: Bounds, width: int) -> float:
    """A bound on the largest |entry| of a tensor of `width` features: its own, or √width × its RMS bound."""
    rms_based = math.sqrt(max(width, 1)) * bound.upper
    return min(bound.sup, rms_based) if bound.sup is not None else rms_based


def linear(semantics: Semantics) -> Semantics:
    """Mark an op as linear in its data inputs (second derivative 0, docs/theory/sharpness.md#atoms-and-bonds)."""
    return replace(semantics, hessian=0.0)


def batch_norm_semantics(op: OpView, prefix: str, eps: float) -> Semantics:
    """Eval BatchNorm, y = s ⊙ x + shift per channel: slope max_c |s_c| = |gamma_c| / sqrt(var_c + eps), and the
    output RMS bound counts the shift beta - gamma mu / sigma (RMS over channels) on top of slope × input bound."""
    slope, origin = op.weights.batch_norm(prefix, eps)
    shift = op.weights.batch_norm_shift(prefix, eps)
    upper = slope * op.bounds[0].upper + shift if op.bounds else None
    return linear(Semantics("bond", (slope,), "BatchNorm (eval): max_c |gamma_c| / sqrt(var_c + eps)",
                            fdim=1, label="BatchNorm", upper=upper, info={"origin": origin, "shift_rms": shift}))


def feature_width(op: OpView) -> int:
    """The size of the feature axis of the first data input (channels for images)."""
    shape = op.in_shape(0) if op.inputs else op.out_shape()
    fdim = op.bounds[0].fdim if op.bounds and op.bounds[0].fdim is not None else -1
    return int(shape[fdim]) if shape else 1


def output_feature_width(op: OpView) -> int:
    """The size of the output's feature axis, located by the first data input's tracked axis (counted from the
    end, so a broadcast that adds leading axes keeps it): channels on NCHW, not W. For sup |x| <= sqrt(F) ||x||."""
    shape = op.out_shape()
    if not shape:
        return 1
    fdim = op.bounds[0].fdim if op.bounds and op.bounds[0].fdim is not None else -1
    in_shape = op.in_shape(0) if op.inputs else shape
    offset = fdim - len(in_shape) if fdim >= 0 else fdim
    return int(shape[offset]) if -len(shape) <= offset < 0 else int(max(shape))


def bond(*spellings: Any, certified: float, modula: float | None = None, source: str, smooth: bool = True,
         curvature: float = 0.0, sup: float | None = None, label: str = "", at_zero: float = 0.0,
         sign: int = 0) -> None:
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
        # In RMS norms ||phi''(x) ⊙ a ⊙ b|| <= max|phi''| ||a||_inf ||b|| <= max|phi''| sqrt(d) ||a|| ||b|| (docs/theory/sharpness.md#atoms-and-bonds).
        hessian = curvature * math.sqrt(feature_width(op)) if smooth else None
        return Semantics("bond", (constant,) * n, source, nominal=(nominal,) * n, smooth=smooth,
                         curvature=curvature, sup=sup, upper=upper, label=label, hessian=hessian, sign=sign or None)

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
