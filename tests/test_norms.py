"""Operator norms: lower <= σ_max <= upper, against float64 SVD (an independent computation)."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modnorm.norms import conv_kernel_norm, failure_probability, lanczos_steps, spectral_norm, spectral_norms_batched


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


def test_lanczos_steps_are_the_fewest_that_meet_delta():
    n, eps, delta, block = 8192, 1e-2, 1e-6, 4
    k = lanczos_steps(n, eps, delta, block)
    assert failure_probability(n, k, eps, block) <= delta < failure_probability(n, k - 1, eps, block)


@pytest.mark.parametrize("n", [10, 300, 8192])
@pytest.mark.parametrize("steps", [3, 10, 40])
def test_single_vector_bound_is_at_most_kuczynski_wozniakowski(n, steps):
    """Independent source: Kuczyński & Woźniakowski (1992) Thm 4.2(a), P ≤ 1.648 √n e^{−√ε (2k − 1)}."""
    eps = 0.02
    published = 1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * steps - 1))
    assert failure_probability(n, steps, eps, 1) <= min(published, 1.0) * (1 + 1e-9)


def test_failure_probability_bounds_the_observed_failure_rate():
    """Monte Carlo: Krylov runs on a crowded spectrum (λ₁ = 1, the rest just below 1 − ε) from random starts
    miss (1 − ε) λ₁ no more often than δ(n, k, b, ε) says (plus 4 standard errors of sampling)."""
    n, eps, steps, block, trials = 40, 0.05, 3, 1, 2000
    g = torch.Generator().manual_seed(7)
    spectrum = torch.cat([torch.ones(1), torch.linspace(0.0, 1 - eps - 1e-3, n - 1)]).double()
    misses = 0
    for _ in range(trials):
        x = torch.randn(n, block, generator=g, dtype=torch.float64)
        krylov = torch.cat([spectrum[:, None] ** j * x for j in range(steps)], 1)
        q = torch.linalg.qr(krylov).Q
        theta = float(torch.linalg.eigvalsh(q.T @ (spectrum[:, None] * q))[-1])
        misses += theta < 1 - eps
    rate, bound = misses / trials, failure_probability(n, steps, eps, block)
    assert 0 < rate <= bound + 4 * math.sqrt(bound * (1 - bound) / trials)


def test_fast_upper_is_tight_and_says_how_it_holds():
    g = torch.Generator().manual_seed(8)
    w = torch.randn(600, 2500, generator=g) / 50
    estimate = spectral_norm(w, method="fast", rtol=0.01, delta=1e-9, block=8)
    truth = exact(w)
    assert estimate.lower <= truth <= estimate.upper <= truth * 1.01 * (1 + 1e-4)
    assert estimate.confidence == pytest.approx(1 - 1e-9) and "probability" in estimate.method
    assert spectral_norm(w, method="exact").confidence == 1.0


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 120), cols=st.integers(1, 120), spike=st.floats(0, 50), seed=st.integers(0, 999),
       method=st.sampled_from(["exact", "fast"]))
def test_bracket_property(rows, cols, spike, seed, method):
    w = spiked(rows, cols, spike, seed)
    estimate = spectral_norm(w, method=method)
    truth = exact(w)
    assert estimate.lower <= truth * (1 + 1e-10) + 1e-12 and truth <= estimate.upper * (1 + 1e-12) + 1e-12


# ------------------------------------------------------------------------------------ degenerate shapes, reuse
@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (1, 5000)])
def test_one_row_or_column_is_its_euclidean_norm_with_a_bracket(shape):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    estimate = spectral_norm(w)
    truth = exact(w)
    assert estimate.lower <= truth <= estimate.upper and estimate.upper / estimate.lower < 1 + 1e-9
    assert "Euclidean" in estimate.method


def test_depthwise_kernel_is_the_largest_absolute_entry():
    """A depthwise 7x7 conv over 640 channels: 31 360 one-by-one slices, whose norms are |w| (no eigensolver)."""
    w = torch.randn(1, 1, 640 * 49, generator=torch.Generator().manual_seed(8))
    estimate = conv_kernel_norm(w)
    largest = float(w.abs().max())  # |w| of a 1 x 1 matrix, exact in float64
    assert estimate.lower <= largest <= estimate.upper and estimate.upper / largest < 1 + 1e-12


def test_channel_multiplier_slices_are_column_norms():
    w = torch.randn(4, 1, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(9))  # 4 out per group
    assert conv_kernel_norm(w).value == pytest.approx(float(w.norm(dim=0).max()), rel=1e-14)


def test_the_same_tensor_is_computed_once_and_again_after_an_in_place_update(monkeypatch):
    import modnorm.norms as norms

    calls = []
    original = norms._exact_stack
    monkeypatch.setattr(norms, "_exact_stack", lambda stack: calls.append(1) or original(stack))
    w = torch.randn(40, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    first = spectral_norm(w)
    assert spectral_norm(w.detach()) == first and spectral_norm(w.view(40, 60)) == first and len(calls) == 1
    w.mul_(2)  # same storage, new values: the version counter moves on
    assert spectral_norm(w).value == pytest.approx(2 * first.value, rel=1e-12) and len(calls) == 2


def test_threads_are_restored_after_the_eigensolver():
    before = torch.get_num_threads()
    spectral_norms_batched(torch.randn(3, 20, 20))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method", ["exact", "fast"])
def test_non_finite_weights_are_a_clear_error_not_an_eigensolver_failure(bad, method):
    from modnorm.errors import ModnormError

    w = torch.randn(64, 64)
    w[3, 4] = bad
    with pytest.raises(ModnormError, match="non-finite weights"):
        spectral_norm(w, method=method)


def test_large_work_runs_in_one_thread_so_the_output_does_not_depend_on_load(monkeypatch):
    """A thread count chosen from the load average would change the rounding of Lanczos's products."""
    import modnorm.norms as norms

    seen = []
    original = norms._lanczos
    monkeypatch.setattr(norms, "_lanczos", lambda *a: seen.append(torch.get_num_threads()) or original(*a))
    before = torch.get_num_threads()
    norms.lanczos_spectral_norm(torch.randn(300, 400))
    assert seen == [1] and torch.get_num_threads() == before


