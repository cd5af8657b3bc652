"""Mixture-of-experts ops of the registry: the experts' grouped matmul (a `Batched` atom), top-k routing, and the
index bookkeeping that dispatches tokens to experts (sort, argsort, histc, cumsum, floordiv, empty_like, index
writes, index_add / scatter_add, one_hot). docs/theory/moe.md states the conventions.

Routing, said plainly. A top-k router picks, per token, k experts from the router's logits: the *selection* is a
discontinuous function of the activations (a token flips to another expert when two logits cross). What modnorm
certifies for an MoE layer holds **for a fixed routing**: with the selected experts held fixed, the layer's output is
a combination of the selected experts' outputs with routing weights that are non-negative and sum to at most 1 (a
convex combination after Mixtral's renormalisation, or a part of the softmax), so its sensitivity is at most the
largest expert's (modnorm's printed bound adds the k selected outputs, each at most the largest expert's, so it is
within a factor k of that). The integer outputs of the routing (indices, counts, offsets) carry no perturbation (constant 0 on
integer or boolean data); the op that turns activations into indices is reported as not certified, with this reason.

Each constant bounds the max-position RMS of the output by that of the input (registry.py's norm convention).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from . import atoms
from .registry import AtomSpec, INF, OpView, Semantics, linear, register
from .ops_shape import first_fdim

ROUTING = ("routing",)  # tag: a selection by activations, bound valid for a fixed routing
COUNTS = ("counts",)  # tag: the output carries no perturbation (integer-valued bookkeeping)
FIXED_ROUTING = ("routing: the top-k choice is discontinuous (a token switches experts when router logits cross); "
                 "the bound holds for a fixed routing")


# --------------------------------------------------------------------------------------------------- experts
def _weight_through_transpose(op: OpView, index: int, name: str) -> tuple[str | None, bool]:
    """The parameter behind a grouped matmul's weight argument, and whether the graph transposed its last two axes
    (transformers passes `W.transpose(-2, -1)` for experts stored (E, out, in))."""
    arg = op.arg(index, name)
    flipped = False
    while isinstance(arg, fx.Node) and arg.op in ("call_method", "call_function"):
        target = arg.target if isinstance(arg.target, str) else getattr(arg.target, "__name__", "")
        if target in ("transpose", "swapaxes") and {d % 3 for d in arg.args[1:3] if isinstance(d, int)} == {1, 2}:
            flipped = not flipped
        elif target == "mT":
            flipped = not flipped
        elif target not in ("contiguous", "to", "float", "type_as"):
            return None, False
        arg = arg.args[0]
    names = getattr(getattr(op, "ctx", None), "parameter_names", ())
    if isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target in names:
        return arg.target, flipped
    return None, False


def experts_atom(op: OpView, weight: str, stored_in_out: bool, how: str) -> Semantics:
    """A stack of E expert matrices applied row by row (each row of the input goes through one expert): per row
    ||y|| <= |c| sqrt(in/out) sigma_max(W_e) ||x||, so the op's constant is the largest expert's natural norm."""
    shape = tuple(op.weights.shape(weight))
    largest, origin, worst = _largest_expert(op, weight)
    geometry = atoms.Batched(shape, op.scale, transposed=stored_in_out)
    norm = geometry.factor * largest
    atom = AtomSpec(geometry.kind, weight, shape, norm, origin, op.scale, (weight,), factor=geometry.factor)
    experts = shape[0]
    worst_text = f", worst expert {worst}" if worst is not None else ""
    return linear(Semantics(
        "atom", (norm,), f"{how}: E = {experts} experts, each a Linear |c| sqrt(in/out) ||W_e||_*; max over experts",
        atom=atom, upper=norm * op.bounds[0].upper if op.bounds else None, label=f"Experts (E={experts}{worst_text})",
        info={"experts": experts, "worst_expert": worst, "expert_norms_by": "max over experts"}))


def _largest_expert(op: OpView, weight: str) -> tuple[float, str, int | None]:
    """max_e sigma_max(W_e), where it came from, and which expert attains it (None on meta)."""
    batched = getattr(op.weights, "batched", None)
    if batched is not None:
        return batched(weight)
    raise RuntimeError("this weight store cannot read stacked expert weights")


@register(*(f for f in (getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None)) if f is not None),
          torch.ops.aten._grouped_mm, "grouped_mm_fallback")
def _grouped_mm(op: OpView) -> Semantics:
    """Grouped matmul of (S, in) rows, sorted by expert, by an (E, in, out) expert stack: row s goes through the
    expert its group (the integer offsets) assigns. The offsets are bookkeeping (constant 0)."""
    weight, flipped = _weight_through_transpose(op, 1, "mat_b")
    if weight is None:
        from .ops_atoms import unknown_weight
        return unknown_weight(op, "grouped matmul by a tensor that is not an expert parameter")
    lipschitz_rest = (0.0,) * (len(op.inputs) - 1)
    found = experts_atom(op, weight, stored_in_out=not flipped, how="grouped matmul of experts")
    from dataclasses import replace
    return replace(found, lipschitz=found.lipschitz + lipschitz_rest)


# ---------------------------------------------------------------------------------------------------- routing
def _dim_of(op: OpView, index: int, default: int = -1) -> int:
    shape = op.in_shape(0)
    dim = op.arg(index, "dim", default)
    dim = default if dim is None else dim
    return dim % max(1, len(shape))


def _order_statistics(op: OpView, kept: int, what: str) -> Semantics:
    """Sorting is non-expansive in l2 (rearrangement inequality), so along the feature axis the k largest of n
    entries move by at most the input's l2 change: sqrt(n/k) in RMS units. Along another axis each feature is
    sorted on its own, so an output vector gathers entries of up to n input vectors: sqrt(n)."""
    shape = op.in_shape(0)
    dim = _dim_of(op, 2 if what == "topk" else 1)
    n = shape[dim] if shape else 1
    along_features = dim == first_fdim(op) % max(1, len(shape))
    constant = math.sqrt(n / max(1, kept)) if along_features else math.sqrt(n)
    upper = constant * op.bounds[0].upper if op.bounds else None
    chooses = not all(_integer_valued(n) for n in op.inputs)  # sorting activations selects; sorting ids does not
    return linear(Semantics("bond", (constant,), f"{what}: order statistics are 1-Lipschitz in l2; {FIXED_ROUTING}",
                            upper=upper, label=what, tags=ROUTING if chooses else (), certified=not chooses,
                            reason=FIXED_ROUTING if chooses else ""))


@register(torch.topk, "topk")
def _topk(op: OpView) -> Semantics:
    k = op.arg(1, "k")
    return _order_statistics(op, int(k) if isinstance(k, int) else 1, "topk")


@register(torch.sort, "sort", torch.msort, "msort")
def _sort(op: OpView) -> Semantics:
    shape = op.in_shape(0)
    dim = _dim_of(op, 1)
    return _order_statistics(op, shape[dim] if shape else 1, "sort")


@register(torch.argsort, "argsort", torch.argmax, "argmax", torch.argmin, "argmin")
def _argsort(op: OpView) -> Semantics:
    """Indices: integer output, no perturbation; choosing them from activations is the routing's discontinuity."""
    return Semantics("bond", (0.0,) * max(1, len(op.inputs)), "argsort: integer indices", label="argsort",
                     tags=ROUTING + COUNTS, certified=_integer_valued(op.inputs[0]) if op.inputs else True,
                     reason=FIXED_ROUTING, hessian=0.0)


