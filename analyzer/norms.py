"""Operator norms of weights: exact for the sizes the calculus meets, with a certified upper bound.

`spectral_norm` takes sqrt(eigvalsh) of the float64 Gram matrix on the smaller side, which agrees with a float64
SVD to ~1e-15 (real-models.md §7); the upper bound adds a relative margin covering float64 round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["NormEstimate", "spectral_norm", "exact_spectral_norm", "conv_kernel_norm"]

_MARGIN = 1e-9  # relative: float64 eigvalsh error on a Gram matrix is ~1e-15 of its largest eigenvalue


@dataclass(frozen=True)
class NormEstimate:
    value: float
    lower: float
    upper: float
    method: str


def exact_spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value via the float64 Gram matrix on the smaller side."""
    w = matrix.detach().to(torch.float64)
    if w.numel() == 0:
        return 0.0
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))


def spectral_norm(matrix: torch.Tensor) -> NormEstimate:
    """The spectral norm of a 2-D matrix with a certified bracket."""
    value = exact_spectral_norm(matrix.reshape(matrix.shape[0], -1))
    return NormEstimate(value, value * (1 - _MARGIN), value * (1 + _MARGIN) + 1e-300, "gram-eigvalsh")


def conv_kernel_norm(slices: torch.Tensor) -> NormEstimate:
    """max over kernel positions of the spectral norm of weight[:, :, ...] given as (out, in, positions)."""
    w = slices.detach().to(torch.float64).permute(2, 0, 1)
    gram = w @ w.transpose(1, 2) if w.shape[1] <= w.shape[2] else w.transpose(1, 2) @ w
    value = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[..., -1].max()), 0.0)) if w.numel() else 0.0
    return NormEstimate(value, value * (1 - _MARGIN), value * (1 + _MARGIN) + 1e-300, "gram-eigvalsh")
