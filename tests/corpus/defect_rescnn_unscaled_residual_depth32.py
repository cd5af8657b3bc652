"""Modula's ResCNN at depth 32 with residuals written `x + f(x)`: the stream's sensitivity grows like 2^L.
Defect: unscaled residual at depth 32 -> MN201
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
    def __init__(self, width=16, depth=32, channels=3, classes=10):
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
            x = x + torch.abs(conv(rms_divide(x)) * self.s_hidden)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)) * self.s_fc


def build_model():
    return ResCNN()


def example_inputs(model):
    return torch.randn(2, model.channels, 8, 8)
