"""Operator norms of weights, with a stated bracket [lower, upper] around the true value σ_max(W).

Every `NormEstimate` says how its upper bound holds: `confidence` is 1.0 for a deterministic bound and 1 − δ for
the randomized one below (the probability is over our own random start vector, for any matrix that was not built
to defeat our fixed seed). `lower` is always deterministic.

Exact path (the default when the smaller side n ≤ EXACT_MAX_SIDE = 2048, or method="exact")
    λ = the largest eigenvalue of the float64 Gram matrix G = W Wᵀ (or Wᵀ W) on the smaller side, by eigvalsh.
    The float64 Gram has |fl(G) − G| ≤ γ_N |W||W|ᵀ entrywise (N the inner dimension, γ_N = N u / (1 − N u),
    u = 2⁻⁵³, any summation order), so ‖fl(G) − G‖₂ ≤ γ_N ‖W‖_F²; eigvalsh is backward stable (eigenvalues of
    fl(G) within p(n) u ‖fl(G)‖₂, we take p(n) = n). With m = γ_N ‖W‖_F² + n u λ: σ_max ∈ [√(λ − m), √(λ + m)].
    The relative margin is ~1e-9 for Gaussian 2048 × 8192: deterministic and tight, at O(n² N) cost (8192 × 28672:
    ~45 s for the Gram and ~15 s for eigvalsh on 2 cores, against ~6 min for `torch.linalg.svdvals`).

Why a fast *deterministic* tight upper bound does not exist
    An algorithm that sees W only through k < n products W x, Wᵀ y with vectors it chose deterministically cannot
    bound σ_max at all: add s·u vᵀ with v ⊥ every x it used and u ⊥ every y; every answer it saw is unchanged and
    σ_max ≥ s is arbitrary (Kuczyński & Woźniakowski 1992 state the same for Krylov information). Bounds that read
    every entry cheaply (Frobenius, √(‖W‖₁‖W‖_∞), (tr G^p)^{1/p} for the p one can afford) are off by up to √n on
    the flat spectra of real weights (59× for Gaussian 8192 × 28672; (tr G²)^{1/4} is still 6.6× off and needs
    the Gram already). A tight deterministic certificate (Cholesky of t·I − G) needs the Gram matrix: the exact
    path's cost. So the fast path is randomized, with a proven failure probability, and capped by the Frobenius
    norm, which is deterministic (when the cap is the smaller, `confidence` is 1.0).

Fast path (smaller side > 2048, or method="fast"): randomized block Lanczos with a proven failure probability
    Start block X ∈ ℝ^{n×b} with iid N(0, 1) entries (a seeded torch.Generator: deterministic output). k block
    steps build an orthonormal basis Q (float64, full reorthogonalisation twice per step) of the block Krylov space
    K_k = span{X, GX, …, G^{k−1}X}, one product with W and one with Wᵀ per step; θ = λ_max(Qᵀ G Q) (Rayleigh–Ritz).
    Lower bound: the Ritz vector z gives the test vector u = z (G = W Wᵀ) or u = W z (G = Wᵀ W), and
    σ_max ≥ ‖Wᵀ u‖ / ‖u‖ for any u. We recompute ‖Wᵀ u‖ once, in float32 chunks of 32 rows summed in float64, and
    subtract its rounding bound (γ₃₂ in float32 + γ in float64) · ‖W‖_F ‖u‖, so `lower` holds with no probability.
    Upper bound (proven here). Let λ₁ ≥ … ≥ λ_n ≥ 0 be the eigenvalues of G, v_i its eigenvectors, τ = (1 − ε) λ₁,
    a = artanh √ε, and c_i = Xᵀ v_i ∈ ℝ^b (iid N(0, I_b) since V is orthogonal). Take the odd Chebyshev polynomial
    T_{2k−1} and write T_{2k−1}(s) = s·p(1 − s²) with p of degree k − 1; put y = p(G/τ) X c₁ ∈ K_k. Then
    yᵀ(G − τ)y = τ Σ_i (t_i − 1) p(t_i)² (c_iᵀc₁)² with t_i = λ_i/τ. For t_i ≤ 1 put s_i = √(1 − t_i) ∈ [0, 1]:
    (1 − t_i) p(t_i)² = T_{2k−1}(s_i)² ≤ 1. For i = 1, t₁ = 1/(1 − ε), s₁ = i·√(ε/(1 − ε)) and
    (t₁ − 1) p(t₁)² = |T_{2k−1}(s₁)|² = sinh²((2k − 1) a). Terms with t_i > 1 are ≥ 0, so θ ≥ ρ(y) ≥ τ unless
        sinh²((2k − 1) a) ‖c₁‖⁴ < Σ_{i≥2} (c_iᵀ c₁)² = ‖c₁‖² Z,   Z ~ χ²_{n−1} independent of ‖c₁‖² ~ χ²_b,
    i.e. unless B = ‖c₁‖²/(‖c₁‖² + Z) ~ Beta(b/2, (n−1)/2) is below r = 1/sinh²((2k − 1) a). For n ≥ 3,
        P(θ < (1 − ε) λ₁) ≤ P(B < r) ≤ (2/b) r^{b/2} / B(b/2, (n − 1)/2)  =: δ(n, k, b, ε).
    (For b = 1 this is ≈ 1.6 √n e^{−(2k−1)√ε}, Kuczyński & Woźniakowski's Theorem 4.2 bound; the block makes the
    δ-dependence cheap: log(1/δ)/b.) We pick the smallest k with δ(n, k, b, ε) ≤ δ and report
    σ_max ≤ √(θ (1 + η) / (1 − ε)), with ε = 1 − 1/(1 + rtol)² so that upper ≤ value·(1 + rtol)(1 + η/2).
    η = 1e-4 (float32 products; 1e-10 for float64 weights) covers finite precision: the proof is for exact
    arithmetic, and Lanczos with full reorthogonalisation computes the Ritz values of a matrix within a few u·‖G‖
    of G (Paige; Greenbaum) — the one step we do not prove here; differences between θ and the float64-checked
    Rayleigh quotient are ~1e-7 in our tests and bench.
    Defaults: rtol = 0.01, δ = 1e-9, b = 16: 8192 × 28672 takes 20 block steps (~5 s on 2 cores).

The max over a convolution's kernel positions (conv_kernel_norm)
    is the max of the slices' brackets. eigvalsh runs on the slice that power steps rank first; a slice whose
    upper is certified below the best lower so far by a Cholesky factorization of t·I − G (a quarter of eigvalsh's
    work; `_below` states the proof) is skipped, since it changes none of the three maxima: the same bits as
    eigvalsh on every slice, ~40% less time on 9 slices of 512 x 512 (issue 21, ResNet-50's 3x3 convolutions).

Degenerate shapes (no eigensolver)
    A matrix with one row or one column has σ_max = its Euclidean norm (a 1 × 1 matrix: |w|). A depthwise or
    grouped convolution is tens of thousands of such slices; they are reduced in one vectorised float64 pass:
    the sum of N squares has relative error ≤ γ_{N+1} (each square and the sum), the square root adds u, so
    σ ∈ [√(s(1 − γ))(1 − u), √(s(1 + γ))(1 + u)] for the computed sum s.

Threads
    Every norm is computed in one thread. Measured on 2 cores with other processes competing (load ~6), a batch
    of 300 Gram matrices of 96 × 96 took 0.34 s in eigvalsh with one thread and 7.9 s with two (9 of 384 × 384:
    0.22 s vs 4.1 s); block Lanczos on 4096 × 11008 took 12.6 s / 11.7 s in one thread and 30.4 s / 23.6 s in
    two (load 14). A second thread only helps on an idle machine, and a thread count chosen from the load would
    make the output depend on it: block Lanczos's float32 products round differently with one and two threads
    (1e-10 relative, measured), and a CI gate needs the same bytes from the same inputs.

Each distinct tensor is computed once: results are remembered by storage, offset, shape, stride, dtype and
version counter (so an in-place update recomputes), holding the tensor so that its memory cannot be reused by
another one while it is remembered; bounded to _MEMO_BYTES of tensors.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

__all__ = ["NormEstimate", "spectral_norm", "exact_spectral_norm", "lanczos_spectral_norm", "conv_kernel_norm",
           "spectral_norms_batched", "failure_probability", "lanczos_steps", "EXACT_MAX_SIDE"]

EXACT_MAX_SIDE = 2048
RTOL, DELTA, BLOCK = 1e-2, 1e-9, 16
_EXACT_BATCH_BYTES = 1 << 29  # Gram matrices per chunk of a batched exact computation (512 MB)
_VERIFY_ROWS = 32  # rows summed in float32 before float64 accumulation in the lower-bound check
_GRAM_BLOCK_BYTES = 1 << 20  # rows of W per block of _gram_product: 1 MB stays in a core's L2 cache
_MEMO_BYTES = 1 << 26  # tensors whose norms are remembered (module docstring: each tensor computed once)
_SKIP_MIN_SIDE = 64  # conv stacks of smaller slices: eigvalsh on all costs less than the certificates


@dataclass(frozen=True)
class NormEstimate:
    value: float
    lower: float
    upper: float
    method: str
    confidence: float = 1.0  # probability that upper >= σ_max (1.0: deterministic)


def _unit(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _gamma(n: int, u: float) -> float:
    """Higham's γ_n = n u / (1 − n u): the relative error bound of an n-term sum of products, any order."""
    nu = n * u
    return nu / (1 - nu) if nu < 0.5 else math.inf