def _integer_valued(node: Any) -> bool:
    """Does this node hold integer data, possibly cast to float (`expert_ids.float()` before histc)?"""
    while isinstance(node, fx.Node):
        value = node.meta.get("value")
        if isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex()):
            return True
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name not in ("float", "double", "half", "to", "type", "type_as", "int", "long"):
            return False
        node = node.args[0] if node.args else None
    return False


def _counting(what: str, op: OpView) -> Semantics:
    integer = all(_integer_valued(n) for n in op.inputs)
    reason = "" if integer else f"{what} of real-valued data is piecewise constant with jumps"
    return Semantics("bond", (0.0,) * max(1, len(op.inputs)), f"{what}: counts of integer routing indices (no "
                     "gradient)", label=what, tags=COUNTS, certified=integer, reason=reason, hessian=0.0)


@register(torch.histc, "histc", torch.bincount, "bincount")
def _histc(op: OpView) -> Semantics:
    """Counts per bin: integer-valued, constant 0 on integer data (cast to float or not); on real data the count
    jumps when a value crosses a bin edge (not certified)."""
    return _counting("histc", op)


@register(operator.floordiv, torch.floor_divide, "floor_divide", operator.mod, torch.remainder, "remainder")
def _floordiv(op: OpView) -> Semantics:
    """`perm // k` on integer indices: integer bookkeeping, constant 0; on real data it is piecewise constant."""
    return _counting("floor division", op)


