"""Operator norms: lower <= σ_max <= upper, against float64 SVD (an independent computation)."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modnorm.norms import conv_kernel_norm, lanczos_steps, spectral_norm, spectral_norms_batched


def exact(w):
    return float(torch.linalg.svdvals(w.double())[0]) if w.numel() else 0.0


def spiked(rows, cols, spike=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64) / math.sqrt(cols)
    u, v = torch.randn(rows, 1, generator=g, dtype=torch.float64), torch.randn(1, cols, generator=g, dtype=torch.float64)
    return w + spike * (u / u.norm()) @ (v / v.norm())


def low_rank(rows, cols, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, cols, generator=g,
                                                                                    dtype=torch.float64)


MATRICES = {
    "gaussian": lambda: torch.randn(300, 500, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
    "spiked": lambda: spiked(400, 250),
    "low-rank": lambda: low_rank(200, 350),
    "tall": lambda: torch.randn(900, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
    "zero": lambda: torch.zeros(30, 70, dtype=torch.float64),
    "float32": lambda: torch.randn(256, 512, generator=torch.Generator().manual_seed(3)),
}


@pytest.mark.parametrize("kind", list(MATRICES))
@pytest.mark.parametrize("method", ["exact", "fast"])
def test_bracket_contains_the_true_norm(kind, method):
    w = MATRICES[kind]()
    estimate = spectral_norm(w, method=method)
    truth = exact(w)
    assert estimate.lower <= truth * (1 + 1e-12) + 1e-12 and truth <= estimate.upper + 1e-12
    assert estimate.value == pytest.approx(truth, rel=1e-4, abs=1e-12)


def test_fast_path_on_a_moderate_matrix_is_within_the_stated_error():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1500, 3000, generator=g) / math.sqrt(3000)  # Gaussian: crowded top singular values
    estimate = spectral_norm(w, method="fast")
    truth = exact(w)
    assert abs(estimate.value - truth) / truth < 1e-3
    assert estimate.lower <= truth <= estimate.upper and estimate.upper / truth < 1.011  # √(1/(1-ε)) = 1.0102
    assert "lanczos" in estimate.method


def test_batched_equals_one_by_one():
    stack = torch.randn(5, 20, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    batched = spectral_norms_batched(stack)
    assert [b.value for b in batched] == pytest.approx([exact(m) for m in stack], rel=1e-12)


def test_conv_kernel_norm_is_the_max_over_positions():
    w = torch.randn(8, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert conv_kernel_norm(w).value == pytest.approx(max(exact(w[:, :, p]) for p in range(9)), rel=1e-12)


def test_lanczos_steps_follow_the_probability_bound():
    """1.648 √n e^{−√ε(2k−1)} ≤ δ at the chosen k and not at k − 1."""
    n, eps, delta = 8192, 1e-2, 1e-6
    k = lanczos_steps(n, eps, delta)
    bound = lambda steps: 1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * steps - 1))  # noqa: E731
    assert bound(k) <= delta < bound(k - 1)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 120), cols=st.integers(1, 120), spike=st.floats(0, 50), seed=st.integers(0, 999),
       method=st.sampled_from(["exact", "fast"]))
def test_bracket_property(rows, cols, spike, seed, method):
    w = spiked(rows, cols, spike, seed)
    estimate = spectral_norm(w, method=method)
    truth = exact(w)
    assert estimate.lower <= truth * (1 + 1e-10) + 1e-12 and truth <= estimate.upper * (1 + 1e-12) + 1e-12
