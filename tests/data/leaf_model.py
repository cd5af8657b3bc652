"""A model with a module fx should not look inside (here: a clamp written with Python branching on a flag),
traced as one op with `--leaf Clamp` and given its semantics with `modnorm.register`."""

import torch
from torch import nn

import modnorm


class Clamp(nn.Module):
    """1-Lipschitz, |output| <= 1 (a smooth clamp)."""

    def forward(self, x):
        return torch.tanh(x)


@modnorm.register(Clamp)
def _clamp(op):
    # tanh: 1-Lipschitz, |y| <= 1, and max|tanh''| sqrt(d) as its second-order constant (docs/theory/sharpness.md)
    return modnorm.Semantics("bond", (1.0,), "Clamp: tanh, 1-Lipschitz", sup=1.0, upper=1.0,
                             hessian=0.7698 * op.in_shape(0)[-1] ** 0.5)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.clamp, self.b = nn.Linear(8, 8), Clamp(), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(self.clamp(self.a(x)))


def build_model():
    return Model()


def example_inputs(model):
    return torch.randn(2, 8)
