"""A 4-layer MLP without residuals: orthogonal weights with Modula's sqrt(fan_out / fan_in) multiplier and
1-Lipschitz ReLUs, so every layer is well-normed and the network's sensitivity is at most 1.
Label: clean
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class OrthogonalMLP(nn.Module):
    def __init__(self, dims=(48, 128, 128, 64, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))
        for fc in self.layers:
            nn.init.orthogonal_(fc.weight)
        self.scales = [math.sqrt(b / a) for a, b in zip(dims, dims[1:])]
        self.input_dim = dims[0]

    def forward(self, x):
        for i, (fc, scale) in enumerate(zip(self.layers, self.scales)):
            x = fc(x) * scale
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def build_model():
    return OrthogonalMLP()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
