"""Specifications of the shape-only operand: `view_as(y)`, `reshape_as(y)`, `expand_as(y)` do not move with y's
values. Before issue 17 the shape operand got an infinite constant (timm LeViT's sensitivity was `inf` with no
finding). Expected: constant 0 for y (the output does not depend on its values), and a finite, certified network.
"""

import math

import torch
from torch import nn

import modnorm


class ShapeOperand(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.fc = nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.spelling == "expand_as":
            return x[:, :1].expand_as(y)
        return getattr(x, self.spelling)(y)


def test_a_shape_only_operand_has_constant_zero():
    for spelling in ("view_as", "reshape_as", "expand_as"):
        analysis = modnorm.analyze(ShapeOperand(spelling), torch.randn(2, 5, 8))
        op = next(o for o in analysis.ops if spelling in o.target)
        assert op.lipschitz == (1.0, 0.0), (spelling, op.lipschitz)
        assert math.isfinite(analysis.network.sensitivity) and analysis.network.certified
