"""Modula's ResMLP in plain torch, atom scales written before the call: `scale * self.fc(x)`.

Modula's init: orthogonal Linear weights, forward multiplier sqrt(fan_out / fan_in); residual blocks
(1 - 1/L) x + (1/L) f(x); an eps-free RMS division in front of each block and of the head.
Label: clean
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
        self.s_inp, self.s_out = math.sqrt(width / input_dim), math.sqrt(output_dim / width)
        self.L, self.input_dim = depth, input_dim

    def forward(self, x):
        x = self.s_inp * self.inp(x)
        for fc in self.hidden:
            branch = torch.abs(fc(rms_divide(x)))
            x = (1 - 1 / self.L) * x + (1 / self.L) * branch
        return self.s_out * self.out(rms_divide(x))


def build_model():
    return ResMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
