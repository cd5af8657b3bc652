"""Ten billion parameters: built on meta it is free; --device cpu must refuse above --max-params."""
import torch
from torch import nn


def build_model():
    return nn.Sequential(*[nn.Linear(50_000, 50_000, bias=False) for _ in range(4)])


def example_inputs():
    return torch.randn(1, 50_000)
