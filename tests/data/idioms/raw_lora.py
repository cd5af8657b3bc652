"""LoRA written with raw parameters, as in many from-memory implementations: `x @ self.A.t() @ self.B.t()`, B at 0."""

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, d_in, d_out, r=4):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.A = nn.Parameter(torch.randn(r, d_in) / d_in ** 0.5)
        self.B = nn.Parameter(torch.zeros(d_out, r))

    def forward(self, x):
        return self.base(x) + x @ self.A.t() @ self.B.t()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = LoRALinear(32, 64), LoRALinear(64, 10)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def build_model():
    return Net()


def example_inputs(model):
    return torch.randn(4, 32)