def _as_matrix(matrix: torch.Tensor) -> torch.Tensor:
    w = matrix.detach()
    return w.reshape(w.shape[0], -1) if w.dim() != 2 else w


# ----------------------------------------------------------------------------------------------- exact
def exact_spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value via the float64 Gram matrix on the smaller side."""
    return _exact_stack(_as_matrix(matrix).unsqueeze(0))[0].value


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads (at most the current number), then restore it."""
    threads = torch.get_num_threads()
    if count >= threads:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _one_thread() -> contextlib.AbstractContextManager[None]:
    """LAPACK's eigensolvers and small work in one thread (module docstring: they collapse under load)."""
    return _threads(1)


def _large_work_threads() -> contextlib.AbstractContextManager[None]:
    """Large products (block Lanczos, big Gram matrices) also run in one thread: deterministic output whatever
    the load (module docstring: Threads)."""
    return _one_thread()


def _require_finite(stack: torch.Tensor) -> None:
    """Raise on NaN or Inf entries: min and max propagate NaN and show ±Inf (one pass, no boolean copy)."""
    if not all(map(math.isfinite, map(float, torch.aminmax(stack)))):
        from .errors import ModnormError

        shape = " x ".join(map(str, stack.shape[-2:]))
        raise ModnormError(f"a {shape} weight matrix has non-finite weights (NaN or Inf): its norm is undefined",
                           "find where the weights diverged (training, a checkpoint, the initialisation) and "
                           "analyse finite ones")


