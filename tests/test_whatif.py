"""What if a fix were applied (modnorm.whatif): the re-run of the calculus that tells causes from consequences.

The specification: applying a fix to an analysis gives the design quantities the calculus computes for the model
written with that fix. The independent source for each expectation is the full calculus run on the fixed model
(a second `modnorm.analyze`), not the what-if code.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm import whatif
from modnorm.check import check_model
from modnorm.config import Settings
from modnorm.rules import all_rules

ROOT = Path(__file__).resolve().parent.parent


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def design_mismatches(fixed, expected) -> list[str]:
    """Every design figure on which the two analyses differ (beyond float rounding)."""
    bad = [] if close(fixed.network.design_sensitivity, expected.network.design_sensitivity) else ["network"]
    for got, want in zip(fixed.layers, expected.layers, strict=True):
        if not (close(got.design_downstream_sensitivity, want.design_downstream_sensitivity)
                and close(got.target_norm, want.target_norm)):
            bad.append(got.name)
    bad += [got.op for got, want in zip(fixed.merges, expected.merges, strict=True)
            if not close(got.design_block_sensitivity, want.design_block_sensitivity)]
    return bad


@pytest.mark.parametrize("fixture", ["nanogpt", "resnet_bn", "llama_block", "bert_encoder", "modula_gpt"])
def test_no_fix_reproduces_the_calculus(fixture):
    """The re-run is the calculus's own backward pass: with nothing changed it gives every design figure back."""
    analysis = check_model(str(ROOT / "fixtures" / f"{fixture}.py"), Settings()).analysis
    assert design_mismatches(whatif.apply(analysis, whatif.Fix()), analysis) == []


class ResMLP(nn.Module):
    def __init__(self, skip: float, branch: float, depth: int = 4, width: int = 16) -> None:
        super().__init__()
        self.skip, self.branch = skip, branch
        self.inp = nn.Linear(8, width, bias=False)
        self.blocks = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.out = nn.Linear(width, 4, bias=False)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = self.skip * x + self.branch * torch.relu(block(x))
        return self.out(x)


def test_rescaling_a_merge_gives_what_the_calculus_gives_the_rescaled_model():
    """MN201's fix as numbers: x + f(x) (block sensitivity 2) rescaled by 1/2 is 0.5·x + 0.5·f(x)."""
    unscaled = modnorm.analyze(ResMLP(1.0, 1.0), torch.randn(2, 8))
    assert all(close(m.design_block_sensitivity, 2.0) for m in unscaled.merges)
    fix = whatif.Fix(scale={m.op: (0.5,) for m in unscaled.merges})
    assert design_mismatches(whatif.apply(unscaled, fix), modnorm.analyze(ResMLP(0.5, 0.5), torch.randn(2, 8))) == []


def test_a_merge_fix_on_one_side_scales_that_coefficient_only():
    unscaled = modnorm.analyze(ResMLP(1.0, 1.0), torch.randn(2, 8))
    fixed = whatif.apply(unscaled, whatif.Fix(scale={m.op: (0.5, 1.0) for m in unscaled.merges}))
    coefficients = {(round(m.skip_coefficient, 9), round(m.branch_coefficient, 9)) for m in fixed.merges}
    assert coefficients in ({(0.5, 1.0)}, {(1.0, 0.5)})  # whichever input of the add is the skip
    assert all(close(m.design_block_sensitivity, 1.5) for m in fixed.merges)


class Attention(nn.Module):
    def __init__(self, scale: float | None, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.scale, self.heads = scale, heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, d))


def test_attention_scaled_by_one_over_d_gives_what_the_calculus_gives_that_model():
    """MN301's fix as numbers: the q and k constants c·d (sqrt(16) = 4 under 1/sqrt(d)) divided by c·d."""
    x = torch.randn(1, 6, 32)
    default = modnorm.analyze(Attention(None), x)
    attention = next(op for op in default.ops if "attention" in op.tags)
    assert attention.attention_scale * attention.head_dim == pytest.approx(4.0)
    fix = all_rules()["MN301"]().counterfactual(next(f for f in modnorm.rules.run_rules(default) if f.code == "MN301"),
                                                default)
    assert design_mismatches(whatif.apply(default, fix), modnorm.analyze(Attention(1 / 16), x)) == []


class Gained(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False)
        self.ln = nn.LayerNorm(16)
        with torch.no_grad():
            self.ln.weight.fill_(gain)

    def forward(self, x):
        return self.out(self.ln(self.inp(x)))


def test_a_gain_reset_to_one_gives_what_the_calculus_gives_that_model():
    x = torch.randn(2, 8)
    gained = modnorm.analyze(Gained(8.0), x)
    finding = next(f for f in modnorm.rules.run_rules(gained) if f.code == "MN103")
    fix = all_rules()["MN103"]().counterfactual(finding, gained)
    fixed, expected = whatif.apply(gained, fix), modnorm.analyze(Gained(1.0), x)
    assert design_mismatches(fixed, expected) == []
    assert close(gained.network.design_sensitivity, 8 * expected.network.design_sensitivity)


def test_fixes_compose_factor_by_factor():
    both = whatif.Fix(scale={"a": (0.5,)}) | whatif.Fix(scale={"a": (1.0, 0.25), "b": (2.0,)}, norms={"l": 1.0})
    assert both.scale == {"a": (0.5, 0.125), "b": (2.0,)} and both.norms == {"l": 1.0}


def test_the_effect_of_a_fix_is_measured_in_orders_of_magnitude():
    unscaled = modnorm.analyze(ResMLP(1.0, 1.0, depth=8), torch.randn(2, 8))
    moved = whatif.effect(unscaled, whatif.Fix(scale={m.op: (0.5,) for m in unscaled.merges}))
    assert moved.sensitivity[0] == pytest.approx(math.log10(unscaled.network.design_sensitivity))
    assert moved.sensitivity[0] - moved.sensitivity[1] == pytest.approx(8 * math.log10(2), rel=1e-9)  # 2^8 -> 1
    assert moved.spread[1] < moved.spread[0]


class Gated(nn.Module):
    """y = out(silu(gate(x)) ⊙ up(x)): the SwiGLU product of two activations."""

    def __init__(self, width=256, hidden=1024):
        super().__init__()
        self.gate, self.up = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        return self.out(F.silu(self.gate(x)) * self.up(x))


def test_a_products_design_constant_is_what_its_operand_reaches_not_the_sqrt_d_worst_case():
    """The design constant of a ⊙ b w.r.t. a is max|b| for a spread-out b: about RMS(b)·sqrt(2 ln d), checked
    against max|b| measured on the example input (within a factor 1.5 either way); the certified constant keeps
    the sqrt(d) worst case and is never below the design one."""
    torch.manual_seed(0)
    model, x = Gated(), torch.randn(8, 256) / 16  # RMS 1/16: inside the unit ball, as the profile measures
    analysis = modnorm.analyze(model, x)
    product = next(op for op in analysis.ops if "product" in op.tags)
    with torch.no_grad():
        gate, up = F.silu(model.gate(x)), model.up(x)
    measured = (up.abs().amax(-1).mean().item(), gate.abs().amax(-1).mean().item())  # w.r.t. a: max|b|, and back
    for design, reached, certified in zip(product.design, measured, product.lipschitz):
        assert reached / 1.5 <= design <= reached * 1.5
        assert design <= certified
    assert product.lipschitz[0] / product.design[0] > 4  # sqrt(1024) = 32 against sqrt(2 ln 1024) = 3.7
