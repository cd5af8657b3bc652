"""Sharpness (α, β, γ), the loss constants and the gradient Lipschitz bound (docs/theory/sharpness.md).

Three kinds of evidence, none of them the code's own output:
1. hand derivations with the paper's combinators (composition, concatenation and scalar multiples,
   atoms and bonds: docs/theory/sharpness.md), written beside each test;
2. the closed forms for residual stacks (docs/theory/sharpness.md#residual-limit), for L = 1 … 1024;
3. autograd: second derivatives measured with nested `torch.func.jvp` along directions normalised in the modular
   norm (random, then improved by gradient ascent) never exceed the certified bound; the tightness is printed.
"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

import modnorm
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "fixtures"))
from _modula_atoms import Linear as Scaled  # noqa: E402  (Modula's Linear: natural norm exactly 1)

# max |tanh''| = 4/(3√3) = 0.76980036 at tanh x = 1/√3, rounded up to 5 digits as a bound must be; the tests below
# check the combinator recursions (§e.2, §e.6) to 1e-9, so they take the bound at its rounded value.
TANH_CURVATURE = 0.76981
assert 4 / (3 * math.sqrt(3)) <= TANH_CURVATURE < 4 / (3 * math.sqrt(3)) + 1e-5


def orthogonal_linear(fan_out, fan_in, bias=False):
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    nn.init.orthogonal_(layer.weight)
    return layer


class Chain(nn.Module):
    def __init__(self, *ops):
        super().__init__()
        self.ops = nn.ModuleList(op for op in ops if isinstance(op, nn.Module))
        self.calls = ops

    def forward(self, x):
        for op in self.calls:
            x = op(x)
        return x


class Stack(nn.Module):
    """L residual blocks around f = tanh ∘ Linear, with (1 - 1/L, 1/L) multipliers or without any."""

    def __init__(self, depth, width=8, scaled=True):
        super().__init__()
        self.fcs = nn.ModuleList(orthogonal_linear(width, width) for _ in range(depth))
        self.depth, self.scaled = depth, scaled

    def forward(self, x):
        for fc in self.fcs:
            branch = torch.tanh(fc(x))
            x = (1 - 1 / self.depth) * x + (1 / self.depth) * branch if self.scaled else x + branch
        return x


def triple(model, x, **options):
    sharp = modnorm.analyze(model, x, **options).network.sharpness
    return sharp.alpha, sharp.beta, sharp.gamma


# ------------------------------------------------------------------------------------ 1. hand derivations
def test_composition_of_two_linear_atoms():
    """§e.2 with M1 = M2 = Linear (0, 1, 0), masses 1:1 (μ1 = μ2 = 1/2), s1 = s2 = 1:
    α = μ1²(α1/s2 + γ2/s2²) + 2μ1μ2 β2/s2 + μ2² α2 = 2·¼·1 = 1/2;  β = μ1(β1 + s1γ2/s2) + μ2 s1 β2 = 1;  γ = 0."""
    model = Chain(orthogonal_linear(8, 8), orthogonal_linear(8, 8))
    assert triple(model, torch.randn(2, 8), profile="modula", mass="uniform") == pytest.approx((0.5, 1.0, 0.0))


def test_concatenation_then_add():
    """§e.3: (M1, M2) with μ1 = μ2 = 1/2 gives α = ¼·0 + ¼·0 = 0, β = ½ + ½ = 1, γ = 0; Add is linear (0, 0, 0)."""

    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = orthogonal_linear(8, 8), orthogonal_linear(8, 8)

        def forward(self, x):
            return self.a(x) + self.b(x)

    assert triple(Parallel(), torch.randn(2, 8), profile="modula", mass="uniform") == pytest.approx((0, 1, 0))


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_scalar_multiple_of_a_smooth_module(c):
    """tanh ∘ Linear is (κ, 1 + κ, κ) by §e.2 (μ1 = 1, μ2 = 0, s1 = s2 = 1) with κ = max|tanh''|·√d (§e.4);
    the scalar rule maps (α, β, γ) to (α/|c|, β, |c|γ)."""
    d = 8
    kappa = TANH_CURVATURE * math.sqrt(d)
    model = Chain(orthogonal_linear(d, d), torch.tanh, lambda x: c * x)
    got = triple(model, torch.randn(2, d), profile="modula", mass="uniform")
    assert got == pytest.approx((kappa / c, 1 + kappa, c * kappa), rel=1e-4)


def test_rms_normalization_after_an_atom():
    """RMSDivide is (0, 0, 2/√3) at input RMS 1 (§e.4); after a Linear (§e.2, μ1 = 1, s2 = 1):
    (2/√3, 1 + 2/√3, 2/√3)."""
    k = 2 / math.sqrt(3)
    model = Chain(orthogonal_linear(8, 8), lambda x: F.rms_norm(x, (8,), eps=1e-6))
    got = triple(model, torch.randn(2, 8), profile="modula", mass="uniform")
    assert got == pytest.approx((k, 1 + k, k), rel=1e-6)


def test_loss_constants():
    """Loss constants in the RMS norm of d logits (docs/theory/sharpness.md#loss): cross-entropy
    σ = ‖p - e_c‖₂·√d ≤ √2·√d, τ = ½·d; square loss ½‖y - t‖²_RMS: σ = ‖y - t‖_RMS ≤ ‖y‖ + 1, τ = 1."""
    model = Chain(orthogonal_linear(10, 8), torch.tanh, orthogonal_linear(10, 10))
    x = torch.randn(2, 8)
    xent = modnorm.analyze(model, x, loss="xent").network
    assert (xent.loss.sigma, xent.loss.tau) == pytest.approx((math.sqrt(20), 5.0))
    # tanh ∘ Linear(8 → 10) at σ_max = 1 maps the unit ball into RMS ≤ √(8/10)·1 and tanh does not grow it; the
    # second Linear is orthogonal and square: ‖y‖ ≤ √0.8, so the square loss has σ = √0.8 + 1.
    mse = modnorm.analyze(model, x, loss="mse").network
    assert (mse.loss.sigma, mse.loss.tau) == pytest.approx((math.sqrt(0.8) + 1, 1.0))


def test_gradient_lipschitz_bound_and_safe_step_by_hand():
    """Two orthogonal 8×8 Linear atoms, masses 1:1, Modula's constants: (α, β, γ) = (½, 1, 0) (composition rule,
    test above) and A = 1 (a well-normed chain: each atom moves the output by its share ½). With d = 8 logits,
    cross-entropy has σ = √(2·8) = 4 and τ = 8/2 = 4, so σα + τA² = 4·½ + 4·1 = 6 and the safe step is 1/6; the
    square loss has σ = ‖y‖ + 1 = 2 (orthogonal maps keep the unit ball) and τ = 1: 2·½ + 1 = 2, step ½."""
    model = Chain(orthogonal_linear(8, 8), orthogonal_linear(8, 8))
    x = torch.randn(2, 8)
    xent = modnorm.analyze(model, x, profile="modula", mass="uniform", loss="xent").network.loss
    assert (xent.gradient_lipschitz, xent.safe_step) == pytest.approx((6.0, 1 / 6))
    mse = modnorm.analyze(model, x, profile="modula", mass="uniform", loss="mse").network.loss
    assert (mse.gradient_lipschitz, mse.safe_step) == pytest.approx((2.0, 0.5))


@pytest.mark.parametrize("loss", ["xent", "mse"])
def test_measured_curvature_of_the_loss_stays_below_the_gradient_lipschitz_bound(loss):
    """|D²L[Δw, Δw]| ≤ ‖∇L(w + Δw) − ∇L(w)‖*_M ≤ (σα + τA²) for ‖Δw‖_M = 1: measured by nested jvp of the real
    loss (mean over positions of the per-position loss, the convention of the constants) along random and
    ascended directions at the analysed weights."""
    torch.manual_seed(3)
    model = SMOOTH_MODELS["tanh-mlp"]().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    x = 0.9 * x / rms_max(x)
    analysis = modnorm.analyze(model, x, mass="uniform", loss=loss)
    measure = Measure(model, x, analysis)
    labels = torch.tensor([0, 2, 3])
    target = torch.nn.functional.one_hot(labels, 4).double() * 2 / math.sqrt(4) * 0.5  # ‖t‖_RMS = 1/2 ≤ 1

    def loss_of(params):
        y = measure.f(params, x)
        if loss == "xent":
            return F.cross_entropy(y, labels)
        return 0.5 * (y - target).pow(2).mean(-1).mean()  # ½‖y − t‖²_RMS averaged over positions

    def curvature(d):
        return jvp(lambda p: jvp(loss_of, (p,), (d,))[1], (measure.params,), (d,))[1]

    best = 0.0
    for _ in range(6):
        d = measure.random_direction()
        for _ in range(5):  # gradient ascent on |D²L[Δ, Δ]| within the modular-norm sphere
            best = max(best, abs(float(curvature(d))))
            g = grad(lambda e: curvature(e).abs())(d)
            d = measure.normalise({n: d[n] + 0.5 * g[n] / (g[n].norm() + 1e-30) * d[n].norm()
                                   for n, _, _ in measure.atoms})
    bound = analysis.network.loss.gradient_lipschitz
    print(f"{loss}: measured |D²L| {best:.4g} bound {bound:.4g} tightness {best / bound:.2g}")
    assert 0 < best <= bound * (1 + 1e-9)


# ------------------------------------------------------------------------------------- 2. residual limits
def closed_form(L, alpha_f, beta_f, gamma_f):
    """§e.6: a stack of L blocks (1 - 1/L)x + (1/L)f(x)."""
    return (alpha_f + beta_f * (L - 1) / L + gamma_f * (L - 1) * (2 * L - 1) / (6 * L * L),
            beta_f + gamma_f * (L - 1) / (2 * L), gamma_f)


@pytest.mark.slow  # tens of seconds: CI's second step (pytest -m slow)
def test_scaled_residual_stack_matches_the_closed_form_and_stays_bounded():
    d = 8
    kappa = TANH_CURVATURE * math.sqrt(d)
    f = (kappa, 1 + kappa, kappa)  # tanh ∘ Linear, see test_scalar_multiple_of_a_smooth_module
    alphas = []
    for L in [2 ** k for k in range(11)]:  # 1 … 1024
        got = triple(Stack(L, d), torch.randn(2, d), profile="modula", mass="uniform")
        assert got == pytest.approx(closed_form(L, *f), rel=1e-9, abs=1e-12), L
        alphas.append(got[0])
    limit = f[0] + f[1] + f[2] / 3
    assert all(a <= limit for a in alphas) and alphas[-1] == pytest.approx(limit, rel=1e-3)


def test_unscaled_residual_stack_grows():
    """x + f(x): β and γ grow geometrically with depth; the certified α (whose atom terms use the real input
    bound, which doubles per block) grows too. With the nominal constants (inputs assumed in the unit ball) α
    stays bounded, as docs/theory/sharpness.md#residual-limit notes — the precondition of the composition rule fails there."""
    d = 8
    rows = {L: (triple(Stack(L, d, scaled=False), torch.randn(2, d), mass="uniform"),
                triple(Stack(L, d, scaled=False), torch.randn(2, d), mass="uniform", profile="modula"))
            for L in (2, 4, 8, 16)}
    gammas = [rows[L][0][2] for L in (2, 4, 8, 16)]
    assert all(b / a >= 16 for a, b in zip(gammas, gammas[1:]))  # at least ×2 per added block
    betas = [rows[L][0][1] for L in (2, 4, 8, 16)]
    assert all(b / a >= 4 for a, b in zip(betas, betas[1:]))
    certified_alphas = [rows[L][0][0] for L in (2, 4, 8, 16)]
    assert certified_alphas == sorted(certified_alphas) and certified_alphas[-1] > 10 * certified_alphas[0]
    assert all(rows[L][1][0] < 2.2 for L in rows)


