"""Modula's GPT in plain torch, spelled as in issue 16: `self.fc2(x) * 0.5` (fc2's sqrt(d / 4d)), then the
residual's `b * mlp(x)`; `self.tok_emb(idx) * math.sqrt(d)` then `0.5 * tok + 0.5 * pos`.

Modula's init: orthogonal Linear weights, unit-l2 embedding rows; q, k, v divided by 3, logits by d_head;
blocks (1 - 1/2L) x + 1/2L f(x); eps-free LayerNorm; ScaledGELU sqrt(2) gelu.
Label: clean
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(x):
    x = x - x.mean(-1, keepdim=True)
    return x / x.square().mean(-1, keepdim=True).sqrt()


def linear(fan_in, fan_out):
    fc = nn.Linear(fan_in, fan_out, bias=False)
    nn.init.orthogonal_(fc.weight)
    return fc


def embedding(num, d):
    emb = nn.Embedding(num, d)
    with torch.no_grad():
        emb.weight /= emb.weight.norm(dim=1, keepdim=True)
    return emb


class Block(nn.Module):
    def __init__(self, d, heads, context, num_blocks):
        super().__init__()
        self.q, self.k, self.v, self.o = (linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = linear(d, 4 * d), linear(4 * d, d)
        self.h, self.b = heads, 1 / (2 * num_blocks)
        self.register_buffer("mask", torch.tril(torch.ones(context, context, dtype=torch.bool)))

    def attn(self, x):
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.h, C // self.h).transpose(1, 2) / 3 for p in (self.q, self.k, self.v))
        att = (q @ k.transpose(-2, -1)) * (self.h / C)  # 1 / d_head
        att = F.softmax(att.masked_fill(~self.mask[:T, :T], float("-inf")), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, C))

    def mlp(self, x):
        return self.fc2(math.sqrt(2) * F.gelu(self.fc1(x) * 2)) * 0.5  # sqrt(4d/d) = 2, sqrt(d/4d) = 0.5

    def forward(self, x):  # (B, T, C)
        x = (1 - self.b) * x + self.b * self.attn(layer_norm(x))
        return (1 - self.b) * x + self.b * self.mlp(layer_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab=37, context=8, d=16, heads=2, num_blocks=2):
        super().__init__()
        self.tok_emb, self.pos_emb = embedding(vocab, d), embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, context, num_blocks) for _ in range(num_blocks))
        self.head = linear(d, vocab)
        self.vocab, self.context, self.d = vocab, context, d

    def forward(self, idx):
        tok = self.tok_emb(idx) * math.sqrt(self.d)
        pos = self.pos_emb(torch.arange(idx.shape[1], device=idx.device)) * math.sqrt(self.d)
        x = 0.5 * tok + 0.5 * pos
        for block in self.blocks:
            x = block(x)
        return self.head(layer_norm(x)) * math.sqrt(self.vocab / self.d)


def build_model():
    return GPT()


def example_inputs(model):
    return torch.randint(0, model.vocab, (2, model.context))
