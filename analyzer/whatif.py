"""What if a fix were applied: the design quantities of an analysis re-derived with some constants changed.

A finding's fix changes a few numbers the calculus used: a residual merge rescaled so its block has sensitivity 1
(MN201), attention logits scaled by 1/d (MN301), a normalizer's gain brought to 1 (MN103), an atom initialised at
norm 1 (MN101/MN102). `apply(analysis, fix)` re-runs the backward pass of the calculus (docs/theory/dag.md#path-sum)
over `Analysis.ops` with those numbers and returns the `Analysis` the fixed model would get: design downstream
sensitivities, targets, residual merges and the network's design sensitivity. The certified figures are left as
they are (they depend on RMS bounds the forward pass would have to redo); rules that judge design quantities
(MN201, MN203, MN204, MN501) and atom norms (MN101) can be run again on the result.

This is what tells a consequence from a cause (a stream that grows because its merges are unscaled is not a second
defect) and what ranks fixes by their effect (`effect`). It reads only the plain result objects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Mapping

from .combinators import exp_of, log10_of, log_of, log_parallel, log_series, series, target_of
from .result import Analysis, Layer, Merge, Op

__all__ = ["Fix", "apply", "Effect", "effect", "rescale_merge", "target_spread"]


@dataclass(frozen=True)
class Fix:
    """Changes to an analysis's numbers: `scale` multiplies an op's design constants (per data input; one factor
    for all inputs if the tuple is shorter), `norms` sets an atom's natural norm at init (by layer name)."""

    scale: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    norms: Mapping[str, float] = field(default_factory=dict)

    def __or__(self, other: "Fix") -> "Fix":
        """Both fixes: factors on the same op multiply, a norm set by both takes the later."""
        scale = dict(self.scale)
        for name, factors in other.scale.items():
            scale[name] = _times(scale[name], factors) if name in scale else factors
        return Fix(scale, {**self.norms, **other.norms})

    def __bool__(self) -> bool:
        return bool(self.scale or self.norms)


