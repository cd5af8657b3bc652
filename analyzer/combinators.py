"""The paper's combinators on sensitivities (docs/theory/modular-norm.md#composition): what the passes (calculus,
sharpness) compose with."""

from __future__ import annotations

__all__ = ["series", "parallel"]


def series(first: float, then: float) -> float:
    """Sensitivity of `then ∘ first`: sensitivities multiply, with 0 · inf = 0 (a path through a zero constant
    carries nothing)."""
    return 0.0 if first == 0 or then == 0 else first * then


def parallel(*branches: float) -> float:
    """Sensitivity of a fan-out whose branches are summed: sensitivities add (concatenation + Add, docs/theory)."""
    return sum(branches)
