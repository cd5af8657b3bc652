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

from .combinators import exp_of, log10_of, log_of, log_parallel, log_series
from .result import Layer

__all__ = ["Triple", "propagate", "loss_constants", "INF"]

INF = math.inf
_ZERO = -math.inf  # the log of 0


def _ser(*logs: float) -> float:
    """Product of factors given by their logs (0 · inf = 0: a zero factor stops the path)."""
    out = 0.0
    for x in logs:
        out = log_series(out, x)
    return out


@dataclass
class Triple:
    """First- and second-order bounds of one tensor (module docstring), kept as natural logs: over 80 layers
    the products leave float range (α ~ 1e288 on a 7B shape) although every factor is finite, and an overflow
    must never read as an unbounded op."""

    lA: float = _ZERO
    lS: float = _ZERO
    l_alpha: float = _ZERO
    l_beta: float = _ZERO
    l_gamma: float = _ZERO
    blocker: Any = None  # the first op on a path here whose second-order bound is not derived

    @classmethod
    def of(cls, A: float = 0.0, S: float = 0.0) -> "Triple":
        return cls(lA=log_of(A), lS=log_of(S))

    A = property(lambda self: exp_of(self.lA))
    S = property(lambda self: exp_of(self.lS))
    alpha = property(lambda self: exp_of(self.l_alpha))
    beta = property(lambda self: exp_of(self.l_beta))
    gamma = property(lambda self: exp_of(self.l_gamma))

    def log10(self, name: str) -> float:
        """log10 of `A`, `S`, `alpha`, `beta` or `gamma`: finite past float range."""
        return log10_of(getattr(self, {"A": "lA", "S": "lS"}.get(name, f"l_{name}")))

    @property
    def certified(self) -> bool:
        return self.blocker is None and all(x < INF for x in (self.l_alpha, self.l_beta, self.l_gamma))


def _second_order(kappa: float | None, lAs: float, lSs: float) -> tuple[float, float, float]:
    """κ-terms of α, β, γ (logs); an underived κ costs nothing where no perturbation arrives."""
    lk = INF if kappa is None else log_of(kappa)
    return _ser(lk, lAs, lAs), _ser(lk, lAs, lSs), _ser(lk, lSs, lSs)


def _bond(record: Any, inputs: list[Triple]) -> Triple:
    sem = record.semantics
    lc = [log_of(cj) for cj in record.lipschitz]
    As = log_parallel(*(_ser(cj, t.lA) for cj, t in zip(lc, inputs)))
    Ss = log_parallel(*(_ser(cj, t.lS) for cj, t in zip(lc, inputs)))
    raw_A, raw_S = log_parallel(*(t.lA for t in inputs)), log_parallel(*(t.lS for t in inputs))
    ka, kb, kg = _second_order(sem.hessian if sem is not None else None, raw_A, raw_S)
    out = Triple(lA=As, lS=Ss,
                 l_alpha=log_parallel(ka, *(_ser(cj, t.l_alpha) for cj, t in zip(lc, inputs))),
                 l_beta=log_parallel(kb, *(_ser(cj, t.l_beta) for cj, t in zip(lc, inputs))),
                 l_gamma=log_parallel(kg, *(_ser(cj, t.l_gamma) for cj, t in zip(lc, inputs))))
    out.blocker = next((t.blocker for t in inputs if t.blocker is not None), None)
    if out.blocker is None and (sem is None or sem.hessian is None) and (raw_A > _ZERO or raw_S > _ZERO):
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
    N = log_of(record.lipschitz[0] if record.lipschitz else 0.0)
    radius = record.semantics.info.get("input_radius", source.upper) if not discrete else 1.0
    R = 0.0 if discrete or profile == "modula" else log_of(radius)  # an embedding reads a one-hot (R = 1)
    t, two_t = log_of(target), log_of(2 * target)
    return Triple(lA=log_parallel(_ser(t, R), _ser(N, x.lA)), lS=_ser(N, x.lS),
                  l_alpha=log_parallel(_ser(two_t, x.lA), _ser(N, x.l_alpha)),
                  l_beta=log_parallel(_ser(t, x.lS), _ser(N, x.l_beta)), l_gamma=_ser(N, x.l_gamma),
                  blocker=x.blocker)


def _normalization(record: Any, inputs: list[Triple], target: float, profile: str) -> Triple:
    x = inputs[0]
    sem = record.semantics
    c = log_of(record.lipschitz[0] if record.lipschitz else INF)
    floor = 1.0 if profile == "modula" else sem.info.get("floor", 0.0)
    inv_r = 1 / floor if floor > 0 else INF
    gain_input = 1.0  # ||n(x)||: 1 per fiber, up to sqrt(N) for a normalizer coupling N positions
    if profile != "modula":
        inv_r, gain_input = sem.info.get("n_lipschitz", inv_r), sem.info.get("gain_input", 1.0)
    ka, kb, kg = _second_order(sem.hessian, x.lA, x.lS)
    t, two_t, li = log_of(target), log_of(2 * target), log_of(inv_r)
    out = Triple(lA=log_parallel(_ser(t, log_of(gain_input)), _ser(c, x.lA)), lS=_ser(c, x.lS),
                 l_alpha=log_parallel(_ser(two_t, li, x.lA), ka, _ser(c, x.l_alpha)),
                 l_beta=log_parallel(_ser(t, li, x.lS), kb, _ser(c, x.l_beta)),
                 l_gamma=log_parallel(kg, _ser(c, x.l_gamma)), blocker=x.blocker)
    if out.blocker is None and sem.hessian is None and (x.lA > _ZERO or x.lS > _ZERO):
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
                down[id(i)] += 0.0 if down[id(r)] == 0 or d == 0 else down[id(r)] * d
    masses = {layer.op: layer.mass for layer in layers}
    total = sum(masses.get(r.node.name, 0.0) for r in inside if r.kind == "atom")
    if total <= 0:
        return None
    targets = {r.node.name: (masses.get(r.node.name, 0.0) / total) / down[id(r)]
               for r in inside if r.kind == "atom" and down[id(r)] > 0}
    triples = _propagate(inside, targets, profile, outside=lambda i: Triple.of(S=0.0 if i.bounds.discrete else 1.0))
    return _sum([triples[id(r)] for r in inside if id(r) in exits])


def _propagate(records: list[Any], targets: dict[str, float], profile: str, outside: Any = None) -> dict[int, Triple]:
    triples: dict[int, Triple] = {}
    for record in records:
        inputs = [triples[id(i)] if id(i) in triples else outside(i) for i in record.inputs]
        if record.kind == "input":
            triples[id(record)] = Triple.of(S=0.0 if record.bounds.discrete else 1.0)
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
    out = Triple(lA=log_parallel(*(t.lA for t in parts)), lS=log_parallel(*(t.lS for t in parts)),
                 l_alpha=log_parallel(*(t.l_alpha for t in parts)), l_beta=log_parallel(*(t.l_beta for t in parts)),
                 l_gamma=log_parallel(*(t.l_gamma for t in parts)))
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
