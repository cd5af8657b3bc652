"""A submodule whose name holds a newline (fx writes module names into generated code)."""
import torch
from torch import nn


def build_model():
    model = nn.Sequential(nn.Linear(4, 4))
    model.add_module("odd\nname", nn.Linear(4, 2))
    return model


def example_inputs():
    return torch.randn(2, 4)
