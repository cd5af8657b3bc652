"""Floors for the RMS entering each normalizer: what the default profile (`assumed`) conditions its bounds on.

A LayerNorm/RMSNorm x ↦ w ⊙ x̂ / sqrt(ms(x̂) + eps) has Jacobian norm ||w||_inf / sqrt(ms(x̂) + eps) at x (x̂ = x,
centred for LayerNorm; docs/theory/constants.md#normalization). Unconditionally only eps bounds it (1/sqrt(eps):
316 to 1000 per normalizer, multiplied along the residual stream). The `assumed` profile states instead that the
(centred) RMS entering each normalizer stays at or above half its value at init, and uses ||w||_inf / floor:

* on the CPU (real weights) the floor is 0.5 x the smallest per-position (centred) RMS seen when the traced graph
  runs on the example inputs (`measure`);
* on meta it is 0.5 x the *typical* RMS predicted from the recorded init laws (`typical`): inputs at RMS 1,
  embedding rows at their init RMS, normalizer outputs at their gain, constant multipliers applied, and a
  residual sum counted by its skip path only (a branch whose typical size is not predicted is left out: at init
  it only adds to the stream, so the floor stays below the value).

The bound is then certified *given* the assumption: it holds at every input where the assumption holds, the report
prints it beside the figure, and `modnorm probe` checks it on the inputs it measures.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

__all__ = ["Floor", "FLOOR_FRACTION", "measure", "typical", "floor_of", "in_unit_ball"]

FLOOR_FRACTION = 0.5  # the floor is this fraction of the value at init: room for the stream to shrink in training


@dataclass(frozen=True)
class Floor:
    """A stated lower bound on the (centred) RMS entering a normalizer, and where it comes from."""

    rms: float  # the floor
    at_init: float  # the value at init it is a fraction of
    centred: bool  # LayerNorm: the centred RMS (std over the normalized axis); RMSNorm: the RMS
    basis: str  # "measured" (CPU, example inputs) | "predicted" (meta, init laws)
    per: str = "position"  # over what the RMS is taken: a position's features, or a coupled normalizer's group

    @property
    def quantity(self) -> str:
        return ("input centred RMS" if self.centred else "input RMS") + (" per group" if self.per == "group" else "")

    def text(self) -> str:
        """`input RMS >= 0.41 (0.5x its smallest value at init, 0.82, measured on the example inputs)`."""
        how = (f"its smallest per-{self.per} value at init, measured on the example inputs (in the unit ball)"
               if self.basis == "measured"
               else "its typical value at init predicted from the init laws (residual branches not counted)")
        return (f"{self.quantity} >= {self.rms:.3g} ({FLOOR_FRACTION:g}x {how}: {self.at_init:.3g})")


def _has_stats(value: Any) -> bool:
    """Whether `_position_stats` gives figures for this value (read from its dtype and shape alone)."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0 and not value.is_meta
            and value.shape[-1] >= 1 and value.numel() > 0)


def _position_stats(value: Any) -> tuple[float, float] | None:
    """(min per-position RMS, min per-position centred RMS) along the last axis, or None for non-float data."""
    if not _has_stats(value):
        return None
    x = value.detach().double()
    rms = x.pow(2).mean(-1).sqrt()
    centred = (x - x.mean(-1, keepdim=True)).pow(2).mean(-1).sqrt()
    return float(rms.min()), float(centred.min())


def in_unit_ball(inputs: tuple[Any, ...], radius: float = 1.0,
                 axes: tuple[int | None, ...] | None = None) -> tuple[Any, ...]:
    """The inputs with the first continuous one scaled into the ball the bounds assume (max-position RMS <= 1 over
    its feature axis: `axes[i]`, the calculus's choice, else axis 1 for NCHW and the last otherwise), as `modnorm
    probe` measures them: floors and their check agree."""
    out = list(inputs)
    for i, x in enumerate(out):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim():
            fdim = axes[i] if axes is not None and i < len(axes) and axes[i] is not None else (
                1 if x.dim() == 4 else -1)
            size = float(x.detach().movedim(fdim, -1).pow(2).mean(-1).sqrt().max())
            if size > radius:
                out[i] = x * (radius / size)
            break
    return tuple(out)


