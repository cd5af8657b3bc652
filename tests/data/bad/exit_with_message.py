"""sys.exit('msg') in the factory: not exit 1 (findings)."""
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def build_model():
    import sys; sys.exit('giving up')
    return Tiny()


def example_inputs():
    return torch.randn(2, 4)
