"""Sound before pretty: what the model really does (measured with autograd) never exceeds the certified bound.

Norm: the RMS over the feature axis, maximised over positions (theory.md §f). The measurement is a lower
estimate of the true Lipschitz constant in that norm: power iteration on JᵀJ (jvp/vjp) from several random
unit-RMS inputs gives directions Δx; each gives the ratio ‖JΔx‖ / ‖Δx‖, and the largest ratio must stay below
the static bound. The ratio measured/bound (tightness) is printed.
"""

import importlib.util
import math
import sys

import pytest
import torch
from torch.func import jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

import modnorm
from tests.conftest import FIXTURES, ROOT
from tests.models import modula_composites


def max_position_rms(t, fdim):
    t = t.movedim(fdim, -1)
    return t.pow(2).mean(-1).sqrt().max()


def measured_lipschitz(f, x, fdim_in, fdim_out, steps=30):
    """Lower estimate of sup ‖J Δx‖ / ‖Δx‖ in the max-position RMS norms, by power iteration on JᵀJ."""
    best = 0.0
    v = torch.randn_like(x)
    for _ in range(steps):
        v = v / v.norm()
        _, jv = jvp(f, (x,), (v,))
        _, pullback = vjp(f, x)
        (v,) = pullback(jv)
        for direction in (v, v.sign() * v.abs().amax()):
            _, out = jvp(f, (x,), (direction,))
            ratio = float((max_position_rms(out, fdim_out) / max_position_rms(direction, fdim_in)).detach())
            best = max(best, ratio)
    return best


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def _continuous_fixtures():
    # Built at collection time, outside the autouse seed: seed here so the weights are the same on every run.
    torch.manual_seed(0)
    cases = []
    for path in FIXTURES:
        module = _load(path)
        model = module.build_model() if hasattr(module, "build_model") else module.Model()
        x = module.example_inputs(model)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            cases.append(pytest.param(model.eval().double(), x.double(), id=path.stem))
    for name, (factory, shape) in modula_composites.CONFIGS.items():
        cases.append(pytest.param(factory().double(), torch.randn(shape, dtype=torch.float64), id=name))
    return cases


@pytest.mark.parametrize("model, x", _continuous_fixtures())
def test_network_sensitivity_bound_holds(model, x):
    analysis = modnorm.analyze(model, x)
    bound = analysis.network.sensitivity
    fdim = 1 if x.dim() == 4 else -1
    worst = 0.0
    for trial in range(4):
        point = torch.randn_like(x)
        point = point / max_position_rms(point, fdim) * (0.3 + 0.7 * trial / 3)  # inside the unit ball
        out_fdim = -1
        with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD needs sdpa's math kernel on the CPU
            worst = max(worst, measured_lipschitz(model, point, fdim, out_fdim))
    print(f"network: measured {worst:.4g} bound {bound:.4g} tightness {worst / bound if bound else 0:.3g}")
    if not math.isfinite(bound):
        assert not analysis.network.certified
        return
    assert worst <= bound * (1 + 1e-6), f"measured {worst} > bound {bound}"


@pytest.mark.parametrize("model, x", _continuous_fixtures())
def test_every_atom_bound_holds(model, x):
    """Each atom's sensitivity (its effective operator norm) bounds the atom alone, measured on real weights."""
    analysis = modnorm.analyze(model, x)
    for layer in analysis.layers:
        if layer.kind not in ("Linear", "Conv2d"):
            continue
        if analysis.op(layer.op).source.startswith("Linear over a position axis"):
            continue  # mixes positions (MLP-Mixer): bounded in the ∞→∞ norm, measured in place by the network test
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:  # a packed weight (nn.MultiheadAttention's in_proj_weight): the atom is F.linear
            params = dict(model.named_parameters())
            weight, bias = params[layer.weight], params.get(layer.weight.replace("weight", "bias"))
            module = lambda z, w=weight, b=bias: torch.nn.functional.linear(z, w, b)  # noqa: E731
        fan_in = layer.shape[1] * (1 if layer.kind == "Linear" else 1)
        side = max(6, *layer.shape[2:]) if layer.kind == "Conv2d" else 0
        probe = torch.randn(2, fan_in, side, side, dtype=torch.float64) if layer.kind == "Conv2d" else \
            torch.randn(4, fan_in, dtype=torch.float64)
        fdim = 1 if layer.kind == "Conv2d" else -1
        measured = measured_lipschitz(module, probe, fdim, fdim, steps=100 if layer.kind == "Linear" else 30)
        print(f"{layer.name}: measured {measured:.4g} bound {layer.sensitivity:.4g}")
        assert measured <= layer.sensitivity * (1 + 1e-6)
        if layer.kind == "Linear":  # the spectral bound is attained: power iteration finds it
            assert measured >= 0.99 * layer.sensitivity
