"""The hand-built composites of the Modula reference values, written as plain PyTorch."""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))
from _modula_atoms import Attention, Linear, rms_divide  # noqa: E402


class Sequential(nn.Module):
    def __init__(self, fc1, act1, fc2, act2=None, fc3=None):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2
        if fc3 is not None:
            self.fc3 = fc3
        self.act1, self.act2 = act1, act2

    def forward(self, x):
        x = self.fc2(self.act1(self.fc1(x)))
        return self.fc3(self.act2(x)) if self.act2 is not None else x


def mlp_relu():
    return Sequential(Linear(48, 24), F.relu, Linear(10, 48))


def mlp_scaled_relu():
    return Sequential(Linear(48, 24), lambda x: math.sqrt(2) * F.relu(x), Linear(10, 48))


def mlp_scaled_gelu():
    return Sequential(Linear(48, 24), lambda x: math.sqrt(2) * F.gelu(x), Linear(10, 48))


def mlp_unequal_mass():
    return Sequential(Linear(48, 24), F.relu, Linear(48, 48), F.gelu, Linear(10, 48))


class IdentityPlusLinear(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.fc = Linear(d, d)

    def forward(self, x):
        return x + self.fc(x)


class ConvexHalf(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.fc = Linear(d, d)

    def forward(self, x):
        return 0.5 * x + 0.5 * self.fc(rms_divide(x))


class ResidualStack(nn.Module):
    def __init__(self, L, multiplier, d=32):
        super().__init__()
        self.fcs = nn.ModuleList(Linear(d, d) for _ in range(L))
        self.L, self.multiplier = L, multiplier

    def forward(self, x):
        for fc in self.fcs:
            branch = torch.abs(fc(rms_divide(x)))
            x = (1 - 1 / self.L) * x + (1 / self.L) * branch if self.multiplier else x + branch
        return x


class AttentionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention(num_heads=2, d_embed=16, d_query=8, d_value=8, context=8)

    def forward(self, x):
        return self.attn(x)


CONFIGS = {
    "MLP_Linear_ReLU_Linear": (mlp_relu, (4, 24)),
    "MLP_Linear_ScaledReLU_Linear": (mlp_scaled_relu, (4, 24)),
    "MLP_Linear_ScaledGELU_Linear": (mlp_scaled_gelu, (4, 24)),
    "MLP_unequal_mass": (mlp_unequal_mass, (4, 24)),
    "Residual_Identity_plus_Linear": (IdentityPlusLinear, (4, 32)),
    "Residual_convex_half": (ConvexHalf, (4, 32)),
    "Attention_only": (AttentionOnly, (2, 8, 16)),
    **{f"ResidualStack_{'convex' if m else 'no_multiplier'}_L{L}": ((lambda L=L, m=m: ResidualStack(L, m)), (4, 32))
       for L in (2, 4, 8) for m in (True, False)},
}
