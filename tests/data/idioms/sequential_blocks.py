"""A ResMLP as a ModuleList of nn.Sequential blocks, the residual added in the parent's loop."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=32, depth=8):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
            for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def build_model(): return Net()
def example_inputs(m): return torch.randn(4, 32)
