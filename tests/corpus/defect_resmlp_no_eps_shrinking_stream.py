"""A ResMLP whose blocks shrink the stream, x <- 0.5 x + 0.1 |W x| (coefficients sum to 0.6, the branch reads the
stream unnormalized), at depth 8, feeding an eps-free RMS division before the head: the division's input RMS falls
like 0.6^L (about 0.02 at init, measured), so it amplifies perturbations about 50x already at init, and without
eps nothing bounds it as the stream shrinks further.
Defect: normalizer without eps fed by a shrinking stream -> MN601
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
    def __init__(self, width=64, depth=8, input_dim=48, output_dim=10):
        super().__init__()
        self.inp = orthogonal_linear(input_dim, width)
        self.hidden = nn.ModuleList(orthogonal_linear(width, width) for _ in range(depth))
        self.out = orthogonal_linear(width, output_dim)
        self.s_inp, self.s_out = math.sqrt(width / input_dim), math.sqrt(output_dim / width)
        self.L, self.input_dim = depth, input_dim

    def forward(self, x):
        x = self.inp(x) * self.s_inp
        for fc in self.hidden:
            branch = torch.abs(fc(x))
            x = 0.5 * x + 0.1 * branch
        return self.out(rms_divide(x)) * self.s_out


def build_model():
    return ResMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
