"""Pictures (optional extra `modnorm[plot]`): a sweep on log-log axes, or one model's per-layer profile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import ModnormError

__all__ = ["plot_sweep", "plot_layers"]

_SUFFIXES = (".png", ".svg", ".html")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ModnormError("--plot needs matplotlib, which is not installed",
                           'install it with `pip install "modnorm[plot]"` (or `pip install matplotlib`)') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_path(path: Path) -> None:
    if path.suffix.lower() not in _SUFFIXES:
        raise ModnormError(f"--plot `{path}` has an unknown suffix", "use .png, .svg or .html")


def _save(figure: Any, path: Path) -> None:
    if path.suffix.lower() == ".html":
        import base64
        import io

        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight")
        svg = buffer.getvalue()
        path.write_text(f"<!doctype html><meta charset='utf-8'><title>modnorm</title>\n{svg}\n", encoding="utf-8")
        del base64
    else:
        figure.savefig(path, bbox_inches="tight", dpi=120)


def plot_sweep(sweep: Any, path: Path, threshold: float = 0.25, lines: int = 8) -> Any:
    """One panel per sweep axis: the most drifting quantities (or, if none drifts, the network figures) relative to
    their value at the smallest size, log-log, the fitted exponent in the legend — a static coordinate check.
    Returns the figure."""
    _check_path(path)
    plt = _pyplot()
    axes = sweep.axes
    figure, panels = plt.subplots(1, len(axes), figsize=(7.5 * len(axes), 4.5), squeeze=False)
    for axis, panel in zip(axes, panels[0]):
        base = {a.name: a.values[-1] for a in axes if a is not axis}  # the other axes at their largest value
        drifting = [s for s in sweep.series if s.should_be_flat
                    and abs(_finite(s.exponents.get(axis.name))) > threshold]
        chosen = sorted(drifting, key=lambda s: -abs(s.exponents[axis.name])) or \
            [s for s in sweep.series if s.role == "network"]
        seen: set[tuple[float, ...]] = set()
        for series in chosen:
            xs, ys = _line(sweep, series, axis, base)
            key = tuple(round(y, 9) for y in ys)
            if len(xs) < 2 or key in seen:
                continue  # equal curves (a norm and its sensitivity) are drawn once
            seen.add(key)
            p = series.exponents.get(axis.name, math.nan)
            panel.plot(xs, ys, marker="o", label=f"{series.role} {series.quantity} (p = {p:+.2f})")
            if len(seen) == lines:
                break
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlabel(axis.name)
        panel.set_ylabel("relative to the smallest size")
        panel.set_title(f"scaling with {axis.name}")
        panel.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        panel.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=1, frameon=False)
    _save(figure, path)
    return figure


def _finite(x: Any) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def _line(sweep: Any, series: Any, axis: Any, base: dict[str, Any]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for point, value in zip(sweep.points, series.values):
        if all(point[k] == v for k, v in base.items()) and value > 0 and math.isfinite(value):
            xs.append(point[axis.name])
            ys.append(value)
    return xs, [y / ys[0] for y in ys] if ys else []


def plot_layers(analysis: Any, path: Path) -> Any:
    """Sensitivity, downstream sensitivity and target along the layers of one model (log scale)."""
    _check_path(path)
    plt = _pyplot()
    layers = [l for l in analysis.layers if l.mass > 0]
    figure, panel = plt.subplots(figsize=(max(6.0, 0.35 * len(layers)), 4.5))
    xs = range(len(layers))
    for quantity in ("sensitivity", "downstream_sensitivity", "target_norm"):
        ys = [getattr(l, quantity) for l in layers]
        panel.plot(xs, [y if y > 0 and math.isfinite(y) else float("nan") for y in ys], marker="o", label=quantity)
    panel.set_yscale("log")
    panel.set_xticks(list(xs))
    panel.set_xticklabels([l.name for l in layers], rotation=90, fontsize=7)
    panel.set_xlabel("layer")
    panel.set_ylabel("value")
    panel.set_title(f"modnorm · {analysis.model.file or 'model'}")
    panel.legend(fontsize=8)
    _save(figure, path)
    return figure
