"""Operator norms of weights, with a stated bracket [lower, upper] around the true value.

* Small matrices (smaller side ≤ 2048): exact. sqrt(eigvalsh) of the float64 Gram matrix on the smaller side
  agrees with a float64 SVD to ~1e-15 (real-models.md §7); the upper bound adds a margin for float64 round-off.
* Large matrices: Lanczos on the Gram matrix (one product with W and one with Wᵀ per step, full
  reorthogonalisation, random Gaussian start). Every Ritz value θ is a Rayleigh quotient, so √θ ≤ σ_max always
  (the lower bound). For the upper bound, Kuczyński & Woźniakowski (SIAM J. Matrix Anal. Appl. 13, 1992,
  Thm 4.2(a)): for a PSD n×n matrix and a random start, P(θ_k < (1 − ε) λ_max) ≤ 1.648 √n e^{−√ε (2k − 1)}.
  We run k steps so that this is ≤ δ (default ε = 2e-2, δ = 1e-6: about 68 steps for n = 8192) and report
  σ_max ≤ √(θ_k / (1 − ε)) — an upper bound that holds with probability ≥ 1 − δ, independent of the spectrum,
  capped by the Frobenius norm (always true). The method string says which kind of bound was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["NormEstimate", "spectral_norm", "exact_spectral_norm", "lanczos_spectral_norm", "conv_kernel_norm",
           "spectral_norms_batched", "EXACT_MAX_SIDE"]

_MARGIN = 1e-9  # relative: float64 eigvalsh error on a Gram matrix is ~1e-15 of its largest eigenvalue
EXACT_MAX_SIDE = 2048


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


def _exact(matrix: torch.Tensor) -> NormEstimate:
    value = exact_spectral_norm(matrix)
    return NormEstimate(value, value * (1 - _MARGIN), value * (1 + _MARGIN) + 1e-300, "exact (float64 Gram eigvalsh)")


def lanczos_steps(n: int, epsilon: float, delta: float) -> int:
    """Steps k with 1.648 √n e^{−√ε (2k − 1)} ≤ δ (Kuczyński–Woźniakowski)."""
    needed = math.log(1.648 * math.sqrt(max(n, 1)) / delta) / math.sqrt(epsilon)
    return max(2, min(n, math.ceil((needed + 1) / 2)))


def lanczos_spectral_norm(matrix: torch.Tensor, epsilon: float = 2e-2, delta: float = 1e-6,
                          seed: int = 0) -> NormEstimate:
    """σ_max of a large matrix by Lanczos on its Gram matrix (module docstring for the guarantee)."""
    w = matrix.detach().reshape(matrix.shape[0], -1)
    if not w.is_floating_point() or w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    rows, cols = w.shape
    n = min(rows, cols)
    wide = rows <= cols  # Gram on the smaller side: G = W Wᵀ (rows) or Wᵀ W (cols)

    def gram(v: torch.Tensor) -> torch.Tensor:
        x = v.to(w.dtype)
        y = w @ (w.T @ x) if wide else w.T @ (w @ x)
        return y.double()

    steps = lanczos_steps(n, epsilon, delta)
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=generator, dtype=torch.float64)
    q /= q.norm()
    basis = [q]
    alphas, betas = [], []
    beta, previous = 0.0, torch.zeros_like(q)
    for _ in range(steps):
        z = gram(q) - beta * previous
        alpha = float(q @ z)
        z -= alpha * q
        stacked = torch.stack(basis)
        z -= stacked.T @ (stacked @ z)  # full reorthogonalisation, twice is enough
        z -= stacked.T @ (stacked @ z)
        alphas.append(alpha)
        beta = float(z.norm())
        if beta <= 1e-12 * max(abs(alpha), 1e-300):
            break  # an invariant subspace: θ is then an eigenvalue
        betas.append(beta)
        previous, q = q, z / beta
        basis.append(q)
    k = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    theta = max(float(torch.linalg.eigvalsh(tridiagonal)[-1]), 0.0)
    rounding = 1e-12 if w.dtype == torch.float64 else 1e-5  # relative round-off of the products
    lower = math.sqrt(theta) * (1 - rounding)
    frobenius = float(w.norm()) * (1 + rounding)  # in the matrix's own precision, with its round-off margin
    upper = min(math.sqrt(theta / (1 - epsilon)) * (1 + rounding), frobenius)
    return NormEstimate(math.sqrt(theta), lower, upper,
                        f"lanczos ({k} steps): upper bound holds with probability >= {1 - delta:g} "
                        f"(relative error <= {epsilon:g} in σ², Kuczyński–Woźniakowski)")


def spectral_norm(matrix: torch.Tensor, method: str = "auto", epsilon: float = 2e-2,
                  delta: float = 1e-6) -> NormEstimate:
    """The spectral norm of a matrix (reshaped to 2-D) with its bracket: exact when the smaller side is at most
    EXACT_MAX_SIDE (or method="exact"), else Lanczos (or method="fast")."""
    w = matrix.reshape(matrix.shape[0], -1)
    if w.numel() == 0:
        return NormEstimate(0.0, 0.0, 0.0, "empty")
    if method == "exact" or (method == "auto" and min(w.shape) <= EXACT_MAX_SIDE):
        return _exact(w)
    return lanczos_spectral_norm(w, epsilon, delta)


def spectral_norms_batched(stack: torch.Tensor, method: str = "auto") -> list[NormEstimate]:
    """Norms of equally shaped matrices (B, rows, cols): one batched eigvalsh when exact, else one by one."""
    if stack.dim() != 3:
        raise ValueError("expected a (batch, rows, cols) stack")
    if method == "exact" or (method == "auto" and min(stack.shape[1:]) <= EXACT_MAX_SIDE):
        w = stack.detach().to(torch.float64)
        gram = w @ w.transpose(1, 2) if w.shape[1] <= w.shape[2] else w.transpose(1, 2) @ w
        values = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt().tolist()
        return [NormEstimate(v, v * (1 - _MARGIN), v * (1 + _MARGIN) + 1e-300, "exact (float64 Gram eigvalsh)")
                for v in values]
    return [spectral_norm(m, method) for m in stack]


def conv_kernel_norm(slices: torch.Tensor) -> NormEstimate:
    """max over kernel positions of the spectral norm of weight[:, :, ...] given as (out, in, positions)."""
    estimates = spectral_norms_batched(slices.permute(2, 0, 1)) if slices.numel() else []
    if not estimates:
        return NormEstimate(0.0, 0.0, 0.0, "empty")
    top = max(estimates, key=lambda e: e.upper)
    return NormEstimate(max(e.value for e in estimates), max(e.lower for e in estimates), top.upper, top.method)
