"""int64 inputs into a Linear."""
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
    return torch.zeros(2, 4, dtype=torch.long)