def test_stream_reports_alpha_per_block():
    analysis = modnorm.analyze(Stack(4), torch.randn(2, 8), mass="uniform")
    (stream,) = analysis.streams
    assert len(stream.alphas) == 4 and list(stream.alphas) == sorted(stream.alphas)
    assert stream.alphas[-1] == pytest.approx(analysis.network.sharpness.alpha)


# ---------------------------------------------------------------------------------- 3. autograd measurement
def rms_max(t):
    return t.pow(2).mean(-1).sqrt().max()


class Measure:
    """Second derivatives of a model along weight directions of modular norm 1 and unit input directions."""

    def __init__(self, model, x, analysis):
        self.model, self.x = model, x
        self.params = {k: v.detach() for k, v in model.named_parameters()}
        self.atoms = [(layer.weight, layer.target_norm, layer) for layer in analysis.layers
                      if layer.kind == "Linear" and layer.mass > 0]

    def natural_norm(self, layer, delta):
        fan_out, fan_in = delta.shape
        return abs(layer.scale) * math.sqrt(fan_in / fan_out) * torch.linalg.matrix_norm(delta, 2)

    def normalise(self, direction):
        """Each atom's perturbation at its target: ‖Δw‖_M = max_i ‖Δw_i‖/t_i = 1."""
        out = {k: torch.zeros_like(v) for k, v in self.params.items()}
        for name, target, layer in self.atoms:
            out[name] = direction[name] * (target / self.natural_norm(layer, direction[name]))
        return out

    def random_direction(self):
        return self.normalise({name: torch.randn_like(self.params[name]) for name, _, _ in self.atoms})

    def f(self, params, x):
        return functional_call(self.model, params, (x,))

    def ww(self, d1, d2):
        inner = lambda p: jvp(lambda q: self.f(q, self.x), (p,), (d2,))[1]  # noqa: E731
        return jvp(inner, (self.params,), (d1,))[1]

    def wx(self, d, dx):
        inner = lambda p: jvp(lambda y: self.f(p, y), (self.x,), (dx,))[1]  # noqa: E731
        return jvp(inner, (self.params,), (d,))[1]

    def xx(self, dx1, dx2):
        inner = lambda y: jvp(lambda z: self.f(self.params, z), (y,), (dx2,))[1]  # noqa: E731
        return jvp(inner, (self.x,), (dx1,))[1]

    def alpha(self, trials=4, ascent_steps=6):
        best = 0.0
        for _ in range(trials):
            d = self.random_direction()
            for _ in range(ascent_steps):  # gradient ascent on ‖D²f[Δ, Δ]‖ within the modular-norm sphere
                best = max(best, float(rms_max(self.ww(d, d))))
                g = grad(lambda e: rms_max(self.ww(e, e)))(d)
                d = self.normalise({name: d[name] + 0.5 * g[name] / (g[name].norm() + 1e-30) * d[name].norm()
                                    for name, _, _ in self.atoms})
            best = max(best, float(rms_max(self.ww(d, self.random_direction()))))
        return best

    def unit_input(self):
        dx = torch.randn_like(self.x)
        return dx / rms_max(dx)

    def beta(self, trials=6):
        return max(float(rms_max(self.wx(self.random_direction(), self.unit_input()))) for _ in range(trials))

    def gamma(self, trials=6):
        return max(float(rms_max(self.xx(self.unit_input(), self.unit_input()))) for _ in range(trials))


