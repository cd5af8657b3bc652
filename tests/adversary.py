"""The adversarial verifier's helpers: measure what a tiny model really does and compare it with modnorm's bound.

Norms are modnorm's own: a tensor is measured by the RMS over its feature axis, maximised over every other axis
(the last axis, or axis 1 of a 4-D NCHW tensor, for the network's inputs and outputs). Every case built here
returns its output in that convention, whatever layout the op inside it sees.

The measurement is a *lower* estimate of the true supremum, so `measured <= bound` must hold:

* input Lipschitz constant: sup over x in the unit ball and directions v of ||J(x) v|| / ||v||, by power
  iteration on JᵀJ at random points, then gradient ascent (Adam, float64) on x and v jointly;
* weight perturbation of an atom: sup over x in the unit ball and ||Δw||_natural = 1 of ||D_w f[Δw]||, against
  S_down(atom) · R(atom input) (the bound modnorm's probe and well-normedness use), biases held fixed.

The natural norms are written here from their definitions (docs/ and the paper, §c.2), not imported from modnorm.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

import modnorm

NIGHTLY = os.environ.get("MODNORM_NIGHTLY", "") not in ("", "0")


@dataclass(frozen=True)
class Budget:
    """How hard the adversary searches."""

    examples: int  # hypothesis examples per registry entry
    restarts: int  # random starting points per measurement
    steps: int  # gradient-ascent steps per start


DEFAULT = Budget(examples=2, restarts=1, steps=15)
LONG = Budget(examples=30, restarts=4, steps=150)


# ----------------------------------------------------------------------------------------------- the registry
def registry_groups() -> list[tuple[Any, ...]]:
    """Every entry of the op registry, as the tuple of spellings registered for it.

    The one place that knows where the registry lives: re-point it when the core moves.
    """
    from modnorm.semantics import REGISTRY

    groups: dict[int, list[Any]] = {}
    for spelling, entry in REGISTRY.items():
        groups.setdefault(id(entry), []).append(spelling)
    return [tuple(spellings) for spellings in groups.values()]


def spelling_name(spelling: Any) -> str:
    if isinstance(spelling, str):
        return spelling
    module = getattr(spelling, "__module__", "") or ""
    return f"{module.split('.')[-1]}.{getattr(spelling, '__qualname__', getattr(spelling, '__name__', spelling))}"


# ------------------------------------------------------------------------------------------------------ norms
def feature_axis(t: torch.Tensor) -> int:
    """modnorm's convention for a network's inputs and outputs: channels of NCHW, else the last axis."""
    return 1 if t.dim() == 4 else -1


def rms_max(t: torch.Tensor, fdim: int | None = None) -> torch.Tensor:
    """The max-position RMS norm (RMS over the feature axis, max over every other axis)."""
    if t.dim() == 0:
        return t.abs()
    fdim = feature_axis(t) if fdim is None or fdim >= t.dim() else fdim
    # max before sqrt: positions whose output does not move (padding) would give sqrt'(0) = inf, and NaN gradients
    return t.movedim(fdim, -1).pow(2).mean(-1).max().sqrt()


def natural_norm(kind: str, w: torch.Tensor, *, scale: float = 1.0, transposed: bool = False,
                 groups: int = 1) -> torch.Tensor:
    """An atom's natural norm (differentiable), from its definition in the paper (§c.2, Modula's atoms):

    Linear y = c W x (W: out x in): |c| sqrt(in/out) σ_max(W); a transposed weight (x @ W, W: in x out) the same
    with in = W.shape[0]. Conv (W: out x in/g x k): |c| k sqrt(in/out) max over kernel positions and groups of
    σ_max of the (out/g x in/g) block (a grouped conv is block-diagonal at each position). Embedding (one-hot
    l1 -> RMS): |c| max row RMS. Gain (diagonal): max |w|. TokenMixing (a Linear across positions, features kept
    whole): |c| max row l1 = |c| ||W||_inf->inf.
    """
    c = abs(scale)
    if kind == "Linear":
        fan_in, fan_out = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
        return c * math.sqrt(fan_in / fan_out) * torch.linalg.matrix_norm(w, 2)
    if kind in ("Conv1d", "Conv2d"):
        c_out, per_group = w.shape[:2]
        c_in, k = per_group * groups, math.prod(w.shape[2:])
        blocks = w.reshape(groups, c_out // groups, per_group, k).permute(0, 3, 1, 2)
        return c * k * math.sqrt(c_in / c_out) * torch.linalg.matrix_norm(blocks, 2).max()
    if kind == "Embedding":
        return c * w.pow(2).mean(1).sqrt().max()
    if kind == "TokenMixing":  # a Linear across positions: ||W||_inf->inf, the largest row l1
        return c * (w.transpose(0, 1) if transposed else w).abs().sum(1).max()
    return w.abs().max()


# ------------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """A tiny float64 model around one op, an example input, and what to perturb."""

    label: str
    model: nn.Module
    x: torch.Tensor
    atoms: tuple[str, ...] = ()  # parameter names of atoms whose weight-perturbation bound is checked
    route: str = "auto"  # "auto" (modnorm.analyze) or "export" (the aten spellings of the registry)
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Case({self.label})"


def analyze_case(case: Case) -> Any:
    """modnorm's analysis of a case. The export route has no public switch; it is reached through one call.

    The verifier searches the whole unit ball, so it checks the unconditional `certified` profile; the default
    `assumed` profile's normalizer constants hold where their floors do, and are searched there
    (tests/test_assumptions.py)."""
    options = {"profile": "certified", **case.options}
    if case.route == "auto":
        return modnorm.analyze(case.model, case.x, **options)
    from modnorm.calculus import Options, analyze_traced
    from modnorm.routes import trace

    traced = trace(case.model.eval(), (case.x,), tracer=case.route)
    return analyze_traced(traced, Options(**options), device="cpu")


def _into_ball(x: torch.Tensor, radius: float = 1.0, axis: int | None = None) -> torch.Tensor:
    return x * (radius / torch.clamp(rms_max(x, axis), min=radius))


def _random_point(x: torch.Tensor, radius: float, axis: int | None = None) -> torch.Tensor:
    point = torch.randn_like(x)
    return point / rms_max(point, axis) * radius


def measure_input_lipschitz(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: Budget,
                            in_axis: int | None = None, out_axis: int | None = None) -> float:
    """Lower estimate of sup_{||x|| <= 1} ||J(x)|| in the max-position RMS norms (see the module docstring), the
    input's RMS taken over `in_axis` and the output's over `out_axis` (the analysis's axes; None: the convention)."""
    fin = feature_axis(x) if in_axis is None else in_axis
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = 0.0
    with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD needs sdpa's math kernel on the CPU
        for restart in range(b.restarts):
            # the unit sphere, then near 0 (where normalizers are steepest), then anywhere inside
            radius = 1.0 if restart == 0 else 1e-3 if restart == 1 else 0.2 + 0.8 * torch.rand(()).item()
            point = _random_point(x, radius, fin)
            v = torch.randn_like(x)
            for _ in range(5):  # power iteration on JᵀJ: the best direction where J is locally linear
                v = v / v.norm()
                _, jv = jvp(f, (point,), (v,))
                best = max(best, float(rms_max(jv, out_axis) / rms_max(v, fin)))
                # the same direction pushed to the ball's extreme points: every position at the full RMS
                spread = v / v.movedim(fin, -1).pow(2).mean(-1, keepdim=True).sqrt().clamp_min(
                    1e-30).movedim(-1, fin)
                best = max(best, float(rms_max(jvp(f, (point,), (spread,))[1], out_axis) / rms_max(spread, fin)))
                _, pullback = vjp(f, point)
                (v,) = pullback(jv)
            best = max(best, _ascend(lambda p, d: jvp(f, (_into_ball(p, 1.0, fin),), (d,))[1], point, v / v.norm(),
                                     b.steps, lambda d: rms_max(d, fin), out_axis))
    return best


def _ascend(change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], point: torch.Tensor,
            direction: torch.Tensor, steps: int, size: Callable[[torch.Tensor], torch.Tensor],
            out_axis: int | None = None) -> float:
    """Gradient ascent of ||change(point, direction)|| / size(direction) on point and direction jointly."""
    p = point.detach().clone().requires_grad_(point.is_floating_point())
    d = direction.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([p, d] if p.requires_grad else [d], lr=0.05)
    best = 0.0
    for _ in range(steps):
        ratio = rms_max(change(p, d), out_axis) / size(d)
        if not torch.isfinite(ratio):
            break
        best = max(best, float(ratio))
        optimizer.zero_grad()
        try:
            (-ratio).backward()
        except (RuntimeError, NotImplementedError):  # no double backward (hardsigmoid): keep the power iteration's
            break
        optimizer.step()
    return best


