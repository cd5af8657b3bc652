"""Meta's reference Llama attention, as people copy it: hand-written attention dividing by sqrt(head_dim), the
logits cast up for the softmax and back (`F.softmax(scores.float(), dim=-1).type_as(q)`), and grouped-query
attention by `repeat_interleave` of the key/value heads."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim=32, n_heads=4, n_kv_heads=2):
        super().__init__()
        self.h, self.kv, self.d = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.d, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.d, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.d, bias=False)
        self.wo = nn.Linear(n_heads * self.d, dim, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.wk(x).view(B, T, self.kv, self.d).transpose(1, 2)
        v = self.wv(x).view(B, T, self.kv, self.d).transpose(1, 2)
        k = k.repeat_interleave(self.h // self.kv, dim=1)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.d)
        scores = F.softmax(scores.float(), dim=-1).type_as(q)
        return self.wo(torch.matmul(scores, v).transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.norm, self.attn = nn.RMSNorm(dim), Attention(dim)

    def forward(self, x):
        return x + self.attn(self.norm(x))


def build_model():
    return Block()


def example_inputs(model):
    return torch.randn(2, 8, 32)
