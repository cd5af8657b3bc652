"""The paper's combinators on sensitivities (docs/theory/modular-norm.md#composition): what the passes (calculus,
sharpness) compose with.

Path sums over hundreds of layers multiply hundreds of constants: in float64 such a product can overflow to inf
although every factor is finite. The `log_` forms compose natural logarithms of sensitivities instead, so a figure
is infinite only when one of its constants really is (an unbounded op), never by overflow.
"""

from __future__ import annotations

import math

__all__ = ["series", "parallel", "log_of", "log_series", "log_parallel", "exp_of", "log10_of", "target_of"]


def series(first: float, then: float) -> float:
    """Sensitivity of `then ∘ first`: sensitivities multiply, with 0 · inf = 0 (a path through a zero constant
    carries nothing)."""
    return 0.0 if first == 0 or then == 0 else first * then


def parallel(*branches: float) -> float:
    """Sensitivity of a fan-out whose branches are summed: sensitivities add (concatenation + Add, docs/theory)."""
    return sum(branches)


def log_of(x: float) -> float:
    """ln x for a sensitivity: -inf for 0, inf for inf (nan stays nan: an unknown figure stays unknown)."""
    if x == 0:
        return -math.inf
    return math.log(x) if math.isfinite(x) else x


def log_series(first: float, then: float) -> float:
    """`series` in log space: ln(a·b) = ln a + ln b, with 0 · inf = 0 (a zero factor stops the path)."""
    if first == -math.inf or then == -math.inf:
        return -math.inf
    return first + then


def log_parallel(*branches: float) -> float:
    """`parallel` in log space: ln Σ exp(b_i), computed without leaving float range (log-sum-exp)."""
    live = [b for b in branches if b != -math.inf]
    if not live:
        return -math.inf
    top = max(live)
    if not math.isfinite(top):
        return top
    return top + math.log(sum(math.exp(b - top) for b in live))


def exp_of(log_x: float) -> float:
    """A sensitivity back from its log: inf when it exceeds float range (the log then keeps the figure)."""
    try:
        return math.exp(log_x)
    except OverflowError:
        return math.inf


def log10_of(log_x: float) -> float:
    """log10 of a sensitivity given by its natural log (what reports print when the float overflows)."""
    return log_x / math.log(10) if math.isfinite(log_x) else log_x


def target_of(share: float, down: float, log_down: float) -> float:
    """The normalization target t_i = share / S_down(i) (docs/theory/modular-norm.md#targets); from the log of
    S_down when the float overflowed, so that a sensitivity beyond float range still gives its (tiny) target."""
    if share <= 0:
        return 0.0
    if 0 < down < math.inf:
        return share / down
    if log_down == -math.inf:
        return math.inf
    return exp_of(math.log(share) - log_down)
