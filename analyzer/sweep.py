"""Scale audit: build a model at several sizes, analyse each, and fit how every quantity scales.

`modnorm check model.py:build_model --sweep width=64,128,256 --sweep depth=2,4,8` builds the factory at every
point of the grid (on the meta device unless the model is small), runs the calculus, matches layers across sizes
by their role path (`blocks.*.attn.q`: indices replaced by `*`, so blocks of a deeper model match), and fits, per
quantity, `log q = Σ_axis p_axis · log size_axis + c` by least squares: p is the exponent of q in that axis
(q ∝ width^p). A quantity that should be scale-invariant but has |p| above a threshold is what the MN4xx rules
report. Units: every quantity is the calculus's own (docs/theory/); a role's value at one size is the worst
member (max, or min for targets: the smallest target is the one that stops learning).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Callable, Sequence

from .result import Analysis, Layer

__all__ = ["Axis", "Series", "Sweep", "parse_sweep", "fit_exponents", "series_of", "DEPTH_NAMES"]

DEPTH_NAMES = {"depth", "n_layer", "n_layers", "num_layers", "layers", "num_blocks", "blocks", "n_blocks", "L",
               "block_depth", "n_block"}


@dataclass(frozen=True)
class Axis:
    name: str  # the factory keyword
    values: tuple[float, ...]

    @property
    def is_depth(self) -> bool:
        return self.name in DEPTH_NAMES or "depth" in self.name or "layer" in self.name


@dataclass(frozen=True)
class Series:
    """One quantity of one role (or of the network) across the grid, and its fitted exponents."""

    role: str  # layer role path, e.g. "blocks.*.attn.q", or "network"
    quantity: str  # "norm_at_init", "downstream_sensitivity", ...
    values: tuple[float, ...]  # one per grid point, in grid order
    exponents: dict[str, float]  # axis name -> p
    spread: float  # max / min over the grid
    should_be_flat: bool  # scale-invariant by design (MN4xx applies)
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Sweep:
    axes: tuple[Axis, ...]
    points: tuple[dict[str, Any], ...]  # factory kwargs of each grid point
    analyses: tuple[Analysis, ...]
    series: tuple[Series, ...]
    findings: tuple[Any, ...] = field(default=())

    def of(self, role: str, quantity: str) -> Series:
        return next(s for s in self.series if s.role == role and s.quantity == quantity)


def parse_sweep(items: Sequence[str]) -> tuple[Axis, ...]:
    """`["width=64,128", "depth=2,4"]` → axes; at least two positive values each."""
    from .errors import ModnormError

    axes = []
    for item in items:
        name, sep, values = item.partition("=")
        try:
            numbers = tuple(_number(v) for v in values.split(",") if v.strip())
        except ValueError:
            numbers = ()
        if not sep or not name.isidentifier() or len(numbers) < 2 or min(numbers) <= 0:
            raise ModnormError(f"--sweep `{item}` must look like NAME=V1,V2[,...] with at least two positive "
                               "values (e.g. width=128,256,512)", "NAME is a keyword argument of the factory")
        axes.append(Axis(name, numbers))
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise ModnormError(f"--sweep names an axis twice ({', '.join(names)})", "give each keyword once")
    return tuple(axes)


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def grid(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    return [dict(zip((a.name for a in axes), combo)) for combo in product(*(a.values for a in axes))]


def fit_exponents(points: Sequence[dict[str, Any]], values: Sequence[float], axes: Sequence[Axis]) -> dict[str, float]:
    """Least-squares exponents of `values` in each axis (log-log, with an intercept). NaN where undefined."""
    import torch

    usable = [(p, v) for p, v in zip(points, values) if v > 0 and math.isfinite(v)]
    varying = [a for a in axes if len({p[a.name] for p, _ in usable}) > 1]
    if len(usable) < 2 or not varying:
        return {a.name: math.nan for a in axes}
    design = torch.tensor([[math.log(p[a.name]) for a in varying] + [1.0] for p, _ in usable], dtype=torch.float64)
    target = torch.tensor([[math.log(v)] for _, v in usable], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, target, driver="gelsd").solution[:, 0]
    fitted = {a.name: float(solution[i]) for i, a in enumerate(varying)}
    return {a.name: fitted.get(a.name, math.nan) for a in axes}


def role_of(name: str) -> str:
    """`blocks.3.attn.q` → `blocks.*.attn.q`; a bare top-level index (`2` in a Sequential) names one layer."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", name)


