"""Sharpness (α, β, γ) and the loss-gradient Lipschitz bound on the fx graph (docs/theory/sharpness.md).

Definitions: with ‖Δw‖_M ≤ 1 in the network's modular norm (atom i perturbed by at most its target t_i in
its own norm) and network inputs perturbed by ‖Δx‖ ≤ 1, for every tensor v of the graph we bound

    A(v) ≥ ‖D_w v[Δw]‖            S(v) ≥ ‖D_x v[Δx]‖                      (first order)
    α(v) ≥ ‖D²_ww v[Δw, Δ̃w]‖     β(v) ≥ ‖D²_wx v[Δw, Δx]‖     γ(v) ≥ ‖D²_xx v[Δx, Δ̃x]‖

in the max-over-positions RMS norm of v. The triple at the output is the network's sharpness.

Generalisation from trees to DAGs [derivation]. Modula's recursion (#composition-rule) composes modules in their own
normalised norms. On a DAG we instead push the chain rule forward through the graph, in absolute units fixed by
the network's modular norm; the triangle inequality handles fan-out and merges, so the bounds hold for any DAG:

* op y = f(u_1..u_k) with Lipschitz c_j w.r.t. u_j and ‖D²f[a, b]‖ ≤ κ ‖a‖ ‖b‖ (sum norm on the inputs):
      A(y) = Σ c_j A_j                     S(y) = Σ c_j S_j
      α(y) = κ (Σ A_j)² + Σ c_j α_j
      β(y) = κ (Σ A_j)(Σ S_j) + Σ c_j β_j
      γ(y) = κ (Σ S_j)² + Σ c_j γ_j
  (D²y = D²f[Du, Dũ] + Σ_j ∂_j f D²u_j). Linear ops have κ = 0 (`Semantics.hessian`).
* atom y = W x, effective operator norm N, target t, input bound R = ‖x‖ (the forward pass's upper bound):
      A(y) = t R + N A(x)     α(y) = 2 t A(x) + N α(x)     β(y) = t S(x) + N β(x)     γ(y) = N γ(x)
  (D_w y = ΔW x + W D_w x; D²_ww y = ΔW D_w x[Δ̃w] + Δ̃W D_w x[Δw] + W D²_ww x). An embedding reads a one-hot
  (R = 1, no input derivative).
* normalization y = w ⊙ n(x) (+ b): n has Lipschitz 1/r and ‖D²n‖ ≤ (2/√3)/r², r² = floor² + eps; the gain
  enters through ‖Δw ⊙ n(x)‖ ≤ t ‖n(x)‖ ≤ t:
      A(y) = t + c A(x)    α(y) = 2 t A(x)/r + κ A(x)² + c α(x)    β(y) = t S(x)/r + κ A(x) S(x) + c β(x)
  with c = ‖w‖_∞/r and κ = ‖w‖_∞ (2/√3)/r².

On a chain with R = 1 these reproduce the composition rule exactly (Linear∘Linear with masses 1:1 gives
α = 1/2, β = 1), and on a stack of (1 − 1/L)x + (1/L)f(x) blocks they reproduce the closed forms (#residual-limit):
tests/test_sharpness.py checks both. Two deliberate differences from the paper's statement [derivation,
numerically checked]: (1) the atoms' input bound R is the certified forward bound, not the assumption ‖x‖ ≤ 1,
so no "inputs stay in the unit ball" precondition is needed; (2) the loss term is τ A² with A the network's
first-order weight bound (the paper's τ assumes a well-normed network, A ≤ 1). The triple is local: it holds at
the analysed weights (in the modula profile, with nominal constants, it is the paper's uniform constant). Biases
are not atoms (as in Modula): they are held fixed.

Loss smoothness (σ, τ), #loss, in the RMS norm of the output over its d features (averaging over positions keeps
the constants): cross-entropy σ = √(2d), τ = d/2; square loss ½‖y − t‖²_RMS with ‖t‖_RMS ≤ 1: σ = ‖y‖ + 1, τ = 1.
The gradient of the loss is then (σα + τA²)-Lipschitz in the modular norm, and a normalized step of size
η = 1/(σα + τA²) is safe by the descent lemma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from .combinators import series
from .result import Layer

__all__ = ["Triple", "propagate", "loss_constants", "INF"]

INF = math.inf


@dataclass
class Triple:
    """First- and second-order bounds of one tensor (module docstring)."""

    A: float = 0.0
    S: float = 0.0
    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 0.0
    blocker: Any = None  # the first op on a path here whose second-order bound is not derived

    @property
    def certified(self) -> bool:
        return self.blocker is None and all(math.isfinite(x) for x in (self.alpha, self.beta, self.gamma))


def _second_order(kappa: float | None, As: float, Ss: float) -> tuple[float, float, float]:
    """κ-terms of α, β, γ; an underived κ costs nothing where no perturbation arrives."""
    k = INF if kappa is None else kappa
    return series(k, series(As, As)), series(k, series(As, Ss)), series(k, series(Ss, Ss))


def _bond(record: Any, inputs: list[Triple]) -> Triple:
    sem = record.semantics
    c = record.lipschitz
    As = sum(series(cj, t.A) for cj, t in zip(c, inputs))
    Ss = sum(series(cj, t.S) for cj, t in zip(c, inputs))
    raw_A, raw_S = sum(t.A for t in inputs), sum(t.S for t in inputs)
    ka, kb, kg = _second_order(sem.hessian if sem is not None else None, raw_A, raw_S)
    out = Triple(A=As, S=Ss,
                 alpha=ka + sum(series(cj, t.alpha) for cj, t in zip(c, inputs)),
                 beta=kb + sum(series(cj, t.beta) for cj, t in zip(c, inputs)),
                 gamma=kg + sum(series(cj, t.gamma) for cj, t in zip(c, inputs)))
    out.blocker = next((t.blocker for t in inputs if t.blocker is not None), None)
    if out.blocker is None and (sem is None or sem.hessian is None) and (raw_A > 0 or raw_S > 0):
        out.blocker = record
    if out.blocker is None and sem is not None and sem.kind == "unknown":
        # An unmodelled op (an LSTM) may hold weights of its own and curvature modnorm knows nothing of: what
        # arrives at it being 0 says nothing about what leaves it, so nothing downstream is certified.
        out.blocker = record
    return out


def _atom(record: Any, inputs: list[Triple], target: float, profile: str) -> Triple:
    x = inputs[0] if inputs else Triple()
    source = record.inputs[0].bounds if record.inputs else None
    discrete = source is None or source.discrete
    N = record.lipschitz[0] if record.lipschitz else 0.0
    R = 1.0 if discrete or profile == "modula" else source.upper  # an embedding reads a one-hot
    out = Triple(A=series(target, R) + series(N, x.A), S=series(N, x.S),
                 alpha=series(2 * target, x.A) + series(N, x.alpha),
                 beta=series(target, x.S) + series(N, x.beta), gamma=series(N, x.gamma), blocker=x.blocker)
    return out


def _normalization(record: Any, inputs: list[Triple], target: float, profile: str) -> Triple:
    x = inputs[0]
    sem = record.semantics
    c = record.lipschitz[0] if record.lipschitz else INF
    floor = 1.0 if profile == "modula" else sem.info.get("floor", 0.0)
    inv_r = 1 / floor if floor > 0 else INF
    gain_input = 1.0  # ||n(x)||: 1 per fiber, up to sqrt(N) for a normalizer coupling N positions
    if profile != "modula":
        inv_r, gain_input = sem.info.get("n_lipschitz", inv_r), sem.info.get("gain_input", 1.0)
    ka, kb, kg = _second_order(sem.hessian, x.A, x.S)
    out = Triple(A=series(target, gain_input) + series(c, x.A), S=series(c, x.S),
                 alpha=series(2 * target, series(inv_r, x.A)) + ka + series(c, x.alpha),
                 beta=series(target, series(inv_r, x.S)) + kb + series(c, x.beta),
                 gamma=kg + series(c, x.gamma), blocker=x.blocker)
    if out.blocker is None and sem.hessian is None and (x.A > 0 or x.S > 0):
        out.blocker = record
    return out


def propagate(records: list[Any], layers: Iterable[Layer], profile: str) -> dict[int, Triple]:
    """The triple of every record (by id), in topological order, in the network's modular norm."""
    targets = {layer.op: (layer.target_norm if layer.mass > 0 and math.isfinite(layer.target_norm) else 0.0)
               for layer in layers}
    return _propagate(records, targets, profile)


