"""A torch.compile'd helper function and a torch.compile'd submodule inside an otherwise plain model."""

import torch
import torch.nn.functional as F
from torch import nn


@torch.compile
def fused_gelu(x):
    return F.gelu(x) * 1.0


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
        self.mid = torch.compile(nn.Linear(8, 8))

    def forward(self, x):
        return self.b(self.mid(fused_gelu(self.a(x))))


def example_inputs(model):
    return torch.randn(2, 8)