class PreNormBlock(nn.Module):
    """A smooth normalization inside a residual block: RMSNorm with eps, GELU, 1/L multipliers."""

    def __init__(self, width=8, depth=2):
        super().__init__()
        self.inp = Scaled(width, 6)
        self.norms = nn.ModuleList(nn.RMSNorm(width, eps=0.05) for _ in range(depth))
        self.fcs = nn.ModuleList(Scaled(width, width) for _ in range(depth))
        self.out = Scaled(4, width)
        self.depth = depth

    def forward(self, x):
        x = self.inp(x)
        for norm, fc in zip(self.norms, self.fcs):
            x = (1 - 1 / self.depth) * x + (1 / self.depth) * F.gelu(fc(norm(x)))
        return self.out(x)


SMOOTH_MODELS = {
    "tanh-mlp": lambda: Chain(Scaled(16, 6), torch.tanh, Scaled(16, 16), torch.tanh, Scaled(4, 16)),
    "gelu-mlp-default-init": lambda: Chain(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(),
                                           nn.Linear(16, 4)),
    "residual-1/L": lambda: Chain(Scaled(8, 6), Stack(4, 8), Scaled(4, 8)),
    "residual-unscaled": lambda: Chain(Scaled(8, 6), Stack(3, 8, scaled=False), Scaled(4, 8)),
    "rmsnorm-gelu-residual": lambda: PreNormBlock(),
}