def submodule(records: list[Any], layers: Iterable[Layer], prefix: str, profile: str,
              inside: list[Any] | None = None, users: dict[int, list[Any]] | None = None) -> Triple | None:
    """The triple of the submodule at `prefix` in its own modular norm (the paper's per-module quantity).

    Its inputs are the tensors it reads from outside (unit perturbations), its output the sum over the tensors
    it hands to the outside; its atoms keep their masses, and their targets are recomputed inside the submodule:
    t_i = (m_i / M_sub) / S_down,sub(i) with the design constants, as Modula's normalize() would on the module alone.
    """
    if inside is None:  # callers with many blocks pass the grouping and the users (one pass for all blocks)
        inside = [r for r in records if r.kind not in ("input", "output")
                  and (r.module == prefix or r.module.startswith(prefix + "."))]
    ids = {id(r) for r in inside}
    if users is None:
        exits = {id(i) for r in records if id(r) not in ids for i in r.inputs if id(i) in ids}
    else:
        exits = {id(r) for r in inside if any(id(u) not in ids for u in users.get(id(r), ()))}
    if not inside or not exits:
        return None
    down = {id(r): (1.0 if id(r) in exits else 0.0) for r in inside}
    for r in reversed(inside):
        for i, d in zip(r.inputs, r.design):
            if id(i) in ids:
                down[id(i)] += series(down[id(r)], d)
    masses = {layer.op: layer.mass for layer in layers}
    total = sum(masses.get(r.node.name, 0.0) for r in inside if r.kind == "atom")
    if total <= 0:
        return None
    targets = {r.node.name: (masses.get(r.node.name, 0.0) / total) / down[id(r)]
               for r in inside if r.kind == "atom" and down[id(r)] > 0}
    triples = _propagate(inside, targets, profile, outside=lambda i: Triple(S=0.0 if i.bounds.discrete else 1.0))
    return _sum([triples[id(r)] for r in inside if id(r) in exits])