def _vector_brackets(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed form for matrices with one row or one column: σ_max = the Euclidean norm (module docstring)."""
    w = stack.detach().reshape(stack.shape[0], -1).to(torch.float64)
    squares = w.square().sum(1)
    u = _unit(torch.float64)
    gamma = _gamma(w.shape[1] + 1, u)
    return squares.sqrt(), (squares * (1 - gamma)).sqrt() * (1 - u), (squares * (1 + gamma)).sqrt() * (1 + u)


def _gram_chunks(stack: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float64 Gram matrices on the smaller side, squared Frobenius norms) of a stack, chunk by chunk."""
    batch, rows, cols = stack.shape
    per_chunk = max(1, _EXACT_BATCH_BYTES // (8 * (min(rows, cols) ** 2 + rows * cols)))
    for start in range(0, batch, per_chunk):
        # contiguous: a conv's slices are a strided view, and the Gram product of a dense copy is faster
        w = stack[start:start + per_chunk].detach().to(torch.float64, memory_format=torch.contiguous_format)
        yield (w @ w.transpose(1, 2) if rows <= cols else w.transpose(1, 2) @ w), w.square().sum((1, 2))


def _margin(top: torch.Tensor, frob2: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """m = γ_N ‖W‖_F² (1 + γ) + n u |λ| (module docstring: exact path)."""
    u = _unit(torch.float64)
    return _gamma(max(rows, cols), u) * frob2 * (1 + _gamma(rows * cols, u)) + min(rows, cols) * u * top.abs()


def _gram_brackets(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value, lower, upper) of each matrix by float64 Gram eigvalsh, in chunks (module docstring: margin m)."""
    _, rows, cols = stack.shape
    parts = []
    for gram, frob2 in _gram_chunks(stack):
        with _one_thread():
            top = torch.linalg.eigvalsh(gram)[:, -1]
        margin = _margin(top, frob2, rows, cols)
        parts.append((top.clamp(min=0).sqrt(), (top - margin).clamp(min=0).sqrt(), (top.clamp(min=0) + margin).sqrt()))
    return tuple(torch.cat(column) for column in zip(*parts))  # type: ignore[return-value]


def _stack_brackets(stack: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], str]:
    """Vectorised (value, lower, upper) of every matrix of a non-empty (B, rows, cols) stack, and the method.
    In one thread (module docstring: Threads)."""
    _, rows, cols = stack.shape
    with _one_thread():
        _require_finite(stack)
        if min(rows, cols) == 1:
            return _vector_brackets(stack), "exact (one row or column: Euclidean norm)"
        return _gram_brackets(stack), "exact (float64 Gram eigvalsh)"


def _exact_stack(stack: torch.Tensor) -> list[NormEstimate]:
    """Exact bracket for each matrix of a (B, rows, cols) stack."""
    if stack.numel() == 0:
        return [NormEstimate(0.0, 0.0, 0.0, "empty")] * stack.shape[0]
    (value, lower, upper), method = _stack_brackets(stack)
    return [NormEstimate(v, lo, up, method) for v, lo, up in zip(value.tolist(), lower.tolist(), upper.tolist())]


# ----------------------------------------------------------------------------------------------- fast
def failure_probability(n: int, steps: int, epsilon: float, block: int = 1) -> float:
    """δ(n, k, b, ε) of the module docstring: P(θ_k < (1 − ε) λ_max) for k block steps from a Gaussian n × b
    start, any PSD n × n matrix (n ≥ 3)."""
    if n < 3:
        raise ValueError("the bound needs n >= 3")
    x = (2 * steps - 1) * math.atanh(math.sqrt(epsilon))
    log_sinh = x + math.log1p(-math.exp(-2 * x)) - math.log(2)
    log_beta = math.lgamma(block / 2) + math.lgamma((n - 1) / 2) - math.lgamma((n - 1 + block) / 2)
    log_p = math.log(2 / block) - block * log_sinh - log_beta
    return math.exp(min(log_p, 0.0))


def lanczos_steps(n: int, epsilon: float, delta: float, block: int = 1) -> int:
    """The smallest number of block steps k with δ(n, k, b, ε) ≤ δ."""
    steps = 1
    while failure_probability(n, steps, epsilon, block) > delta:
        steps += 1
    return steps


def _orthonormal(z: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """An orthonormal basis of z's columns, orthogonal to `basis` (classical Gram–Schmidt twice, then QR twice).
    Directions of z already in the basis come out as noise: still orthonormal, so harmless to Rayleigh–Ritz."""
    for _ in range(2):
        if basis is not None:
            z = z - basis @ (basis.T @ z)
            z = z - basis @ (basis.T @ z)
        z = torch.linalg.qr(z).Q
    return z


def _frobenius_upper(w: torch.Tensor) -> float:
    """‖W‖_F rounded up: row norms in the work precision (γ_cols each, all terms ≥ 0), summed in float64."""
    rows2 = torch.linalg.vector_norm(w, dim=1).to(torch.float64).square()
    total = float(rows2.sum())
    slack = (1 + _gamma(w.shape[1] + 2, _unit(w.dtype))) * (1 + _gamma(w.shape[0] + 2, _unit(torch.float64)))
    return math.sqrt(total * slack) * (1 + 4 * _unit(torch.float64))


def _certified_rayleigh(w: torch.Tensor, u: torch.Tensor, frobenius: float) -> float:
    """A deterministic lower bound on ‖Wᵀ u‖ / ‖u‖ ≤ σ_max: chunks of _VERIFY_ROWS rows in w's precision, the chunk
    sums added in float64, minus the rounding bound (γ_c + γ_chunks) ‖W‖_F ‖u‖."""
    rows, cols = w.shape
    u = u.to(w.dtype)  # the test vector is whatever we round it to: its quotient is still ≤ σ_max
    c = _VERIFY_ROWS
    full = rows - rows % c
    parts = []
    if full:
        parts.append(torch.bmm(u[:full].view(-1, 1, c), w[:full].view(-1, c, cols)).squeeze(1).to(torch.float64))
    if full < rows:
        parts.append((u[full:] @ w[full:]).to(torch.float64).unsqueeze(0))
    image = torch.cat(parts).sum(0)
    u64 = u.to(torch.float64)
    u_norm = float(u64.norm()) * (1 + _gamma(rows + 2, _unit(torch.float64)))
    if u_norm == 0.0:
        return 0.0
    chunks = (rows + c - 1) // c
    error = (_gamma(c, _unit(w.dtype)) * (1 + _gamma(chunks, _unit(torch.float64)))
             + _gamma(chunks, _unit(torch.float64))) * frobenius * u_norm
    norm = float(image.norm()) * (1 - _gamma(cols + 2, _unit(torch.float64)))
    return max(norm - error, 0.0) / u_norm * (1 - 2 * _unit(torch.float64))


def _exact_in_float32(w: torch.Tensor) -> bool:
    """True when every entry of a float64 matrix is a float32 number (checked a block of rows at a time)."""
    for start in range(0, w.shape[0], 1024):
        block = w[start:start + 1024]
        if not torch.equal(block.float().double(), block):
            return False
    return True


def _gram_product(tall: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """tallᵀ tall q in one pass over `tall` (rows ≥ cols, contiguous): Σ_i A_iᵀ (A_i q) over blocks A_i of rows,
    each block still in cache for its second product. Block Lanczos is bound by memory bandwidth: two passes
    (W q, then Wᵀ y) took 115–130 ms per step on 4096 x 11008 float32, this one 51 ms (one thread, measured).
    Sums over a block's rows are then in tall's precision and the blocks' sums accumulated in it: fewer terms
    per rounded sum than one product over all rows, so within the η of the module docstring."""
    rows, cols = tall.shape
    step = max(8, _GRAM_BLOCK_BYTES // max(1, cols * tall.element_size()))
    q = q.to(tall.dtype)
    total = torch.zeros(q.shape[1], cols, dtype=tall.dtype)
    for start in range(0, rows, step):
        block = tall[start:start + step]
        total.addmm_((block @ q).T, block)
    return total.T.to(torch.float64)


def lanczos_spectral_norm(matrix: torch.Tensor, rtol: float = RTOL, delta: float = DELTA, block: int = BLOCK,
                          seed: int = 0) -> NormEstimate:
    """σ_max of a large matrix by randomized block Lanczos (see _lanczos), in one thread on a busy machine."""
    with _large_work_threads():
        return _lanczos(matrix, rtol, delta, block, seed)


def _lanczos(matrix: torch.Tensor, rtol: float = RTOL, delta: float = DELTA, block: int = BLOCK,
             seed: int = 0) -> NormEstimate:
    """σ_max of a large matrix by randomized block Lanczos on its Gram matrix (module docstring: the proof).

    `upper` ≤ value·(1 + rtol)·(1 + η/2) always; upper ≥ σ_max with probability ≥ 1 − delta (unless the
    Frobenius cap, deterministic, is the smaller); `lower` ≤ σ_max always. Falls back to the exact path when the
    Krylov space would be as large as the matrix."""
    w = _as_matrix(matrix)
    if w.dtype == torch.float64 and _exact_in_float32(w):
        w = w.float()  # e.g. a bf16 checkpoint widened to float64: the same matrix, half the work and memory
    elif w.dtype != torch.float64:
        w = w.float()
    rows, cols = w.shape
    if not (w.is_contiguous() or rows < cols and w.T.is_contiguous()):  # (a wide checkpoint matrix comes
        w = w.contiguous()  # stored transposed, weights.Checkpoint.load: its tall side is already contiguous)
    n = min(rows, cols)
    if w.numel() == 0:
        return NormEstimate(0.0, 0.0, 0.0, "empty")
    _require_finite(w)
    frobenius = _frobenius_upper(w)
    if frobenius == 0.0:
        return NormEstimate(0.0, 0.0, 0.0, "zero matrix (Frobenius norm 0)")
    epsilon = 1 - 1 / (1 + rtol) ** 2
    block = max(1, min(block, n // 8))
    steps = lanczos_steps(n, epsilon, delta, block) if n >= 3 else n
    if n < 3 or 2 * steps * block > n:
        estimate = _exact_stack(w.unsqueeze(0))[0]
        return NormEstimate(estimate.value, estimate.lower, estimate.upper,
                            estimate.method + " (the Krylov space would be as large as the matrix)")
    tall = w if rows >= cols else w.T.contiguous()  # G = tallᵀ tall on the smaller side (see _gram_product)
    gram = functools.partial(_gram_product, tall)

    generator = torch.Generator().manual_seed(seed)
    q_all = torch.empty(n, steps * block, dtype=torch.float64)  # the orthonormal basis, block by block
    g_all = torch.empty_like(q_all)  # G times it
    q_all[:, :block] = _orthonormal(torch.randn(n, block, generator=generator, dtype=torch.float64), None)
    for step in range(steps):
        done = slice(step * block, (step + 1) * block)
        g_all[:, done] = gram(q_all[:, done])
        if step + 1 < steps:
            q_all[:, done.stop:done.stop + block] = _orthonormal(g_all[:, done], q_all[:, :done.stop])
    projected = q_all.T @ g_all
    with _one_thread():
        values, vectors = torch.linalg.eigh((projected + projected.T) / 2)
    theta = max(float(values[-1]), 0.0)
    ritz = q_all @ vectors[:, -1]
    test = tall @ ritz.to(tall.dtype)  # σ_max ≥ ‖tallᵀ u‖/‖u‖ for any u
    lower = min(_certified_rayleigh(tall, test, frobenius), frobenius)
    value = max(math.sqrt(theta), lower)
    eta = 1e-10 if w.dtype == torch.float64 else 1e-4
    randomized = math.sqrt(max(theta, lower * lower) * (1 + eta) / (1 - epsilon))
    method = f"block lanczos (b={block}, {steps} steps)"
    if frobenius <= randomized:
        return NormEstimate(min(value, frobenius), lower, frobenius, method + ", upper = Frobenius (deterministic)")
    return NormEstimate(value, lower, randomized,
                        method + f": upper holds with probability >= 1 - {delta:g} (rtol {rtol:g})", 1 - delta)


# ----------------------------------------------------------------------------------------------- public
def spectral_norm(matrix: torch.Tensor, method: str = "auto", rtol: float = RTOL, delta: float = DELTA,
                  block: int = BLOCK, seed: int = 0) -> NormEstimate:
    """The spectral norm of a matrix (reshaped to 2-D) with its bracket: exact when the smaller side is at most
    EXACT_MAX_SIDE (or method="exact"), else randomized block Lanczos (or method="fast")."""
    if method not in ("auto", "exact", "fast"):
        raise ValueError(f"method must be auto, exact or fast, not {method!r}")
    w = _as_matrix(matrix)
    if w.numel() == 0:
        return NormEstimate(0.0, 0.0, 0.0, "empty")
    if method == "exact" or (method == "auto" and min(w.shape) <= EXACT_MAX_SIDE):
        return _remembered(matrix, ("exact",), lambda: _exact_stack(w.unsqueeze(0))[0])
    return _remembered(matrix, ("fast", rtol, delta, block, seed),
                       lambda: lanczos_spectral_norm(w, rtol, delta, block, seed))


_memo: OrderedDict[tuple, tuple[torch.Tensor, object]] = OrderedDict()
_memo_lock = threading.Lock()


def _identity(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same values without reading them: storage, view and version (in-place
    updates bump the version counter)."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
            tensor.dtype, tensor._version)


def _remembered(tensor: torch.Tensor, how: tuple, compute: Callable[[], object]) -> object:
    """`compute()` once per distinct tensor (module docstring); meta, sparse and odd tensors are not remembered."""
    if tensor.is_meta or tensor.layout != torch.strided or tensor.device.type != "cpu":
        return compute()
    key = (_identity(tensor), how)
    with _memo_lock:  # weightstore.NormsAhead computes norms on a helper thread
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key][1]
    result = compute()
    with _memo_lock:
        _memo[key] = (tensor.detach(), result)  # holding it keeps its address from being reused by another tensor
        total = sum(t.untyped_storage().nbytes() for t, _ in _memo.values())
        while len(_memo) > 1 and total > _MEMO_BYTES:
            _, (oldest, _) = _memo.popitem(last=False)
            total -= oldest.untyped_storage().nbytes()
    return result


def spectral_norms_batched(stack: torch.Tensor, method: str = "auto", **options: float) -> list[NormEstimate]:
    """Norms of equally shaped matrices (B, rows, cols): batched float64 eigvalsh when exact (in chunks of at most
    512 MB of Gram matrices), else one block Lanczos per matrix."""
    if stack.dim() != 3:
        raise ValueError("expected a (batch, rows, cols) stack")
    if method == "exact" or (method == "auto" and min(stack.shape[1:]) <= EXACT_MAX_SIDE):
        return _exact_stack(stack)
    return [spectral_norm(m, method, **options) for m in stack]


def conv_kernel_norm(slices: torch.Tensor) -> NormEstimate:
    """max over kernel positions of the spectral norm of weight[:, :, ...] given as (out, in, positions)."""
    if not slices.numel():
        return NormEstimate(0.0, 0.0, 0.0, "empty")
    return _remembered(slices, ("conv",), lambda: _largest(slices.permute(2, 0, 1)))


def _largest(stack: torch.Tensor) -> NormEstimate:
    """The bracket of max_i σ_max(stack[i]): the max of the values, of the lowers and of the uppers."""
    if min(stack.shape[1:]) > EXACT_MAX_SIDE:
        estimates = [spectral_norm(m) for m in stack]
        top = max(estimates, key=lambda e: e.upper)
        return NormEstimate(max(e.value for e in estimates), max(e.lower for e in estimates), top.upper,
                            top.method, min(e.confidence for e in estimates))
    if stack.shape[0] > 1 and min(stack.shape[1:]) >= _SKIP_MIN_SIDE:
        with _one_thread():
            _require_finite(stack)
            return _largest_skipping(stack)
    (value, lower, upper), method = _stack_brackets(stack)
    return NormEstimate(float(value.max()), float(lower.max()), float(upper.max()), method)


# ----------------------------------------------------------------------------------------------- conv: max of many
def _largest_skipping(stack: torch.Tensor) -> NormEstimate:
    """`_largest` of a stack of Gram-path matrices, bit for bit, with eigvalsh run only where it can matter: the
    max of the brackets is the bracket of the slice with the largest λ, and a slice whose would-be upper is
    certified below that slice's lower (`_below`: a Cholesky factorization, ~1/4 of eigvalsh's work) changes
    none of the three maxima. Slices are visited largest first by a few power steps (an ordering only)."""
    _, rows, cols = stack.shape
    best = None  # (value, lower², lower, upper) maxima over the computed slices, lower² as _gram_brackets rounds it
    for gram, frob2 in _gram_chunks(stack):
        for index in _by_estimate(gram):
            if best is not None and _below(gram[index], float(frob2[index]), rows, cols, best[1]):
                continue
            with _one_thread():
                top = torch.linalg.eigvalsh(gram[index:index + 1])[:, -1]
            margin = _margin(top, frob2[index:index + 1], rows, cols)
            floor = (top - margin).clamp(min=0)
            positive = top.clamp(min=0)
            found = tuple(map(float, (positive.sqrt(), floor, floor.sqrt(), (positive + margin).sqrt())))
            best = found if best is None else tuple(map(max, best, found))
    value, _, lower, upper = best
    return NormEstimate(value, lower, upper, "exact (float64 Gram eigvalsh)")


def _by_estimate(gram: torch.Tensor, steps: int = 8) -> list[int]:
    """Indices of a Gram stack, largest λ_max first by Rayleigh quotients after a few power steps."""
    v = torch.ones(gram.shape[0], gram.shape[1], 1, dtype=gram.dtype)
    for _ in range(steps):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-300)
    rayleigh = (v.transpose(1, 2) @ gram @ v).flatten()
    return sorted(range(gram.shape[0]), key=lambda index: -float(rayleigh[index]))


def _below(gram: torch.Tensor, frob2: float, rows: int, cols: int, target: float) -> bool:
    """True when the upper² that _gram_brackets would round for this Gram matrix, fl(λ̂⁺ + m), is certified below
    `target` (the best lower² so far: fl(√·) is monotone, so its upper ≤ that lower ≤ every maximum).

    t·I − G factored by Cholesky: success gives R̂ᵀR̂ = A + ΔA, |ΔA| ≤ γ_{n+1}|R̂ᵀ||R̂| (Higham, Thm 10.3; we take
    γ_{2n+2} for blocked LAPACK), so A + ΔA ⪰ 0 and λ_max(G) ≤ t + |rounding of A's diagonal| + γ‖R̂‖_F². eigvalsh
    returns λ̂ ≤ λ_max(G) + n u ‖G‖₂ (the exact path's assumption), ‖G‖₂ ≤ ‖G‖_F; m is _margin's, with |λ̂| ≤
    ‖G‖_F (1 + n u). G is the lower triangle mirrored, as eigvalsh and Cholesky both read it (a float64 Gram
    product need not be exactly symmetric). Every sum is rounded up by a few u."""
    if not target > 0:
        return False
    n, u = gram.shape[0], _unit(torch.float64)
    t = target * (1 - 1e-6)
    shifted = -gram
    shifted.diagonal().add_(t)
    with _one_thread():
        factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        return False
    up = 1 + 8 * u
    factor2 = float(factor.square().sum()) * (1 + _gamma(n * n + 1, u)) * up
    diagonal = float((t - gram.diagonal()).abs().max()) * up
    lam = (t + u * diagonal + _gamma(2 * n + 2, u) * factor2) * up
    # ‖·‖_F of the matrix both LAPACK calls read (the lower triangle, mirrored), diagonal counted twice: an upper bound
    norm_f = math.sqrt(2 * float(gram.tril().square().sum()) * (1 + _gamma(n * n + 1, u))) * up
    top = (lam + n * u * norm_f) * up
    margin = (_gamma(max(rows, cols), u) * frob2 * (1 + _gamma(rows * cols, u)) + n * u * norm_f * (1 + 2 * n * u)) * up
    return (max(top, 0.0) + margin) * up < target