# ---------------------------------------------------------------------- conv stacks: eigvalsh only where it matters
def _every_slice(stack):
    """The max of the brackets with eigvalsh on every slice (the plain exact path)."""
    import modnorm.norms as norms

    (value, lower, upper), _ = norms._stack_brackets(stack)
    return float(value.max()), float(lower.max()), float(upper.max())


def _kernel(out, inp, positions, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(1.0, spread, positions)[:, None, None]
    return (torch.randn(positions, out, inp, generator=g) * scales / math.sqrt(inp)).permute(1, 2, 0)


@pytest.mark.parametrize("slices", [
    _kernel(96, 64, 9, 0), _kernel(64, 200, 9, 1), _kernel(128, 128, 4, 2, spread=1.0001),  # near ties
    torch.randn(64, 64, 1, generator=torch.Generator().manual_seed(3)).expand(64, 64, 5).contiguous(),  # equal
    torch.zeros(64, 64, 9),
])
def test_conv_norm_skipping_slices_gives_the_same_bits(slices):
    estimate = conv_kernel_norm(slices.clone())  # a new tensor: not remembered from another test
    assert (estimate.value, estimate.lower, estimate.upper) == _every_slice(slices.permute(2, 0, 1))


def test_conv_norm_runs_eigvalsh_on_fewer_slices_when_one_dominates(monkeypatch):
    import modnorm.norms as norms

    calls = []
    original = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda g: calls.append(g.shape[0]) or original(g))
    slices = _kernel(128, 96, 9, 4, spread=1.5)
    estimate = conv_kernel_norm(slices)
    assert sum(calls) < 9 and estimate.value == pytest.approx(max(exact(slices[:, :, p]) for p in range(9)), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_a_skipped_slice_would_have_an_upper_below_the_target(seed):
    """_below's certificate against the quantity it bounds: the upper² the plain path rounds for that slice."""
    import modnorm.norms as norms

    w = torch.randn(1, 80, 120, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    gram, frob2 = next(norms._gram_chunks(w))
    top = torch.linalg.eigvalsh(gram)[:, -1]
    upper2 = float(top.clamp(min=0) + norms._margin(top, frob2, 80, 120))
    for factor in (1.0 + 1e-3, 1.0 + 1e-5, 1.0 - 1e-9, 0.9):
        if norms._below(gram[0], float(frob2[0]), 80, 120, upper2 * factor):
            assert upper2 < upper2 * factor
    assert norms._below(gram[0], float(frob2[0]), 80, 120, upper2 * 1.001)  # a certificate, not always "no"
