"""Composite operations written inline are recognised as one op, in at least two spellings each."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm


class Lambda(nn.Module):
    def __init__(self, fn, width=16):
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.fc(x))


def kinds(fn, shape=(2, 16)):
    analysis = modnorm.analyze(Lambda(fn), torch.randn(shape), profile="certified")  # the unconditional constants
    return [op.target for op in analysis.ops if op.kind not in ("input", "output", "atom")], analysis


@pytest.mark.parametrize("fn", [
    lambda x: x / x.square().mean(-1, keepdim=True).sqrt(),
    lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    lambda x: x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt(),
], ids=["square-sqrt", "rsqrt-eps", "sqrt-eps"])
def test_rms_normalization_is_one_op(fn):
    targets, analysis = kinds(fn)
    assert targets == ["rms_norm (pattern)"]
    op = next(op for op in analysis.ops if "normalization" in op.tags)
    eps = op.info["eps"]
    # certified constant: 1 / sqrt(floor² + eps) with no lower bound on the input RMS
    # (docs/theory/constants.md#normalization)
    assert op.lipschitz[0] == (math.inf if eps == 0 else pytest.approx(1 / math.sqrt(eps)))


@pytest.mark.parametrize("fn", [
    lambda x: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5),
    lambda x: (lambda c: c / c.square().mean(-1, keepdim=True).add(1e-5).sqrt())(x - x.mean(-1, keepdim=True)),
], ids=["var", "centred-ms"])
def test_layer_norm_by_hand_is_mean_subtract_then_rms(fn):
    targets, _ = kinds(fn)
    assert targets[0] == "mean_subtract (pattern)" and targets[-1] == "rms_norm (pattern)"


@pytest.mark.parametrize("fn", [
    lambda x: x - x.mean(-1, keepdim=True),
    lambda x: torch.sub(x, torch.mean(x, -1, keepdim=True)),
], ids=["method", "function"])
def test_mean_subtraction_is_a_projection(fn):
    targets, analysis = kinds(fn)
    assert targets == ["mean_subtract (pattern)"]
    assert analysis.network.sensitivity == pytest.approx(analysis.layers[0].sensitivity)  # projection: 1


def _attention(scale_style):
    def fn(x):
        q = k = v = x.view(2, 4, 2, 8).transpose(1, 2)
        if scale_style == "mul":
            logits = (q @ k.transpose(-2, -1)) * (1 / 8)
        else:
            logits = q @ k.transpose(-2, -1) / 8
        return (F.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(2, 4, 16)
    return fn


@pytest.mark.parametrize("style", ["mul", "div"])
def test_attention_by_hand_is_one_op_with_its_scale(style):
    analysis = modnorm.analyze(Lambda(_attention(style)), torch.randn(2, 4, 16))
    attention = [op for op in analysis.ops if "attention" in op.tags]
    assert len(attention) == 1 and attention[0].info["scale"] == pytest.approx(1 / 8)


def test_attention_needs_the_key_transposed_on_its_last_two_axes():
    """q @ k.transpose(0, 1) on 3-D tensors swaps batch and tokens; it is not kᵀ, so no attention is fused (before
    the fix any transpose was accepted). The shapes only line up because B = T = C = 8."""
    def swapped(x):  # (B, T, C)
        return F.softmax(x @ x.transpose(0, 1) / 8, dim=-1) @ x

    def attention(x):
        return F.softmax(x @ x.transpose(1, 2) / 8, dim=-1) @ x

    x = torch.randn(8, 8, 8)
    fused = {name: [op for op in modnorm.analyze(Lambda(fn, width=8), x).ops if "attention" in op.tags]
             for name, fn in (("swapped", swapped), ("attention", attention))}
    assert fused["swapped"] == [] and len(fused["attention"]) == 1


class ScaledLinear(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.fc, self.spelling = nn.Linear(16, 16, bias=False), spelling

    def forward(self, x):
        return self.fc(x) * 0.25 if self.spelling == "mul" else self.fc(x) / 4


@pytest.mark.parametrize("spelling", ["mul", "div"])
def test_constant_multiplier_is_part_of_the_atom(spelling):
    model = ScaledLinear(spelling)
    analysis = modnorm.analyze(model, torch.randn(2, 16))
    layer = analysis.layers[0]
    spectral = torch.linalg.matrix_norm(model.fc.weight.detach().double(), ord=2).item()
    assert layer.scale == pytest.approx(0.25) and layer.norm_at_init == pytest.approx(0.25 * spectral, rel=1e-6)
    assert layer.downstream_sensitivity == pytest.approx(1.0)  # the 1/4 is inside the atom, not downstream


def test_constant_feeding_a_residual_merge_stays_a_branch_coefficient():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16, bias=False)

        def forward(self, x):
            return 0.75 * x + self.fc(x) * 0.25

    analysis = modnorm.analyze(Block(), torch.randn(2, 16))
    (merge,) = analysis.merges
    assert (merge.skip_coefficient, merge.branch_coefficient) == (0.75, 0.25)
    assert analysis.layers[0].downstream_sensitivity == pytest.approx(0.25)
