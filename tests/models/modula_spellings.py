"""Modula's reference architectures (ResMLP, ResCNN, GPT) in two more plain-torch spellings each.

The fixtures (fixtures/modula_*.py) keep each atom's forward multiplier inside a small atom module. People
write it elsewhere: after the call (`self.fc(x) * scale`), before it (`scale * self.fc(x)`), or with
`torch.mul`, followed by the residual's own constant and the merge. Every spelling here computes the same
function with the same parameter names as the fixtures, so the Modula reference values apply unchanged.

Modula's init, as in Modula 0.0.0.0.0.2: orthogonal Linear weights with forward multiplier sqrt(fan_out/fan_in);
Conv2D taps [:, :, i, j] each orthogonal with multiplier sqrt(c_out/c_in)/k^2; Embedding rows of unit l2 norm
with multiplier sqrt(d).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def rms_divide(x, dim=-1):
    return x / x.square().mean(dim, keepdim=True).sqrt()


def mean_subtract(x, dim=-1):
    return x - x.mean(dim, keepdim=True)


def layer_norm(x):
    return rms_divide(mean_subtract(x))


def linear(fan_out, fan_in):
    fc = nn.Linear(fan_in, fan_out, bias=False)
    nn.init.orthogonal_(fc.weight)
    return fc


def conv(c_out, c_in, k=3):
    layer = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    for i in range(k):
        for j in range(k):
            nn.init.orthogonal_(layer.weight.data[:, :, i, j])
    return layer


def embedding(num, dim):
    emb = nn.Embedding(num, dim)
    with torch.no_grad():
        emb.weight /= emb.weight.norm(dim=1, keepdim=True)
    return emb


def scale_of(layer):
    """Modula's forward multiplier for an atom built above."""
    if isinstance(layer, nn.Conv2d):
        c_out, c_in, k, _ = layer.weight.shape
        return math.sqrt(c_out / c_in) / k**2
    if isinstance(layer, nn.Embedding):
        return math.sqrt(layer.embedding_dim)
    fan_out, fan_in = layer.weight.shape
    return math.sqrt(fan_out / fan_in)


# Three ways to apply an atom's multiplier; each spelling picks one.
def after(layer, x):
    return layer(x) * scale_of(layer)


def before(layer, x):
    return scale_of(layer) * layer(x)


def torch_mul(layer, x):
    return torch.mul(layer(x), scale_of(layer))


class Residue(nn.Module):
    def __init__(self, width, depth, atom=linear, dim=-1):
        super().__init__()
        self.layers = nn.ModuleList(atom(width, width) for _ in range(depth))
        self.dim, self.apply_scale = dim, after

    def forward(self, x):
        for layer in self.layers:
            x = mean_subtract(torch.abs(self.apply_scale(layer, rms_divide(x, self.dim))), self.dim)
        return x


class ResMLP(nn.Module):
    """Spellings: "after" -> `self.inp(x) * s` and `(1 - 1/L) * x + (1/L) * block(x)`;
    "torch_mul" -> `torch.mul(self.inp(x), s)` and `torch.add(torch.mul(x, 1 - 1/L), torch.mul(block(x), 1/L))`."""

    def __init__(self, spelling, width=32, num_blocks=2, block_depth=1, input_dim=48, output_dim=10):
        super().__init__()
        self.inp = linear(width, input_dim)
        self.blocks = nn.ModuleList(Residue(width, block_depth) for _ in range(num_blocks))
        self.out = linear(output_dim, width)
        self.spelling, self.input_dim, self.L = spelling, input_dim, num_blocks
        for block in self.blocks:
            block.apply_scale = after if spelling == "after" else torch_mul

    def forward(self, x):
        if self.spelling == "after":
            x = self.inp(x.flatten(1)) * scale_of(self.inp)
            for block in self.blocks:
                x = (1 - 1 / self.L) * x + (1 / self.L) * block(x)
            return self.out(rms_divide(x)) * scale_of(self.out)
        x = torch.mul(self.inp(x.flatten(1)), scale_of(self.inp))
        for block in self.blocks:
            x = torch.add(torch.mul(x, 1 - 1 / self.L), torch.mul(block(x), 1 / self.L))
        return torch.mul(self.out(rms_divide(x)), scale_of(self.out))


