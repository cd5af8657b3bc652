"""An nn.Sequential (children named "0", "1", ...) whose forward only the module-only route can read."""
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def example_inputs():
    return torch.randn(2, 4)