# Outputs kept for their statistics at most (beyond that, statistics are computed as each node runs).
KEPT_BYTES = 256 * 2**20


class Measured(Mapping):
    """Per node name: (min per-position RMS, min per-position centred RMS) of its output, computed when first read.

    Only the inputs of normalizers and of products are read (calculus.OpView.input_floor, input_rms_at_init): a
    CNN reads few or none of its ~200 nodes, and each statistic is a float64 pass over an activation. The outputs
    are kept until read; one that a later op may write into (an in-place op or a module that is not torch's own)
    has its statistics computed before that op runs, so the figures are the ones computed as each node ran."""

    def __init__(self, run: Any = None) -> None:
        self._stats: dict[str, tuple[float, float]] = {}
        self._kept: dict[str, torch.Tensor] = {}
        self._names: list[str] = []  # every node with statistics, in graph order
        self._bytes = 0
        self._run = run  # runs the graph, filling this mapping, when first read (`measure`)

    def _ready(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run(self)

    def add(self, name: str, value: torch.Tensor) -> None:
        self._names.append(name)
        if self._bytes + value.nbytes > KEPT_BYTES:
            self._stats[name] = _position_stats(value)
            return
        self._kept[name] = value
        self._bytes += value.nbytes

    def settle(self, written: list[torch.Tensor]) -> None:
        """Statistics now for kept outputs that share storage with tensors an op is about to write into."""
        storages = {t.untyped_storage().data_ptr() for t in written}
        for name in [n for n, t in self._kept.items() if t.untyped_storage().data_ptr() in storages]:
            self._settle(name)

    def _settle(self, name: str, keep: bool = False) -> tuple[float, float]:
        """Statistics of a kept output; the output itself stays (for `value`) unless an op will write into it."""
        value = self._kept[name] if keep else self._kept.pop(name)
        if not keep:
            self._bytes -= value.nbytes
        if name not in self._stats:
            self._stats[name] = _position_stats(value)
        return self._stats[name]

    def __getitem__(self, name: str) -> tuple[float, float]:
        self._ready()
        if name in self._stats:
            return self._stats[name]
        if name in self._kept:
            with torch.no_grad():
                return self._settle(name, keep=True)
        raise KeyError(name)

    def value(self, name: str) -> torch.Tensor | None:
        """The node's output as it ran, while kept (within KEPT_BYTES, not written into later), else None: what a
        statistic particular to one op reads (a coupled normalizer's ceiling, ops_normalization.Coupling.peak)."""
        self._ready()
        return self._kept.get(name)

    def __iter__(self) -> Iterator[str]:
        self._ready()
        return iter(self._names)

    def __len__(self) -> int:
        self._ready()
        return len(self._names)

    def _clear(self) -> None:
        self._stats, self._kept, self._names, self._bytes = {}, {}, [], 0


_INPLACE_OPERATORS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.imatmul, operator.iand,
                      operator.ior, operator.ixor}


def _may_write(node: fx.Node, module: Any) -> bool:
    """Whether running `node` may write into one of its arguments."""
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False)) or not type(module).__module__.startswith("torch.nn.modules.")
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_") and not node.target.startswith("__")
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "") or ""
    owner = getattr(node.target, "__module__", "") or ""
    return (node.target in _INPLACE_OPERATORS or "out" in node.kwargs or bool(node.kwargs.get("inplace"))
            or (name.endswith("_") and not name.startswith("__"))
            or not (owner in ("_operator", "operator") or owner.startswith("torch") or node.target is getattr)
            or any(a is True for a in node.args[1:]))  # F.relu(x, True) & co: a positional inplace flag


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, stats: Measured) -> None:
        super().__init__(module)
        self.stats = stats

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("call_module", "call_function", "call_method"):
            module = self.module.get_submodule(n.target) if n.op == "call_module" else None
            if _may_write(n, module):
                written: list[torch.Tensor] = []
                fx.node.map_aggregate((n.args, n.kwargs), lambda a: written.append(self.env[a])
                                      if isinstance(a, fx.Node) and isinstance(self.env.get(a), torch.Tensor)
                                      else None)
                self.stats.settle(written)
        result = super().run_node(n)
        if _has_stats(result):
            self.stats.add(n.name, result.detach())
        return result


