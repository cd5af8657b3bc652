"""A constructor that needs real values (torchvision RegNet: `.int().tolist()` on a tensor it creates): the meta
build fails, so modnorm builds it on the CPU and says so."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        widths = (torch.arange(3) * 8 + 8).int().tolist()  # torchvision RegNet: real values in __init__
        self.fc1 = nn.Linear(8, widths[1])
        self.fc2 = nn.Linear(widths[1], 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def build_model():
    return Net()


def example_inputs(model):
    return torch.randn(2, 8)