@pytest.mark.parametrize("name", list(SMOOTH_MODELS))
def test_measured_second_derivatives_stay_below_the_certified_triple(name):
    torch.manual_seed(0)
    model = SMOOTH_MODELS[name]().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    x = 0.9 * x / rms_max(x)  # inside the unit ball the bounds assume
    analysis = modnorm.analyze(model, x, mass="uniform")
    sharp = analysis.network.sharpness
    assert sharp.certified, sharp.reason
    measure = Measure(model, x, analysis)
    measured = (measure.alpha(), measure.beta(), measure.gamma())
    bound = (sharp.alpha, sharp.beta, sharp.gamma)
    print(f"{name}: measured {tuple(f'{m:.3g}' for m in measured)} bound {tuple(f'{b:.3g}' for b in bound)} "
          f"tightness {tuple(f'{m / b:.2g}' for m, b in zip(measured, bound))}")
    for m, b in zip(measured, bound):
        assert m <= b * (1 + 1e-9)
    assert measured[0] > 0 and measured[1] > 0  # the measurement is not vacuous


@pytest.mark.parametrize("name", list(SMOOTH_MODELS))
def test_first_order_weight_bound_holds(name):
    """A bounds ‖D_w f[Δw]‖ over ‖Δw‖_M ≤ 1 (for a well-normed network A = 1, §e.7)."""
    torch.manual_seed(1)
    model = SMOOTH_MODELS[name]().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    x = 0.9 * x / rms_max(x)
    analysis = modnorm.analyze(model, x, mass="uniform")
    measure = Measure(model, x, analysis)
    measured = max(float(rms_max(jvp(lambda p: measure.f(p, x), (measure.params,), (measure.random_direction(),))[1]))
                   for _ in range(8))
    assert 0 < measured <= analysis.network.sharpness.weight_sensitivity * (1 + 1e-9)


