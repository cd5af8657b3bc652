"""torchvision's spelling of Swin attention: a module-level function marked `torch.fx.wrap` that receives the qkv and
projection weights as arguments (`shifted_window_attention(x, self.qkv.weight, self.proj.weight, ...)`). Read as one
opaque call, its two Linears would be missing; modnorm reads it through."""

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def window_attention(x, qkv_weight, proj_weight, qkv_bias=None, proj_bias=None):
    q, k, v = F.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1)
    att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1)
    return F.linear(att @ v, proj_weight, proj_bias)


torch.fx.wrap("window_attention")  # torchvision does this for shifted_window_attention


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return x + window_attention(x, self.qkv.weight, self.proj.weight, self.qkv.bias, self.proj.bias)


def build_model():
    return Block()


def example_inputs(model):
    return torch.randn(2, 5, 16)