def measure(graph_module: fx.GraphModule, inputs: tuple[Any, ...] | None,
            axes: tuple[int | None, ...] | None = None) -> Mapping[str, tuple[float, float]]:
    """Per node: the smallest per-position RMS and centred RMS of its output when the traced graph runs on the
    example inputs with the model's real weights. Empty when that is not possible (meta weights or inputs, a graph
    that does not run): the floors are then predicted (`typical`). The graph runs when the mapping is first read
    (a ResNet's analysis reads none: no forward pass), and each statistic is computed when read (`Measured`)."""
    if inputs is None or any(isinstance(t, torch.Tensor) and t.is_meta for t in inputs):
        return {}
    if any(p.is_meta for p in graph_module.parameters()) or any(b.is_meta for b in graph_module.buffers()):
        return {}

    def run(stats: Measured) -> None:
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                _Recorder(graph_module, stats).run(*in_unit_ball(inputs, axes=axes))
        except Exception:  # noqa: BLE001 - a graph that cannot run here: the floors fall back to the prediction
            stats._clear()

    return Measured(run)


def typical(record: Any, input_rms: float, weights: Any = None) -> float | None:
    """The typical RMS of a record's output at init, predicted without running the model (None: not predicted)."""
    sem = record.semantics
    if record.kind == "input":
        return None if record.bounds.discrete else input_rms
    if sem is None:
        return None
    known = [i.typical for i in record.inputs]
    if sem.kind == "atom" and sem.atom is not None and sem.atom.kind == "Embedding":
        return sem.atom.norm if math.isfinite(sem.atom.norm) else None
    if sem.kind == "atom" and sem.atom is not None and sem.atom.kind == "Linear" and weights is not None \
            and len(known) == 1 and known[0] is not None:
        gain = _linear_gain(record, weights)
        return gain * known[0] if math.isfinite(gain) else None
    if "normalization" in sem.tags:
        return sem.design[0] if sem.design else None
    if "scalar" in sem.tags and "factor" in sem.info and len(known) == 1 and known[0] is not None:
        return abs(sem.info["factor"]) * known[0]
    if "merge" in sem.tags:
        present = [t for t in known if t is not None]
        return math.sqrt(sum(t * t for t in present)) if present else None
    passes = sem.source.startswith("identity") or ("layout" in sem.tags and tuple(sem.lipschitz) == (1.0,))
    if passes and len(known) == 1:
        return known[0]
    return None


def _linear_gain(record: Any, weights: Any) -> float:
    """A Linear's typical RMS gain at init on an isotropic input: E||Wx||² = ||W||_F² RMS(x)², so
    RMS(y) = ||W||_F / sqrt(out) RMS(x) = RMS(W) sqrt(fan_in) RMS(x), forward scale included."""
    atom = record.semantics.atom
    value = record.node.meta.get("value")
    out = value.shape[-1] if isinstance(value, torch.Tensor) and value.dim() else None
    numel = math.prod(atom.shape)
    if not out or numel % out:
        return math.nan
    return abs(atom.scale) * weights.rms(atom.weight)[0] * math.sqrt(numel // out)


def floor_of(measured: Mapping[str, tuple[float, float]], source: Any, centred: bool) -> Floor | None:
    """The floor for a normalizer fed by the record `source`: measured when the graph ran, else predicted."""
    stats = measured.get(source.node.name)
    if stats is not None:
        at_init = stats[1] if centred else stats[0]
        return Floor(FLOOR_FRACTION * at_init, at_init, centred, "measured") if at_init > 0 else None
    value = getattr(source, "typical", None)
    if value is None or not value > 0 or not math.isfinite(value):
        return None
    return Floor(FLOOR_FRACTION * value, value, centred, "predicted")
