"""Prints at import, in the factory and in forward: none of it may reach stdout (it would corrupt -f json)."""
import torch
from torch import nn

print("hello from the model file")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        print("forward", x.shape)
        return self.fc(x)


def build_model():
    print("building")
    return Tiny()


def example_inputs():
    return torch.randn(2, 4)
