"""A well-normed 64 -> 4096 feature layer followed by a default-initialised nn.Linear(4096, 10) readout.

PyTorch's default init (uniform with bound 1/sqrt(fan_in)) gives the 4096 -> 10 readout an RMS->RMS norm of
about (1 + sqrt(4096/10))/sqrt(3) ~ 12, which grows like sqrt(width); Modula's readout has norm 1.
Defect: default-init 4096->10 readout -> MN102
"""

import math

import torch
from torch import nn


class WideClassifier(nn.Module):
    def __init__(self, input_dim=64, width=4096, classes=10):
        super().__init__()
        self.features = nn.Linear(input_dim, width, bias=False)
        nn.init.orthogonal_(self.features.weight)
        self.readout = nn.Linear(width, classes, bias=False)  # the defect: default init
        self.scale, self.input_dim = math.sqrt(width / input_dim), input_dim

    def forward(self, x):
        return self.readout(torch.relu(self.features(x) * self.scale))


def build_model():
    return WideClassifier()


def example_inputs(model):
    return torch.randn(4, model.input_dim)