@register(torch.cumsum, "cumsum")
def _cumsum(op: OpView) -> Semantics:
    """Running sum along `dim` of n entries. Along the feature axis it is the lower-triangular ones matrix L_n, whose
    sigma_max is at most its Frobenius norm sqrt(n(n+1)/2) (same width in and out); along another axis an output
    vector is the sum of up to n input vectors: n. On integer data (routing counts) the output is bookkeeping."""
    if op.inputs and all(_integer_valued(n) for n in op.inputs):
        return _counting("cumsum", op)
    shape = op.in_shape(0)
    dim = _dim_of(op, 1)
    n = shape[dim] if shape else 1
    constant = math.sqrt(n * (n + 1) / 2) if dim == first_fdim(op) % max(1, len(shape)) else float(n)
    return linear(Semantics("bond", (constant,), "cumsum: lower-triangular ones, ||L_n|| <= sqrt(n(n+1)/2)",
                            label="cumsum"))


@register(torch.empty_like, "new_empty", torch.zeros_like, "new_zeros")
def _like(op: OpView) -> Semantics:
    """A fresh tensor of the input's shape: it does not depend on the input's values (constant 0). zeros are 0; the
    contents of empty are unknown until written (an infinite bound unless it holds integers)."""
    name = op.node.target if isinstance(op.node.target, str) else getattr(op.node.target, "__name__", "")
    upper = 0.0 if "zeros" in name else INF
    return Semantics("bond", (0.0,) * max(1, len(op.inputs)), f"{name}: shape only", upper=upper, label=name,
                     hessian=0.0, tags=("layout",))


@register(operator.setitem)
def _setitem(op: OpView) -> Semantics:
    """`t[index] = value` mutates `t` in place: later reads of `t` in the graph do not see the write. Writing
    integer bookkeeping (`inv_perm[perm] = arange(...)`, an inverse permutation) changes no bound; writing data
    would hide a path from the analysis, so it is unknown."""
    value = op.node.args[2] if len(op.node.args) > 2 else None
    writes_data = isinstance(value, fx.Node) and value in op.inputs and not _integer_valued(value)
    if writes_data:
        why = ("in-place write of activations into a tensor (`t[i] = x`): the graph does not carry the write to later "
               "reads; write it functionally (index_put / scatter) or with torch.where")
        return Semantics("unknown", (INF,) * max(1, len(op.inputs)), why, certified=False, reason=why)
    return Semantics("bond", (0.0,) * max(1, len(op.inputs)), "index bookkeeping written in place", label="setitem",
                     hessian=0.0, tags=COUNTS)


@register(F.one_hot, "one_hot")
def _one_hot(op: OpView) -> Semantics:
    """One-hot codes of integer indices: integer output, no perturbation."""
    return _counting("one_hot", op)


@register(torch.index_add, "index_add", "index_add_", torch.scatter_add, "scatter_add", "scatter_add_",
          torch.index_put, "index_put", "index_put_")
def _accumulate(op: OpView) -> Semantics:
    """out = self plus (or, index_put without accumulate, with entries replaced by) rows of `source`.

    Along a position axis whole feature vectors are moved: an output vector is self's plus at most m source
    vectors, where m is how many source rows may land on one position; statically m is the number of source rows
    along `dim` (an index may repeat), so the constant for the source is that count (1 when entries are replaced).
    When the scatter indexes the feature axis an output vector gathers entries of up to n source vectors: sqrt(n)
    more. The index is integer data (constant 0)."""
    name = op.node.target if isinstance(op.node.target, str) else getattr(op.node.target, "__name__", "")
    source_index = 2 if name.startswith("index_put") else 3
    source = op.node.args[source_index] if len(op.node.args) > source_index else op.node.kwargs.get(
        "values" if name.startswith("index_put") else "source")
    shape = op.in_shape(0)
    source_value = source.meta.get("value") if isinstance(source, fx.Node) else None
    replace_only = name.startswith("index_put") and not op.arg(3, "accumulate", False)
    if name.startswith("index_put"):
        indices = op.arg(1, "indices") or ()
        whole_vectors = len(indices) < len(shape)
        rows = (math.prod(source_value.shape[:-1]) if isinstance(source_value, torch.Tensor) and source_value.dim()
                else 1)
    else:
        dim = _dim_of(op, 1, 0)
        whole_vectors = dim != first_fdim(op) % max(1, len(shape)) and name.startswith("index_add")
        rows = source_value.shape[dim] if isinstance(source_value, torch.Tensor) and source_value.dim() else 1
    per_source = 1.0 if replace_only else float(rows)
    if not whole_vectors:
        per_source *= math.sqrt(rows)
    constants = []
    for node in op.inputs:
        constants.append(per_source if node is source else (1.0 if node is op.node.args[0] else 0.0))
    upper = None
    if op.bounds:
        upper = sum(c * b.upper for c, b in zip(constants, op.bounds) if not b.discrete)
    return linear(Semantics("bond", tuple(constants), f"{name}: self plus up to {rows} source rows per output",
                            upper=upper, label=name))