class ConvResidue(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.convs = nn.ModuleList(conv(width, width) for _ in range(depth))
        self.apply_scale = after

    def forward(self, x):
        for layer in self.convs:
            x = mean_subtract(torch.abs(self.apply_scale(layer, rms_divide(x, (1, 2, 3)))), (1, 2, 3))
        return x


class ResCNN(nn.Module):
    """Spellings: "after" -> `self.conv_in(x) * s`, `x * (1 - 1/L) + block(x) * (1/L)`;
    "before" -> `s * self.conv_in(x)`, `(1 - 1/L) * x + (1/L) * block(x)`."""

    def __init__(self, spelling, width=8, num_blocks=2, block_depth=1, input_dim=3, output_dim=10):
        super().__init__()
        self.conv_in = conv(width, input_dim)
        self.blocks = nn.ModuleList(ConvResidue(width, block_depth) for _ in range(num_blocks))
        self.fc = linear(output_dim, width)
        self.spelling, self.input_dim, self.L = spelling, input_dim, num_blocks
        self.scaled = after if spelling == "after" else before
        for block in self.blocks:
            block.apply_scale = self.scaled

    def forward(self, x):  # (B, C, H, W)
        x = self.scaled(self.conv_in, x)
        for block in self.blocks:
            if self.spelling == "after":
                x = x * (1 - 1 / self.L) + block(x) * (1 / self.L)
            else:
                x = (1 - 1 / self.L) * x + (1 / self.L) * block(x)
        return self.scaled(self.fc, torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, num_heads, d_embed, d_query, d_value, context, scaled):
        super().__init__()
        self.h, self.dq, self.dv, self.scaled = num_heads, d_query, d_value, scaled
        self.q, self.k = linear(num_heads * d_query, d_embed), linear(num_heads * d_query, d_embed)
        self.v, self.o = linear(num_heads * d_value, d_embed), linear(d_embed, num_heads * d_value)
        self.register_buffer("mask", torch.tril(torch.ones(context, context, dtype=torch.bool)))

    def forward(self, x):
        B, T, _ = x.shape
        q = self.scaled(self.q, x).view(B, T, self.h, self.dq).transpose(1, 2) / 3
        k = self.scaled(self.k, x).view(B, T, self.h, self.dq).transpose(1, 2) / 3
        v = self.scaled(self.v, x).view(B, T, self.h, self.dv).transpose(1, 2) / 3
        att = (q @ k.transpose(-2, -1)) * (1 / self.dq)
        att = F.softmax(att.masked_fill(~self.mask[:T, :T], float("-inf")), dim=-1)
        return self.scaled(self.o, (att @ v).transpose(1, 2).contiguous().view(B, T, self.h * self.dv))


class MLP(nn.Module):
    def __init__(self, d, scaled):
        super().__init__()
        self.fc1, self.fc2, self.scaled = linear(4 * d, d), linear(d, 4 * d), scaled

    def forward(self, x):
        return self.scaled(self.fc2, math.sqrt(2) * F.gelu(self.scaled(self.fc1, layer_norm(x))))


class Block(nn.Module):
    def __init__(self, num_heads, d_embed, d_query, d_value, context, num_blocks, scaled):
        super().__init__()
        self.attn = Attention(num_heads, d_embed, d_query, d_value, context, scaled)
        self.mlp = MLP(d_embed, scaled)
        self.b = 1 / (2 * num_blocks)

    def forward(self, x):
        x = (1 - self.b) * x + self.b * self.attn(layer_norm(x))
        return (1 - self.b) * x + self.b * self.mlp(x)


class GPT(nn.Module):
    """Spellings (issue 16): "after" -> `self.fc2(h) * 0.5`, `tok = self.tok_emb(idx) * sqrt(d)`, then
    `0.5 * tok + 0.5 * pos`; "before" -> `0.5 * self.fc2(h)`, `sqrt(d) * self.tok_emb(idx)`, `(tok + pos) / 2`."""

    def __init__(self, spelling, vocab_size=37, context=8, num_heads=2, d_embed=16, d_query=8, d_value=8,
                 num_blocks=2):
        super().__init__()
        self.scaled = after if spelling == "after" else before
        self.tok_emb, self.pos_emb = embedding(vocab_size, d_embed), embedding(context, d_embed)
        self.blocks = nn.ModuleList(Block(num_heads, d_embed, d_query, d_value, context, num_blocks, self.scaled)
                                    for _ in range(num_blocks))
        self.head = linear(vocab_size, d_embed)
        self.spelling, self.vocab_size, self.context = spelling, vocab_size, context

    def forward(self, idx):
        tok = self.scaled(self.tok_emb, idx)
        pos = self.scaled(self.pos_emb, torch.arange(idx.shape[1], device=idx.device))
        x = 0.5 * tok + 0.5 * pos if self.spelling == "after" else (tok + pos) / 2
        for block in self.blocks:
            x = block(x)
        return self.scaled(self.head, layer_norm(x))


SPELLINGS = {"ResMLP": ("after", "torch_mul"), "ResCNN": ("after", "before"), "GPT": ("after", "before")}
ARCHITECTURES = {"ResMLP": ResMLP, "ResCNN": ResCNN, "GPT": GPT}


def example_inputs(model):
    if isinstance(model, GPT):
        return torch.randint(0, model.vocab_size, (2, model.context))
    if isinstance(model, ResCNN):
        return torch.randn(2, model.input_dim, 8, 8)
    return torch.randn(4, model.input_dim)
