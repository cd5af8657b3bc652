"""Modula's ResCNN in plain torch: `self.conv(x) * scale` with scale sqrt(c_out / c_in) / k^2.

Modula's init: every kernel tap [:, :, i, j] an orthogonal matrix; residual blocks (1 - 1/L) x + (1/L) f(x);
eps-free RMS division over (C, H, W) in front of each block; average pool and a scaled orthogonal head.
Label: clean
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def rms_divide(x):
    return x / x.square().mean((1, 2, 3), keepdim=True).sqrt()


def orthogonal_conv(c_in, c_out, k=3):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    for i in range(k):
        for j in range(k):
            nn.init.orthogonal_(conv.weight.data[:, :, i, j])
    return conv


class ResCNN(nn.Module):
    def __init__(self, width=16, depth=3, channels=3, classes=10):
        super().__init__()
        self.conv_in = orthogonal_conv(channels, width)
        self.convs = nn.ModuleList(orthogonal_conv(width, width) for _ in range(depth))
        self.fc = nn.Linear(width, classes, bias=False)
        nn.init.orthogonal_(self.fc.weight)
        self.s_in, self.s_hidden = math.sqrt(width / channels) / 9, 1 / 9
        self.s_fc, self.L, self.channels = math.sqrt(classes / width), depth, channels

    def forward(self, x):  # (B, C, H, W)
        x = self.conv_in(x) * self.s_in
        for conv in self.convs:
            x = (1 - 1 / self.L) * x + (1 / self.L) * torch.abs(conv(rms_divide(x)) * self.s_hidden)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)) * self.s_fc


def build_model():
    return ResCNN()


def example_inputs(model):
    return torch.randn(2, model.channels, 8, 8)
