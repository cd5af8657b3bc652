"""Modula's GPT with the attention logits scaled by 1/sqrt(d_head) (scaled_dot_product_attention's default)
instead of 1/d_head: when queries and keys align, logits grow like sqrt(d_head) with width.
Defect: 1/sqrt(d) attention -> MN301
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(x):
    x = x - x.mean(-1, keepdim=True)
    return x / x.square().mean(-1, keepdim=True).sqrt()


class Linear(nn.Module):
    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(fan_out, fan_in)))
        self.scale = math.sqrt(fan_out / fan_in)

    def forward(self, x):
        return F.linear(x, self.weight) * self.scale


class Embedding(nn.Module):
    def __init__(self, num, d):
        super().__init__()
        w = torch.randn(num, d)
        self.weight = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.scale = math.sqrt(d)

    def forward(self, idx):
        return F.embedding(idx, self.weight) * self.scale


class Block(nn.Module):
    def __init__(self, d, heads, context, num_blocks):
        super().__init__()
        self.q, self.k, self.v, self.o = (Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = Linear(d, 4 * d), Linear(4 * d, d)
        self.h, self.b = heads, 1 / (2 * num_blocks)
        self.register_buffer("mask", torch.tril(torch.ones(context, context, dtype=torch.bool)))

    def attn(self, x):
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.h, C // self.h).transpose(1, 2) / 3 for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the defect: 1 / sqrt(d_head)
        return self.o(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):  # (B, T, C)
        x = (1 - self.b) * x + self.b * self.attn(layer_norm(x))
        return (1 - self.b) * x + self.b * self.fc2(math.sqrt(2) * F.gelu(self.fc1(layer_norm(x))))


class GPT(nn.Module):
    def __init__(self, vocab=37, context=8, d=16, heads=2, num_blocks=2):
        super().__init__()
        self.tok_emb, self.pos_emb = Embedding(vocab, d), Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, context, num_blocks) for _ in range(num_blocks))
        self.head = Linear(d, vocab)
        self.vocab, self.context = vocab, context

    def forward(self, idx):
        x = 0.5 * self.tok_emb(idx) + 0.5 * self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(layer_norm(x))


def build_model():
    return GPT()


def example_inputs(model):
    return torch.randint(0, model.vocab, (2, model.context))
