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


# ------------------------------------------------------------------------------------------------ rotary
def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Rotary(torch.nn.Module):
    """Llama's rotary embedding on (B, T, D): y = x cos + rotate_half(x) sin, tables from the positions."""

    def __init__(self, dim=16, tables=None):
        super().__init__()
        self.dim, self.tables = dim, tables

    def forward(self, x):
        if self.tables is not None:
            cos, sin = self.tables
        else:
            freqs = torch.arange(x.shape[1], dtype=torch.float32, device=x.device)[:, None] / 10000 ** (
                torch.arange(0, self.dim, 2, dtype=torch.float32, device=x.device) / self.dim)
            angles = torch.cat((freqs, freqs), dim=-1)
            cos, sin = angles.cos(), angles.sin()
        return x * cos + _rotate_half(x) * sin


def _measured_gain(model, x, steps=40):
    """Power iteration on JᵀJ (the map is linear in x): the largest per-position RMS ratio it reaches."""
    best, v = 0.0, torch.randn_like(x)
    for _ in range(steps):
        v = v / v.norm()
        _, jv = torch.func.jvp(model, (x,), (v,))
        _, pullback = torch.func.vjp(model, x)
        (v,) = pullback(jv)
        _, out = torch.func.jvp(model, (x,), (v,))
        best = max(best, float((out.pow(2).mean(-1).sqrt().max() / v.pow(2).mean(-1).sqrt().max())))
    return best


def test_rotary_embedding_is_one_op_whose_constant_is_the_rotation():
    """The path sum would count |cos| + |sin| (up to sqrt 2 here, 2 in general); each coordinate pair is rotated,
    so the certified constant is the largest 2x2 block norm: 1 for cos/sin of the same angle (up to float32)."""
    model, x = Rotary(), torch.randn(2, 6, 16)
    analysis = modnorm.analyze(model, x)
    (rotary,) = [op for op in analysis.ops if "rotary" in op.tags]
    assert rotary.lipschitz[0] == pytest.approx(1.0, abs=1e-6) and rotary.design == rotary.lipschitz
    assert _measured_gain(model, x.double()) <= rotary.lipschitz[0] + 1e-9
    assert not [op for op in analysis.ops if op.target in ("torch.cat", "_operator.neg")]  # absorbed


def test_rotary_with_tables_that_are_not_a_rotation_gets_their_block_norm():
    """cos and sin drawn at random (not of one angle): the 2x2 blocks stretch, the bound is the largest block's
    norm, and the measured gain reaches it (power iteration finds the worst pair)."""
    torch.manual_seed(0)
    tables = (torch.randn(6, 16) * 0.7, torch.randn(6, 16) * 0.7)
    model, x = Rotary(tables=tables), torch.randn(1, 6, 16)
    (rotary,) = [op for op in modnorm.analyze(model, x).ops if "rotary" in op.tags]
    measured = _measured_gain(model, x.double())
    assert measured <= rotary.lipschitz[0] * (1 + 1e-6)
    assert measured >= 0.9 * rotary.lipschitz[0]  # tight: the bound is exact for this linear map


class BufferedRotary(torch.nn.Module):
    """The tables from an `inv_freq` buffer, as Hugging Face writes them: built on meta, its values are unknown."""

    def __init__(self, dim=16):
        super().__init__()
        self.register_buffer("inv_freq", 1 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def forward(self, x):
        freqs = torch.arange(x.shape[1], dtype=torch.float32, device=x.device)[:, None] * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return x * angles.cos() + _rotate_half(x) * angles.sin()


def test_rotary_on_meta_keeps_the_two_terms_apart_for_its_certified_constant():
    """No table values on meta: certified max|cos| + max|sin| = 2 (cos and sin of anything are at most 1), design
    1 (the rotation it is built to be)."""
    with torch.device("meta"):
        model = BufferedRotary()
    analysis = modnorm.analyze(model, torch.randn(2, 6, 16, device="meta"))
    (rotary,) = [op for op in analysis.ops if "rotary" in op.tags]
    assert rotary.lipschitz == (2.0,) and rotary.design == (1.0,)


def test_rotate_half_read_by_other_ops_is_not_absorbed():
    """rotate_half(x) also returned: the group would hide a node another op reads, so it is not fused."""

    class Leaky(Rotary):
        def forward(self, x):
            angles = torch.zeros(x.shape[1], self.dim)
            rotated = _rotate_half(x)
            return x * angles.cos() + rotated * angles.sin(), rotated

    analysis = modnorm.analyze(Leaky(), torch.randn(2, 6, 16))
    assert not [op for op in analysis.ops if "rotary" in op.tags]
