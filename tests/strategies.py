"""Random architectures for property tests (hypothesis strategies).

A model is a recipe: an input Linear into a residual stream of width w over T tokens, a list of blocks, and a
readout. Each block is a small DAG built from the registry's ops — Linear (random init scale), smooth and
non-smooth activations, LayerNorm / RMSNorm / hand-written RMS division with eps, gating (x ⊙ σ(Wx)), products
of activations, softmax attention (sdpa with a random scale), head splits (view + transpose) — merged back into
the stream with random multipliers `a·x + b·f(x)`, or replacing it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu, "silu": F.silu, "sigmoid": torch.sigmoid,
               "softplus": F.softplus}


class Block(nn.Module):
    def __init__(self, kind: str, width: int, hidden: int, activation: str, init_scale: float, eps: float,
                 heads: int, logit_scale: float, skip: float, branch: float) -> None:
        super().__init__()
        self.kind, self.activation, self.eps = kind, activation, eps
        self.heads, self.logit_scale, self.skip, self.branch = heads, logit_scale, skip, branch
        if kind in ("mlp", "gated", "product"):
            self.up = nn.Linear(width, hidden)
            self.gate = nn.Linear(width, hidden, bias=False)
            self.down = nn.Linear(hidden, width)
        elif kind == "attention":
            self.qkv = nn.Linear(width, 3 * width, bias=False)
            self.proj = nn.Linear(width, width, bias=False)
        self.norm = nn.LayerNorm(width, eps=eps) if kind == "mlp" else nn.RMSNorm(width, eps=eps)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 2:
                    p.mul_(init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        phi = ACTIVATIONS[self.activation]
        if self.kind == "mlp":
            f = self.down(phi(self.up(h)))
        elif self.kind == "gated":
            f = self.down(self.up(h) * torch.sigmoid(self.gate(h)))
        elif self.kind == "product":
            f = self.down(phi(self.up(h)) * self.gate(h))
        elif self.kind == "attention":
            b, t, c = h.shape
            q, k, v = self.qkv(h).split(c, dim=-1)
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.logit_scale)
            f = self.proj(y.transpose(1, 2).reshape(b, t, c))
        else:  # "rms": a hand-written RMS division with eps, then the activation
            f = phi(x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return self.skip * x + self.branch * f


class RandomNet(nn.Module):
    def __init__(self, d_in: int, width: int, blocks: list[dict], d_out: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(Block(width=width, **spec) for spec in blocks)
        self.out = nn.Linear(width, d_out)
        self.d_in = d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


@st.composite
def block_specs(draw: st.DrawFn, width: int) -> dict:
    kind = draw(st.sampled_from(["mlp", "gated", "product", "attention", "rms"]))
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if width % h == 0]))
    return {
        "kind": kind,
        "hidden": draw(st.sampled_from([width, 2 * width])),
        "activation": draw(st.sampled_from(sorted(ACTIVATIONS))),
        "init_scale": draw(st.floats(0.3, 3.0)),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "heads": heads,
        "logit_scale": draw(st.sampled_from([1 / (width // heads), 1 / math.sqrt(width // heads), 1.0])),
        "skip": draw(st.sampled_from([0.0, 0.5, 1.0, 1.3])),
        "branch": draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
    }


@st.composite
def architectures(draw: st.DrawFn) -> tuple[RandomNet, torch.Tensor]:
    width = draw(st.sampled_from([4, 8, 12, 16]))
    depth = draw(st.integers(0, 4))
    blocks = [draw(block_specs(width)) for _ in range(depth)]
    d_in, d_out = draw(st.integers(2, 10)), draw(st.integers(1, 10))
    tokens = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 16))
    torch.manual_seed(seed)
    model = RandomNet(d_in, width, blocks, d_out).double().eval()
    x = torch.randn(2, tokens, d_in, dtype=torch.float64)
    return model, x
