"""A coupled normalizer (GroupNorm; an RMS division over (C, H, W)) under the default profile states a floor on
its groups' RMS (what σ is made of, not one position's features) and a ceiling on its normalized output, and its
constant uses both: docs/theory/constants.md#coupled-normalizers.

Per group, n = (x − μ)/σ has Jacobian (1/σ)(I − 11ᵀ/m − n nᵀ/m). For one output fiber (the C channels of one
position) the three terms give, summed over the G groups it meets: ‖u_f‖ <= 1 for a perturbation of max-position
RMS 1; the group means at most 1 (Σ_g ū_g² <= Σ_g RMS(u_g)² <= G, spread over C/G channels each); and
Σ_g c_g² ‖n_{f,g}‖²/C <= Y² with c_g = nᵀu/m, |c_g| <= RMS(u_g) and Y the largest RMS of n over one group's
channels at one position. So the slope is at most (1 + 1 + Y)/σ_min, against sqrt(N)/σ_min without the ceiling
(N = H·W positions)."""

import math

import pytest
import torch

import modnorm
from modnorm.floors import in_unit_ball
from modnorm.probe import probe


def group_peak(x: torch.Tensor, groups: int, eps: float) -> tuple[float, float]:
    """(Y, σ_min) of GroupNorm at x, computed here independently of modnorm."""
    g = x.double().reshape(x.shape[0], groups, -1, *x.shape[2:])
    dims = tuple(range(2, g.dim()))
    mean = g.mean(dims, keepdim=True)
    sigma = ((g - mean).pow(2).mean(dims, keepdim=True) + eps).sqrt()
    n = (g - mean) / sigma
    return float(n.pow(2).mean(2).sqrt().max()), float(sigma.min())