# quantity name -> (how to aggregate a role's members, scale-invariant by design?)
LAYER_QUANTITIES: dict[str, tuple[Callable[[list[float]], float], bool]] = {
    "norm_at_init": (max, True),
    "sensitivity": (max, True),
    "design_downstream_sensitivity": (max, True),  # the S_down of targets (normalizers at their design value)
    "target_norm": (min, True),
    "mass_share": (sum, False),  # a role's share: shrinks per atom with depth by design, flat per role
}


def _network_quantities(analysis: Analysis) -> dict[str, float]:
    net = analysis.network
    out = {"sensitivity": net.sensitivity, "design_sensitivity": net.design_sensitivity}
    if net.sharpness is not None and net.sharpness.certified:
        out["alpha"] = net.sharpness.alpha
    if net.loss is not None and math.isfinite(net.loss.gradient_lipschitz):
        out["gradient_lipschitz"] = net.loss.gradient_lipschitz
    logits = [op.info.get("aligned_logit") for op in analysis.ops if "attention" in op.tags]
    logits = [v for v in logits if v is not None]
    if logits:
        out["attention_logit_bound"] = max(logits)
    return out


def series_of(axes: Sequence[Axis], points: Sequence[dict[str, Any]], analyses: Sequence[Analysis]) -> list[Series]:
    """Every (role, quantity) present at every grid point, with exponents."""
    out: list[Series] = []
    roles: dict[str, list[list[Layer]]] = {}
    for index, analysis in enumerate(analyses):
        for layer in analysis.layers:
            if layer.kind == "Gain" and layer.mass == 0:
                continue
            roles.setdefault(role_of(layer.name), [[] for _ in analyses])[index].append(layer)
    for role, members in roles.items():
        if not all(members):
            continue  # present at some sizes only (e.g. a layer that depends on depth): no series
        first = members[-1][0]
        for quantity, (aggregate, flat) in LAYER_QUANTITIES.items():
            values = tuple(float(aggregate([getattr(l, quantity) for l in group])) for group in members)
            out.append(_series(role, quantity, values, axes, points, flat, first.file, first.line))
    network = [_network_quantities(a) for a in analyses]
    # Figures that rest on assumptions measured at init (the `assumed` profile's normalizer floors) move with the
    # stream's RMS at each size: reported, but not judged for drift (the design figures are).
    assumed = any(a.network.assumptions for a in analyses)
    for quantity in network[0]:
        if all(quantity in n for n in network):
            values = tuple(n[quantity] for n in network)
            flat = not (assumed and quantity in ("sensitivity", "alpha", "gradient_lipschitz"))
            out.append(_series("network", quantity, values, axes, points, flat, None, None))
    return out


def _series(role: str, quantity: str, values: tuple[float, ...], axes: Sequence[Axis],
            points: Sequence[dict[str, Any]], flat: bool, file: str | None, line: int | None) -> Series:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    spread = max(positive) / min(positive) if positive else math.nan
    return Series(role, quantity, values, fit_exponents(points, values, axes), spread, flat, file, line)


def run(target: str, settings: Any, axes: Sequence[Axis], check_model: Callable[..., Any], *, input_shape: Any = None,
        input_dtype: str | None = None, kwargs: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None, jobs: int = 1) -> tuple[Sweep, Any]:
    """Analyse `target` at every grid point with `check_model` (check.check_model: passed in, so that sweep does not
    import check, which imports sweep), in up to `jobs` worker processes (parallel.py: same results, in grid
    order); rules run on the largest model only, MN4xx on the sweep."""
    from .parallel import run_all

    points = grid(axes)
    if progress:
        for point in points:
            progress(", ".join(f"{k}={v}" for k, v in point.items()))
    items = [(check_model, target, settings, input_shape, input_dtype, {**(kwargs or {}), **point})
             for point in points]
    # A grid point's cost grows with every axis: the product of its values orders the work (largest first).
    costs = [math.prod(float(v) for v in point.values()) for point in points]
    results = run_all(_check_point, items, jobs, "sweeping", "grid points", costs, in_caller=True)
    analyses = [result.analysis for result in results]
    series = series_of(axes, points, analyses)
    sweep = Sweep(tuple(axes), tuple(points), tuple(analyses), tuple(series))
    return sweep, results[-1]


def _check_point(check_model: Callable[..., Any], target: str, settings: Any, input_shape: Any,
                 input_dtype: str | None, kwargs: dict[str, Any]) -> Any:
    """One grid point (a top-level function, so worker processes can run it)."""
    return check_model(target, settings, input_shape=input_shape, input_dtype=input_dtype, kwargs=kwargs)
