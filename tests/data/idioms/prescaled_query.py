"""Whisper's and BART's attention: the query is scaled right after its projection
(`q_proj(x) * head_dim ** -0.5`) and scaled_dot_product_attention is called with scale=1.0. The logits are still
scaled by 1/sqrt(head_dim); `QUERY_SCALE` lets a test apply the fix (1/head_dim)."""

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 16
QUERY_SCALE = HEAD_DIM ** -0.5


class Attention(nn.Module):
    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, T, _ = x.shape
        q = (self.q_proj(x) * QUERY_SCALE).view(B, T, self.h, self.d).transpose(1, 2).contiguous()
        k = self.k_proj(x).view(B, T, self.h, self.d).transpose(1, 2).contiguous()
        v = self.v_proj(x).view(B, T, self.h, self.d).transpose(1, 2).contiguous()
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, -1))


def build_model():
    return Attention(dim=4 * HEAD_DIM)


def example_inputs():
    return (torch.randn(1, 8, 4 * HEAD_DIM),)
