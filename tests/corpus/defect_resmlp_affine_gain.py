"""Modula's ResMLP whose final normalization is an nn.LayerNorm with its gain filled with 8 (a custom init): the
head sees features 8x larger than its target assumes.
Defect: normalization gain far from 1 -> MN103
"""

import math

import torch
from torch import nn


def rms_divide(x):
    return x / x.square().mean(-1, keepdim=True).sqrt()


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
        self.ln = nn.LayerNorm(width)
        nn.init.constant_(self.ln.weight, 8.0)  # the defect
        self.s_inp, self.s_out = math.sqrt(width / input_dim), math.sqrt(output_dim / width)
        self.L, self.input_dim = depth, input_dim

    def forward(self, x):
        x = self.inp(x) * self.s_inp
        for fc in self.hidden:
            branch = torch.abs(fc(rms_divide(x)))
            x = (1 - 1 / self.L) * x + (1 / self.L) * branch
        return self.out(self.ln(x)) * self.s_out


def build_model():
    return ResMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
