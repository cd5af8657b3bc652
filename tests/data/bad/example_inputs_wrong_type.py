"""example_inputs() returns a list of numbers."""
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def build_model():
    return Tiny()


def example_inputs():
    return [1, 2, 3]
