"""Modula's ResMLP whose blocks normalise by a data-dependent divisor, x / (1 + |f(x)|.amax()): a division by
an activation, which no constant bounds.
Defect: op without a certified bound -> MN901
"""

import math

import torch
from torch import nn


def orthogonal_linear(fan_in, fan_out):
    fc = nn.Linear(fan_in, fan_out, bias=False)
    nn.init.orthogonal_(fc.weight)
    return fc


class ResMLP(nn.Module):
    def __init__(self, width=64, depth=4, input_dim=48, output_dim=10):
        super().__init__()
        self.inp = orthogonal_linear(input_dim, width)
        self.hidden = nn.ModuleList(orthogonal_linear(width, width) for _ in range(depth))
        self.out = orthogonal_linear(width, output_dim)
        self.s_inp, self.s_out = math.sqrt(width / input_dim), math.sqrt(output_dim / width)
        self.L, self.input_dim = depth, input_dim

    def forward(self, x):
        x = self.inp(x) * self.s_inp
        for fc in self.hidden:
            h = fc(x)
            branch = h / (1 + h.abs().amax(-1, keepdim=True))  # the defect
            x = (1 - 1 / self.L) * x + (1 / self.L) * branch
        return self.out(x) * self.s_out


def build_model():
    return ResMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