def _propagate(records: list[Any], targets: dict[str, float], profile: str, outside: Any = None) -> dict[int, Triple]:
    triples: dict[int, Triple] = {}
    for record in records:
        inputs = [triples[id(i)] if id(i) in triples else outside(i) for i in record.inputs]
        if record.kind == "input":
            triples[id(record)] = Triple(S=0.0 if record.bounds.discrete else 1.0)
        elif record.kind == "output":
            triples[id(record)] = _sum(inputs)
        elif record.kind == "atom" and "normalization" in record.semantics.tags:
            triples[id(record)] = _normalization(record, inputs, targets.get(record.node.name, 0.0), profile)
        elif record.kind == "atom" and len(record.inputs) <= 1:
            triples[id(record)] = _atom(record, inputs, targets.get(record.node.name, 0.0), profile)
        elif record.kind == "bond" and record.semantics is not None and "normalization" in record.semantics.tags:
            triples[id(record)] = _normalization(record, inputs, 0.0, profile)
        elif record.kind == "constant":
            triples[id(record)] = Triple()
        else:  # bonds, unknown ops (hessian None), atoms with several data inputs
            triples[id(record)] = _bond(record, inputs)
    return triples


def _sum(parts: list[Triple]) -> Triple:
    out = Triple(A=sum(t.A for t in parts), S=sum(t.S for t in parts), alpha=sum(t.alpha for t in parts),
                 beta=sum(t.beta for t in parts), gamma=sum(t.gamma for t in parts))
    out.blocker = next((t.blocker for t in parts if t.blocker is not None), None)
    return out


def loss_constants(loss: str, width: int, output_upper: float) -> tuple[float, float, str]:
    """(σ, τ, the norm they are stated in) for the loss on outputs with `width` features."""
    if loss == "mse":
        return output_upper + 1.0, 1.0, "½‖y − t‖²_RMS with ‖t‖_RMS ≤ 1, in the output's RMS norm"
    if loss == "xent":
        return math.sqrt(2 * width), width / 2, (f"cross-entropy over d = {width} classes in the RMS norm of the "
                                                 "logits (σ = √(2d), τ = d/2: these grow with d)")
    raise ValueError(f"unknown loss {loss!r}")