def rms_max(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean(1).sqrt().max()


@pytest.mark.parametrize("concentration", [0.1, 1.0, 3.0])
def test_the_slope_given_the_ceiling_bounds_the_measured_one(concentration):
    """At inputs from spread out to concentrated on a few pixels, an adversarial ascent on the perturbation never
    beats (2 + Y(x)) / σ_min(x)."""
    torch.manual_seed(0)
    channels, groups, eps = 16, 4, 1e-5
    norm = torch.nn.GroupNorm(groups, channels, eps=eps, affine=False).double()
    for trial in range(4):
        x = torch.randn(1, channels, 6, 6, dtype=torch.float64) * torch.rand(1, 1, 6, 6, dtype=torch.float64) ** (
            concentration)
        peak, sigma = group_peak(x, groups, eps)
        bound = (2 + peak) / sigma
        u = torch.randn_like(x, requires_grad=True)
        ascent = torch.optim.Adam([u], lr=0.05)
        best = 0.0
        for _ in range(150):
            ratio = rms_max(torch.func.jvp(norm, (x,), (u,))[1]) / rms_max(u)
            best = max(best, float(ratio))
            ascent.zero_grad()
            (-ratio).backward()
            ascent.step()
        assert best <= bound, (trial, best, bound)


class ConvGroupNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.gn = torch.nn.GroupNorm(4, 16)
        self.out = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.out(self.gn(self.conv(x)))


def test_groupnorm_states_a_ceiling_and_its_constant_uses_it():
    """The ceiling is 2x the largest Y at init (computed here from the conv output at the example inputs scaled
    into the unit ball, where the analysis measures), the constant max|w| (2 + ceiling) / floor, below the
    sqrt(N)/floor it replaces; the assumption is printed beside the figure."""
    torch.manual_seed(0)
    model, x = ConvGroupNorm(), torch.randn(2, 8, 16, 16)
    analysis = modnorm.analyze(model, x)
    op = next(o for o in analysis.ops if o.module == "gn")
    with torch.no_grad():
        peak, _ = group_peak(model.conv(in_unit_ball((x,))[0]), 4, model.gn.eps)
    assert op.ceiling is not None and op.ceiling.limit == "ceiling"
    assert op.ceiling.at_init == pytest.approx(peak, rel=1e-9) and op.ceiling.floor == pytest.approx(2 * peak)
    with torch.no_grad():
        g = model.conv(in_unit_ball((x,))[0]).double().reshape(2, 4, -1)
        group_rms = float((g - g.mean(-1, keepdim=True)).pow(2).mean(-1).sqrt().min())
    floor = op.assumption
    assert floor.quantity == "input centred RMS per group" and floor.floor == pytest.approx(0.5 * group_rms)
    assert op.rms_floor == pytest.approx(math.sqrt(floor.floor ** 2 + model.gn.eps))
    assert op.lipschitz[0] == pytest.approx((2 + 2 * peak) / op.rms_floor, rel=1e-9)
    assert op.lipschitz[0] < math.sqrt(16 * 16) / op.rms_floor
    assert any("normalized output RMS per position and group <=" in a for a in analysis.network.assumptions)
    worst_case = modnorm.analyze(model, x, profile="certified")
    assert next(o for o in worst_case.ops if o.module == "gn").ceiling is None  # no assumption, no ceiling


class GroupNormFirst(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gn = torch.nn.GroupNorm(4, 16)
        self.out = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.out(self.gn(x))


def test_probe_checks_the_ceiling_and_reports_it_broken():
    """At the example inputs the ceiling holds (Y = half of it); on an input that is zero but at one pixel, the
    normalized output sits there with RMS sqrt(16 x 16) = 16 per group and Y exceeds the ceiling (about 5): an
    assumption violated, not a bug."""
    torch.manual_seed(0)
    model, x = GroupNormFirst(), torch.randn(2, 16, 16, 16)
    analysis = modnorm.analyze(model, x)
    rows = probe(model, (x,), analysis, trials=1, steps=2).rows
    holds = [r for r in rows if r.kind == "ceiling"]
    assert len(holds) == 1 and not holds[0].assumption_broken and holds[0].measured == pytest.approx(
        holds[0].bound / 2, rel=1e-6)
    (group_floor,) = [r for r in rows if r.kind == "assumption" and "per group" in r.what]
    assert group_floor.measured == pytest.approx(2 * group_floor.bound, rel=1e-6)
    spike = torch.zeros(1, 16, 16, 16)
    spike[..., 8, 8] = torch.randn(16)
    broken = probe(model, (spike,), analysis, trials=1, steps=2)
    (row,) = [r for r in broken.rows if r.kind == "ceiling"]
    assert row.assumption_broken and row.measured > row.bound
    assert not broken.violations  # the conditioned bounds are shown as comparisons, not asserted


def _within_assumptions(model, x, floor: float, ceiling: float) -> bool:
    """The stated floor (group centred RMS of the GroupNorm's input) and ceiling (Y of its output) hold at x, and x
    is in the unit ball: computed here from their definitions."""
    with torch.no_grad():
        h = model.conv(x).double()
        peak, _ = group_peak(h, 4, 0.0)  # Y of the normalized output (eps changes it by < 1e-9 here)
        g = h.reshape(h.shape[0], 4, -1)
        smallest = float((g - g.mean(-1, keepdim=True)).pow(2).mean(-1).sqrt().min())
    return smallest >= floor and peak <= ceiling and float(rms_max(x)) <= 1.0


def test_the_network_bound_holds_wherever_its_floor_and_ceiling_do():
    """Model level, not op level: the default profile's network sensitivity of conv -> GroupNorm -> conv (given
    the stated floor and ceiling) against an adversarial ascent on the input point and the direction that only
    accepts steps keeping both assumptions and the unit ball. Starts at the example input and at inputs
    concentrated on a few pixels (what raises Y toward its ceiling)."""
    torch.manual_seed(0)
    model, x = ConvGroupNorm().eval(), torch.randn(2, 8, 16, 16)
    analysis = modnorm.analyze(model, x)
    op = next(o for o in analysis.ops if o.module == "gn")
    floor, ceiling, bound = op.assumption.floor, op.ceiling.floor, analysis.network.sensitivity
    model64 = ConvGroupNorm().double().eval()
    model64.load_state_dict(model.state_dict())
    start = in_unit_ball((x,))[0].double()
    best, accepted = 0.0, 0
    for concentration in (0.0, 1.0, 2.0):
        point = start * torch.rand(1, 1, 16, 16, dtype=torch.float64) ** concentration
        point = point / max(1.0, float(rms_max(point)))
        if not _within_assumptions(model64, point, floor, ceiling):
            continue
        point = point.clone().requires_grad_(True)
        v = torch.randn_like(point, requires_grad=True)
        ascent = torch.optim.Adam([point, v], lr=0.02)
        for _ in range(60):
            before = point.detach().clone()
            ratio = rms_max(torch.func.jvp(model64, (point,), (v,))[1]) / rms_max(v)
            best = max(best, float(ratio.detach()))
            ascent.zero_grad()
            (-ratio).backward()
            ascent.step()
            if _within_assumptions(model64, point.detach(), floor, ceiling):
                accepted += 1
            else:
                with torch.no_grad():
                    point.copy_(before)  # outside the region the bound is conditioned on: step refused
    print(f"\nmeasured {best:.4g} <= bound {bound:.4g} ({best / bound:.2%}); {accepted} steps accepted")
    assert accepted > 0 and 0 < best <= bound, (best, bound)