def test_non_smooth_and_underived_ops_are_named():
    relu = modnorm.analyze(Chain(Scaled(8, 6), torch.relu, Scaled(4, 8)), torch.randn(2, 6)).network.sharpness
    assert not relu.certified and "non-smooth" in relu.reason and "relu" in relu.reason.lower()

    maxpool = Chain(Scaled(8, 6), lambda x: F.max_pool1d(x.unsqueeze(1), 2).squeeze(1), Scaled(4, 4))
    sharp = modnorm.analyze(maxpool, torch.randn(2, 6)).network.sharpness
    assert not sharp.certified and "non-smooth" in sharp.reason


class OneBlockAttention(nn.Module):
    """Single-head causal attention with Modula's 1/d logit scale, between well-normed projections."""

    def __init__(self, width=8):
        super().__init__()
        self.q, self.k, self.v, self.o = (Scaled(width, width) for _ in range(4))
        self.width = width

    def forward(self, x):
        heads = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True,
                                               scale=1 / self.width)
        return self.o(heads)


class SoftmaxReadout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = Scaled(8, 6), Scaled(4, 8)

    def forward(self, x):
        return self.out(torch.softmax(self.fc(x), dim=-1))


SMOOTH_MODELS["attention-1/d"] = lambda: OneBlockAttention()
SMOOTH_MODELS["softmax"] = lambda: SoftmaxReadout()