def measure_weight_perturbation(model: nn.Module, x: torch.Tensor, weight: str, kind: str, *, scale: float,
                                transposed: bool, groups: int, b: Budget, in_axis: int | None = None,
                                out_axis: int | None = None) -> float:
    """Lower estimate of sup over ||x|| <= 1 (continuous inputs) and ||Δw||_natural = 1 of ||D_w f[Δw]||."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = {k: v.detach() for k, v in model.named_parameters()}
    continuous = x.is_floating_point()

    def change(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        point = _into_ball(p, 1.0, in_axis) if continuous else x
        tangent = {k: torch.zeros_like(v) for k, v in params.items()}
        tangent[weight] = d
        return jvp(lambda q: functional_call(model, q, (point,)), (params,), (tangent,))[1]

    def size(d: torch.Tensor) -> torch.Tensor:
        return natural_norm(kind, d, scale=scale, transposed=transposed, groups=groups)

    best = 0.0
    with sdpa_kernel(SDPBackend.MATH):
        for restart in range(b.restarts):
            point = _random_point(x, 1.0, in_axis) if continuous else x
            best = max(best, _ascend(change, point, torch.randn_like(params[weight]), b.steps, size, out_axis))
    return best


@dataclass(frozen=True)
class Measurement:
    what: str  # "input" or "weight <param>"
    bound: float
    measured: float

    @property
    def ratio(self) -> float:
        if self.bound == 0:
            return 0.0 if self.measured <= 1e-12 else math.inf
        return self.measured / self.bound if math.isfinite(self.bound) else 0.0

    @property
    def holds(self) -> bool:
        return self.measured <= self.bound * (1 + 1e-6) + 1e-9


def atom_is_transposed(layer: Any, model: nn.Module) -> bool:
    """A Linear atom whose weight is stored (in, out): `x @ W`, addmm (GPT-2's Conv1D)."""
    return layer.kind == "Linear" and "Linear" not in layer.module_type and not isinstance(
        dict(model.named_modules()).get(layer.name), nn.Linear)


def measure_case(case: Case, b: Budget) -> list[Measurement]:
    """Input Lipschitz constant (continuous inputs) and each named atom's weight-perturbation inequality."""
    model = case.model.double().eval()
    analysis = analyze_case(case)
    out: list[Measurement] = []
    in_axis, out_axis = analysis.input_axes[0] if analysis.input_axes else None, analysis.output_axis
    if case.x.is_floating_point():
        measured = measure_input_lipschitz(lambda z: model(z), case.x, b, in_axis, out_axis)
        out.append(Measurement("input", analysis.network.sensitivity, measured))
    for layer in analysis.layers:
        if layer.weight not in case.atoms:
            continue
        bound = layer.downstream_sensitivity * analysis.atom_input_radius(layer)
        measured = measure_weight_perturbation(model, case.x, layer.weight, layer.kind, scale=layer.scale,
                                               transposed=atom_is_transposed(layer, model), groups=layer.groups, b=b,
                                               in_axis=in_axis, out_axis=out_axis)
        out.append(Measurement(f"weight {layer.weight}", bound, measured))
    return out


# The tightest ratio seen per registry entry, printed as a table at the end of the session (conftest.py).
WORST: dict[str, tuple[float, str, str]] = {}


def record(entry: str, case: Case, measurements: list[Measurement]) -> None:
    for m in measurements:
        previous = WORST.get(entry)
        if previous is None or m.ratio > previous[0]:
            WORST[entry] = (m.ratio, case.label, f"{m.what}: measured {m.measured:.4g} bound {m.bound:.4g}")


def table() -> str:
    rows = sorted(WORST.items(), key=lambda item: -item[1][0])
    width = max((len(k) for k in WORST), default=5)
    lines = [f"{'registry entry':<{width}}  worst ratio  case / figures"]
    lines += [f"{entry:<{width}}  {ratio:11.4g}  {label}  ({figures})" for entry, (ratio, label, figures) in rows]
    return "\n".join(lines)


def explain(case: Case, measurements: list[Measurement]) -> str:
    return "; ".join(f"{case.label} {m.what}: measured {m.measured:.6g} > bound {m.bound:.6g} "
                     f"(ratio {m.ratio:.4g})" for m in measurements if not m.holds)


def pattern_recognisers() -> list[str]:
    """The names of modnorm's pattern recognisers (`_match_<name>` in its patterns module).

    The one place that knows where the patterns live: re-point it when the core moves.
    """
    from modnorm import patterns

    return sorted(name.removeprefix("_match_") for name in vars(patterns) if name.startswith("_match_"))
