"""PEFT-style LoRA: a frozen base layer (requires_grad=False), lora_A then lora_B with lora_B initialised to 0."""

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, d_in, d_out, r=4, alpha=8):
        super().__init__()
        self.base_layer = nn.Linear(d_in, d_out)
        self.base_layer.requires_grad_(False)
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = LoRALinear(32, 64), LoRALinear(64, 10)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def build_model():
    return Net()


def example_inputs(model):
    return torch.randn(4, 32)
