"""A residual MLP at depth 16 with orthogonal square weights and 1/L branches: x + (1/L) relu(W rms(x)).

Each block has sensitivity at most 1 + 1/L, so the stream grows at most (1 + 1/L)^L <= e; the RMS norm has an
eps and a stream that only grows (its input RMS never drops below the embedding's).
Label: clean
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def orthogonal_linear(fan_in, fan_out):
    fc = nn.Linear(fan_in, fan_out, bias=False)
    nn.init.orthogonal_(fc.weight)
    return fc


class InvDepthMLP(nn.Module):
    def __init__(self, width=64, depth=16, input_dim=32, output_dim=8):
        super().__init__()
        self.inp = orthogonal_linear(input_dim, width)
        self.hidden = nn.ModuleList(orthogonal_linear(width, width) for _ in range(depth))
        self.out = orthogonal_linear(width, output_dim)
        self.s_inp, self.s_out = math.sqrt(width / input_dim), math.sqrt(output_dim / width)
        self.L, self.width, self.input_dim = depth, width, input_dim

    def forward(self, x):
        x = self.inp(x) * self.s_inp
        for fc in self.hidden:
            x = x + F.relu(fc(F.rms_norm(x, (self.width,), eps=1e-6))) / self.L
        return self.out(F.rms_norm(x, (self.width,), eps=1e-6)) * self.s_out


def build_model():
    return InvDepthMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
