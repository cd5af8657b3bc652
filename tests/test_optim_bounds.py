"""modnorm.optim against what the analysis allows, measured.

One normalized step of learning rate lr has modular norm lr: atom i moves by lr·t_i in its natural norm, so its
output change is at most S_down(i)·R·lr·t_i = lr·(its mass share) with R = 1 (inputs in the unit ball) — the
analysis holds biases fixed. And the update's natural norm, measured exactly after the step, is at most lr·t_i
whatever estimator the optimizer used for it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim import ModularNormalized
from tests.adversary import rms_max


def test_an_atoms_output_change_stays_within_lr_times_its_mass_share() -> None:
    torch.manual_seed(0)
    model = nn.Linear(16, 16).double()
    x = torch.randn(1, 16, dtype=torch.float64)
    x = x / rms_max(x)  # on the unit sphere of the input norm
    analysis = modnorm.analyze(model, x)
    (layer,) = analysis.layers
    lr = 0.01
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=1.0), model, analysis, lr=lr, norm="exact")
    before = model(x).detach()
    model(x).sum().backward()  # gradient g xᵀ for W and g for b: both updates push the output the same way
    opt.step()
    change = float(rms_max(model(x).detach() - before))
    allowed = lr * layer.target_norm * layer.downstream_sensitivity  # = lr · mass share (t = share / S_down)
    assert change <= allowed * (1 + 1e-6), (change, allowed)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("dualize", [
    pytest.param(False, id="default", marks=pytest.mark.xfail(
        strict=True, raises=AssertionError, reason="the default 2-step power estimate of the update's norm undershoots: up to 4.3% over")),
    pytest.param(True, id="dualize", marks=pytest.mark.xfail(
        strict=True, raises=AssertionError, reason="dualize=True: Newton-Schulz leaves σ in [0.7, 1.2] and the power estimate misses the "
        "largest: up to 21.5% over")),
])
def test_update_modular_norm_never_exceeds_lr(dualize: bool) -> None:
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(32, 64, dtype=torch.float64)
    lr = 0.01
    opt = ModularNormalized(torch.optim.Adam(model.parameters(), lr=1e-3), model, example_inputs=x, lr=lr,
                            dualize=dualize)
    worst = 0.0
    for _ in range(5):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        worst = max(worst, max(opt.update_norms(before, model).values()))
    assert worst <= lr * (1 + 1e-3), f"update of modular norm {worst:.5g} > lr {lr} ({worst / lr - 1:.1%} over)"