def _times(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    n = max(len(a), len(b))
    return tuple(_factor(a, i) * _factor(b, i) for i in range(n))


def _factor(factors: tuple[float, ...], i: int) -> float:
    return factors[i] if i < len(factors) else (factors[-1] if factors else 1.0)


def apply(analysis: Analysis, fix: Fix) -> Analysis:
    """The analysis of the model with `fix` applied (design quantities and atom norms; see the module doc)."""
    if not any(op.kind == "output" for op in analysis.ops):  # no graph (module_only.py, a hand-built analysis):
        # the norms change, nothing is re-derived (a path sum over a partial graph would be made up)
        return replace(analysis, layers=tuple(l if l.name not in fix.norms else replace(l, norm_at_init=fix.norms[l.name])
                                              for l in analysis.layers))
    ops = tuple(_scaled(op, fix.scale.get(op.name)) for op in analysis.ops)
    down, log_down = _design_down(ops)
    layers = tuple(_layer(layer, down, log_down, fix.norms.get(layer.name)) for layer in analysis.layers)
    by_name = {op.name: op for op in ops}
    merges = tuple(_merge(m, by_name, fix.scale) for m in analysis.merges)
    fixed = replace(analysis, ops=ops, layers=layers, merges=merges)
    design, log_design = _network_design(fixed, down, log_down)
    return replace(fixed, network=replace(analysis.network, design_sensitivity=design,
                                          log10_design_sensitivity=log10_of(log_design)))


def _scaled(op: Op, factors: tuple[float, ...] | None) -> Op:
    if not factors:
        return op
    return replace(op, design=tuple(d * _factor(factors, i) for i, d in enumerate(op.design)))


def _design_down(ops: tuple[Op, ...]) -> tuple[dict[str, float], dict[str, float]]:
    """S_down of every op's output with the design constants, as calculus._backward computes it (float and log)."""
    down: dict[str, float] = defaultdict(float)
    logs: dict[str, float] = defaultdict(lambda: -math.inf)
    for op in reversed(ops):
        if op.kind == "output":
            for name in op.inputs:
                down[name] += 1.0
                logs[name] = log_parallel(logs[name], 0.0)
            continue
        for name, d in zip(op.inputs, op.design):
            down[name] += series(down[op.name], d)
            logs[name] = log_parallel(logs[name], log_series(logs[op.name], log_of(d)))
    return down, logs


def _layer(layer: Layer, down: dict[str, float], log_down: dict[str, float], norm: float | None) -> Layer:
    d, log_d = down.get(layer.op, 0.0), log_down.get(layer.op, -math.inf)
    target = target_of(layer.mass_share, d, log_d)
    changed = replace(layer, design_downstream_sensitivity=d, log10_design_downstream_sensitivity=log10_of(log_d),
                      target_norm=target)
    return changed if norm is None else replace(changed, norm_at_init=norm)


def _merge(merge: Merge, ops: dict[str, Op], scale: Mapping[str, tuple[float, ...]]) -> Merge:
    """The merge with its op's factors on the coefficients of the side they scale, and its branch's design
    sensitivity re-derived from the (possibly scaled) constants between skip and branch."""
    skip_c, branch_c = merge.skip_coefficient, merge.branch_coefficient
    factors = scale.get(merge.op)
    if factors and merge.op in ops:
        for i, name in enumerate(ops[merge.op].inputs):
            if _stripped(name, ops, casts=True) == merge.skip:
                skip_c *= _factor(factors, i)
            elif _stripped(name, ops) == merge.branch:
                branch_c *= _factor(factors, i)
    return replace(merge, skip_coefficient=skip_c, branch_coefficient=branch_c,
                   design_branch_sensitivity=_branch_sensitivity(merge, ops))


def rescale_merge(analysis: Analysis, merge: Merge, skip: float, branch: float) -> Fix:
    """A fix multiplying a merge's skip coefficient by `skip` and its branch coefficient by `branch`."""
    ops = analysis.ops_by_name()
    inputs = ops[merge.op].inputs if merge.op in ops else ()
    factors = tuple(skip if _stripped(name, ops, casts=True) == merge.skip else branch
                    if _stripped(name, ops) == merge.branch else 1.0 for name in inputs)
    return Fix(scale={merge.op: factors}) if factors else Fix()


_CASTS = {f"method {c}" for c in ("to", "float", "double", "half", "bfloat16", "type_as", "type")}


def _stripped(name: str, ops: dict[str, Op], casts: bool = False) -> str:
    """Through constant multipliers (and, for a skip, precision casts) to the op they act on: merges.py finds a
    merge's branch through its multipliers and its skip through casts as well."""
    while name in ops and len(ops[name].inputs) == 1 and (
            ("scalar" in ops[name].tags and "factor" in ops[name].info) or (casts and ops[name].target in _CASTS)):
        name = ops[name].inputs[0]
    return name


def _branch_sensitivity(merge: Merge, ops: dict[str, Op]) -> float:
    """d(branch)/d(skip) with the design constants: a forward path sum from the skip (merges.py's formula)."""
    order = list(ops)
    if merge.skip not in ops or merge.branch not in ops:
        return merge.design_branch_sensitivity
    start, stop = order.index(merge.skip), order.index(merge.branch)
    sens = {merge.skip: 1.0}
    for name in order[start + 1: stop + 1]:
        op = ops[name]
        sens[name] = sum(series(c, sens.get(i, 0.0)) for i, c in zip(op.inputs, op.design))
    return sens.get(merge.branch, 0.0)


def _network_design(analysis: Analysis, down: dict[str, float], log_down: dict[str, float]) -> tuple[float, float]:
    """The network's design sensitivity, by the convention summary.network_of states: max over continuous inputs,
    or (token ids) the sum over embedding lookups of S_down × the embedding's norm."""
    continuous = list(analysis.network.input_sensitivities)
    if continuous:
        design = max(down.get(name, 0.0) for name in continuous)
        log_design = max(log_down.get(name, -math.inf) for name in continuous)
    else:
        embeddings = [l for l in analysis.layers if l.kind == "Embedding"]
        design = sum(series(down.get(l.op, 0.0), l.norm_at_init) for l in embeddings)
        log_design = log_parallel(*(log_series(log_down.get(l.op, -math.inf), log_of(l.norm_at_init))
                                    for l in embeddings))
    return (design if math.isfinite(design) else exp_of(log_design)), log_design


def target_spread(analysis: Analysis) -> float:
    """Largest over smallest target among atoms with mass (MN501's figure); 1 with fewer than two."""
    targets = [l.target_norm for l in analysis.layers if l.mass > 0 and l.target_norm > 0]
    return max(targets) / min(targets) if len(targets) >= 2 else 1.0


@dataclass(frozen=True)
class Effect:
    """What a fix changes in the quantities the paper cares about: the network's design sensitivity and the
    spread of the targets (how unevenly the learning rate budget is shared)."""

    sensitivity: tuple[float, float]  # (before, after), log10
    spread: tuple[float, float]  # (before, after), log10 of the target spread

    @property
    def size(self) -> float:
        """Orders of magnitude the fix moves the two figures, together (what changes rank by)."""
        return abs(self.sensitivity[0] - self.sensitivity[1]) + abs(self.spread[0] - self.spread[1])


def effect(analysis: Analysis, fix: Fix) -> Effect:
    fixed = apply(analysis, fix)
    return Effect((_log10_sensitivity(analysis), _log10_sensitivity(fixed)),
                  (math.log10(target_spread(analysis)), math.log10(target_spread(fixed))))


def _log10_sensitivity(analysis: Analysis) -> float:
    net = analysis.network
    if math.isfinite(net.log10_design_sensitivity):
        return net.log10_design_sensitivity
    return math.log10(net.design_sensitivity) if 0 < net.design_sensitivity < math.inf else net.log10_design_sensitivity
