"""Atom kinds (modnorm.atoms): the natural norm of each kind, by hand on small weights, and the callers that must
agree with it (probe's perturbation directions on a grouped conv and on GPT-2's transposed Conv1D)."""

import math

import pytest
import torch
from torch import nn

import modnorm
from modnorm import atoms
from modnorm.probe import _natural_norm


def test_linear_norm_is_scaled_spectral_norm():
    # W = [[2,0,0,0],[0,1,0,0]]: σ_max = 2, in/out = 4/2, scale 0.5 -> 0.5 · √2 · 2 = √2
    w = torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert atoms.Linear((2, 4), scale=0.5).norm(w) == pytest.approx(math.sqrt(2))
    # the same map stored (in, out) as GPT-2's Conv1D keeps it: fans are read the other way round
    assert atoms.Linear((4, 2), scale=0.5, transposed=True).norm(w.T) == pytest.approx(math.sqrt(2))
    assert atoms.Linear((4, 2), transposed=True).fans() == (2, 4)


def test_grouped_conv_norm_uses_in_channels_times_groups():
    # Conv1d(2 -> 4, kernel 3, groups 2): weight (4, 1, 3); each (position, group) slice is a (2, 1) column of
    # ones, σ = √2; k = 3, fan_in = 1·2 = 2, fan_out = 4 -> 3 · √(2/4) · √2 = 3
    w = torch.ones(4, 1, 3)
    conv = atoms.Conv((4, 1, 3), groups=2)
    assert conv.fans() == (4, 2)
    assert conv.norm(w) == pytest.approx(3.0)
    assert atoms.Conv.kind_of((4, 1, 3)) == "Conv1d" and atoms.Conv.kind_of((4, 1, 3, 3, 3)) == "Conv3d"


def test_conv_norm_bounds_the_measured_operator_norm():
    """The natural norm of a conv bounds its RMS -> RMS gain, measured by power iteration (zero padding)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False).double()
    bound = atoms.Conv(tuple(conv.weight.shape), groups=2).norm(conv.weight)
    x = torch.randn(1, 4, 8, 8, dtype=torch.double)
    with torch.no_grad():
        for _ in range(50):  # power iteration on conv and its adjoint: the largest ℓ2 gain over whole images
            x = torch.nn.grad.conv2d_input(x.shape, conv.weight, conv(x), padding=1, groups=2)
            x = x / x.norm()
        gain = float(conv(x).norm() / x.norm()) * math.sqrt(4 / 6)  # ℓ2 over (pixels, features) -> RMS: √(in/out)
    assert gain <= bound * (1 + 1e-9)


def test_embedding_and_gain_norms():
    table = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # row RMS: √12.5, √0.5
    assert atoms.Embedding((2, 2), scale=2.0).norm(table) == pytest.approx(2 * math.sqrt(12.5))
    assert atoms.Gain((3,)).norm(torch.tensor([0.5, -2.0, 1.0])) == 2.0


def test_batched_expert_weights_take_the_largest_expert():
    w = torch.stack([torch.eye(3), 5 * torch.eye(3)])  # two experts, σ 1 and 5, square: factor 1
    assert atoms.make_atom("Batched", (2, 3, 3)).norm(w) == pytest.approx(5.0)


def test_unknown_kind_says_how_to_register_it():
    with pytest.raises(KeyError, match="register_atom_kind"):
        atoms.make_atom("Bilinear", (2, 2))


def _probe_matches_analysis(model, x):
    """probe's natural norm of each atom's own weight equals the norm the analysis measured for it."""
    analysis = modnorm.analyze(model, x)
    params = dict(model.named_parameters())
    checked = 0
    for layer in analysis.layers:
        if layer.norm_source == "measured" and layer.kind != "Gain":
            assert _natural_norm(layer, params[layer.weight]) == pytest.approx(layer.norm_at_init, rel=1e-3), layer
            checked += 1
    return checked


def test_probe_norm_respects_groups():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.ReLU(), nn.Conv2d(8, 8, 1, groups=2))
    assert _probe_matches_analysis(model, torch.randn(2, 4, 6, 6)) == 2


def test_probe_norm_respects_gpt2_conv1d_storage():
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(Conv1D(24, 8), nn.ReLU(), Conv1D(4, 24))  # (nf=out, nx=in): weights stored (in, out)
    assert _probe_matches_analysis(model, torch.randn(2, 5, 8)) == 2
