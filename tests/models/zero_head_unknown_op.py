"""An unknown op (a custom autograd.Function) upstream of a zero-initialised head (torchvision ViT and timm
Mixer start their heads at 0): every downstream sensitivity is 0 at init, but the op is on the path to the output
and must be reported (MN901)."""

import torch
from torch import nn


class Odd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(Odd.apply(self.fc(x)))


def build_model():
    return Net()


def example_inputs(model):
    return torch.randn(2, 8)