# -------------------------------------------------------------------------------- renormalised routing weights
def _source(node: Any, *names: str) -> Any:
    """The node behind `node` through getitem/float/to, if its target is one of `names`."""
    while isinstance(node, fx.Node):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name in names:
            return node
        if name not in ("getitem", "float", "to", "contiguous"):
            return None
        node = node.args[0]
    return None


def _topk_of_softmax(node: Any) -> tuple[int, int] | None:
    """(k, n) when `node` is the values of a top-k of a softmax along the same (last) axis."""
    topk = _source(node, "topk")
    if topk is None or _source(topk.args[0], "softmax") is None:
        return None
    k = topk.args[1] if len(topk.args) > 1 else topk.kwargs.get("k")
    value = topk.args[0].meta.get("value") if isinstance(topk.args[0], fx.Node) else None
    if not isinstance(k, int) or not isinstance(value, torch.Tensor):
        return None
    return k, int(value.shape[-1])


def routing_renormalisation(op: OpView) -> Semantics | None:
    """`w / w.sum(-1, keepdim=True)` of the top-k of n softmax probabilities (Mixtral's router). The k largest of n
    probabilities sum to s >= k/n, and for positive w the Jacobian (I - w 1ᵀ/s)/s has l2 norm <= (1 + ||w||_2
    sqrt(k)/s)/s... bounded by 2/s <= 2n/k (||w||_2 <= s). The output lies on the simplex: entries in [0, 1],
    l2 norm <= 1, so RMS over the k weights <= 1/sqrt(k)... kept as 1 (every entry <= 1)."""
    if len(op.node.args) != 2:
        return None
    numerator, denominator = op.node.args
    found = _topk_of_softmax(numerator)
    summed = _source(denominator, "sum")
    if found is None or summed is None or summed.args[0] is not numerator:
        return None
    k, n = found
    constant = 2.0 * n / k
    lipschitz = tuple(constant if node is numerator else 0.0 for node in op.inputs)
    return Semantics("bond", lipschitz, f"top-{k} of {n} softmax weights renormalised: sum >= k/n, ||J|| <= 2n/k; "
                     f"{FIXED_ROUTING}", upper=1.0, sup=1.0, label="routing weights", tags=ROUTING,
                     reason=FIXED_ROUTING, certified=False)


def _wrap_division() -> None:
    from .registry import REGISTRY
    plain = REGISTRY.get(operator.truediv)
    if plain is None:
        return

    def division(op: OpView) -> Semantics:
        return routing_renormalisation(op) or plain(op)

    division.__doc__ = plain.__doc__
    for spelling in [k for k, v in REGISTRY.items() if v is plain]:
        REGISTRY[spelling] = division


_wrap_division()


@register(operator.eq, torch.eq, "eq", operator.ne, torch.ne, "ne", operator.lt, torch.lt, "lt", operator.le,
          torch.le, "le", operator.gt, torch.gt, "gt", operator.ge, torch.ge, "ge")
def _compare(op: OpView) -> Semantics:
    """A comparison gives booleans: no perturbation (constant 0). Of integer routing indices (`chosen == e`) it is
    exact bookkeeping; of activations it jumps where the two sides cross (not certified, said by the calculus)."""
    return _counting("comparison", op)


@register(getattr)
def _field(op: OpView) -> Semantics:
    """`torch.topk(x, k).values` / `.indices` (and sort, max, min): a field of torch's named-tuple result, the
    same tensor the producing op bounded (constant 1). Any other attribute read from a traced value is unknown."""
    field = op.node.args[1] if len(op.node.args) > 1 else None
    source = op.node.args[0] if op.node.args else None
    value = source.meta.get("value") if isinstance(source, fx.Node) else None
    if isinstance(value, tuple) and hasattr(value, "_fields") or type(value).__module__ == "torch.return_types":
        if field in ("values", "indices"):
            return linear(Semantics("bond", (1.0,), f"field `{field}` of a named tuple", tags=("layout",),
                                    label=str(field)))
    why = f"attribute `{field}` read from a traced value"
    return Semantics("unknown", (INF,) * max(1, len(op.inputs)), why, certified=False, reason=why)