@pytest.mark.parametrize("name", ["attention-1/d", "softmax"])
def test_attention_and_softmax_second_derivatives(name):
    torch.manual_seed(2)
    model = SMOOTH_MODELS[name]().double().eval()
    shape = (1, 5, 8) if name.startswith("attention") else (3, 6)
    x = torch.randn(*shape, dtype=torch.float64)
    x = 0.9 * x / rms_max(x)
    analysis = modnorm.analyze(model, x, mass="uniform")
    sharp = analysis.network.sharpness
    assert sharp.certified, sharp.reason
    measure = Measure(model, x, analysis)
    measured = (measure.alpha(), measure.beta(), measure.gamma())
    bound = (sharp.alpha, sharp.beta, sharp.gamma)
    print(f"{name}: measured {measured} bound {bound}")
    for m, b in zip(measured, bound):
        assert 0 < m <= b * (1 + 1e-9)


@pytest.mark.parametrize("scale_kind, magnitude", [("1/d", 1.0), ("1/sqrt(d)", 1.0), ("1/sqrt(d)", 3.0)])
def test_attention_hessian_bounds_the_op_alone(scale_kind, magnitude):
    """The attention entry's second-order constant against nested jvp on the op itself, with q, k, v of RMS up to
    `magnitude` (aligned logits large) and directions improved by gradient ascent."""
    from modnorm.semantics import attention_hessian

    torch.manual_seed(3)
    T, d = 6, 8
    c = 1 / d if scale_kind == "1/d" else 1 / math.sqrt(d)
    q, k, v = (magnitude * torch.randn(T, d, dtype=torch.float64) for _ in range(3))
    q, k, v = (magnitude * t / rms_max(t) for t in (q, k, v))
    kappa = attention_hessian(c * d, magnitude, magnitude, magnitude, "certified")
    attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=c, is_causal=True)  # noqa: E731

    def second(direction):
        inner = lambda *p: jvp(attend, p, direction)[1]  # noqa: E731
        return rms_max(jvp(inner, (q, k, v), direction)[1])

    def unit(parts):
        total = sum(rms_max(p) for p in parts)
        return tuple(p / total for p in parts)

    best = 0.0
    for _ in range(4):
        direction = unit(tuple(torch.randn_like(t) for t in (q, k, v)))
        for _ in range(10):
            best = max(best, float(second(direction)))
            g = grad(lambda *dd: second(dd), argnums=(0, 1, 2))(*direction)
            direction = unit(tuple(p + 0.3 * gp / (gp.norm() + 1e-30) * p.norm() for p, gp in zip(direction, g)))
    print(f"attention {scale_kind} |q|={magnitude}: measured {best:.4g} bound {kappa:.4g}")
    assert 0 < best <= kappa


def test_block_sharpness_is_the_block_alone_in_its_own_norm():
    """A block made of one Linear and tanh, read alone with its own mass: (κ, 1 + κ, κ) as for tanh ∘ Linear
    (§e.2 with μ1 = 1); the network around it does not change it."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = orthogonal_linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.blocks, self.out = orthogonal_linear(8, 6), nn.ModuleList([Block(), Block()]), \
                orthogonal_linear(4, 8)

        def forward(self, x):
            x = self.inp(x)
            for block in self.blocks:
                x = 0.5 * x + 0.5 * block(x)
            return self.out(x)

    kappa = TANH_CURVATURE * math.sqrt(8)
    analysis = modnorm.analyze(Net(), torch.randn(2, 6), profile="modula")
    blocks = {b.name: b for b in analysis.network.block_sharpness}
    assert set(blocks) == {"inp", "blocks.0", "blocks.1", "out"}
    for name in ("blocks.0", "blocks.1"):
        b = blocks[name]
        assert (b.alpha, b.beta, b.gamma) == pytest.approx((kappa, 1 + kappa, kappa), rel=1e-6)
    assert (blocks["inp"].alpha, blocks["inp"].beta) == pytest.approx((0.0, 1.0))
