"""Sound before pretty: what the model really does (measured with autograd) never exceeds the certified bound.

Norm: the RMS over the feature axis, maximised over positions (docs/theory/modular-norm.md#norms). The measurement is a lower
estimate of the true Lipschitz constant in that norm: power iteration on JᵀJ (jvp/vjp) from several random
unit-RMS inputs gives directions Δx; each gives the ratio ‖JΔx‖ / ‖Δx‖, and the largest ratio must stay below
the static bound. The ratio measured/bound (tightness) is printed.

Models on continuous inputs are measured from their input; models on token ids (nanoGPT, Llama, the tied LM,
Modula's GPT) from each embedding's output, whose downstream sensitivity bounds how the logits move. Every atom kind
is measured alone: Linear, Conv1d, Conv2d, Embedding (ℓ1 → RMS: the largest row), and the gains of normalizations.

The points are random in the whole unit ball, so these tests check the unconditional `certified` profile; the
default `assumed` profile's normalizer constants are checked where their floors hold (tests/test_assumptions.py).
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
from torch import nn

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


class Conv1dNet(nn.Module):
    """No fixture uses Conv1d: a small 1-d convolutional net (one grouped layer) with a LayerNorm over channels,
    on (B, L, C) sequences like a transformer's (the convolutions see (B, C, L))."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 6, 5, padding=2, groups=2)
        self.norm = nn.LayerNorm(6, eps=0.01)

    def forward(self, x):  # (B, L, 4)
        y = self.b(torch.tanh(self.a(x.transpose(1, 2))))  # (B, 6, L)
        return self.norm(y.transpose(1, 2))  # (B, L, 6)


def _fixtures(token_ids: bool):
    # Built at collection time, outside the autouse seed: seed here so the weights are the same on every run.
    torch.manual_seed(0)
    cases = []
    for path in FIXTURES:
        module = _load(path)
        model = module.build_model() if hasattr(module, "build_model") else module.Model()
        x = module.example_inputs(model)
        if isinstance(x, torch.Tensor) and x.is_floating_point() != token_ids:
            cases.append(pytest.param(model.eval().double(), x if token_ids else x.double(), id=path.stem))
    return cases


# Several CPU seconds each (gradient ascent on a deep or wide model): CI's slow step. The small fixtures and
# composites stay in the default run.
SLOW_CONTINUOUS_MODELS = {"sqrt_depth_resmlp", "vit", "resnet_bn", "torch_transformer", "mlp_mixer",
                          "ResidualStack_convex_L8", "ResidualStack_convex_L4", "ResidualStack_no_multiplier_L8"}


def _continuous_fixtures():
    return [pytest.param(*case.values, id=case.id, marks=pytest.mark.slow) if case.id in SLOW_CONTINUOUS_MODELS
            else case for case in _all_continuous_fixtures()]


def _all_continuous_fixtures():
    cases = _fixtures(token_ids=False)
    torch.manual_seed(0)
    for name, (factory, shape) in modula_composites.CONFIGS.items():
        cases.append(pytest.param(factory().double(), torch.randn(shape, dtype=torch.float64), id=name))
    cases.append(pytest.param(Conv1dNet().double(), torch.randn(2, 16, 4, dtype=torch.float64), id="conv1d_net"))
    return cases


# Tens of CPU seconds each: CI's slow step. tied_lm (a few seconds) runs by default. (bert_encoder takes a
# tuple of ids and mask and is not collected here.)
SLOW_TOKEN_MODELS = {"nanogpt", "llama_block", "modula_gpt", "sweep_nanogpt", "sweep_modula_gpt"}


def _token_fixtures():
    return [pytest.param(*case.values, id=case.id, marks=pytest.mark.slow) if case.id in SLOW_TOKEN_MODELS else case
            for case in _fixtures(token_ids=True)]


def first_output(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("model, x", _continuous_fixtures())
def test_network_sensitivity_bound_holds(model, x):
    analysis = modnorm.analyze(model, x, profile="certified")  # random points in the ball: no floor assumed
    bound = analysis.network.sensitivity
    fdim = 1 if x.dim() == 4 else -1
    worst = 0.0
    for trial in range(4):
        point = torch.randn_like(x)
        point = point / max_position_rms(point, fdim) * (0.3 + 0.7 * trial / 3)  # inside the unit ball
        out_fdim = -1
        with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD needs sdpa's math kernel on the CPU
            worst = max(worst, measured_lipschitz(lambda z: first_output(model(z)), point, fdim, out_fdim))
    print(f"network: measured {worst:.4g} bound {bound:.4g} tightness {worst / bound if bound else 0:.3g}")
    if not math.isfinite(bound):
        assert not analysis.network.certified
        return
    assert worst <= bound * (1 + 1e-6), f"measured {worst} > bound {bound}"


def input_shape_of(model, x, module):
    """The shape of what `module` receives when the model runs on `x`."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    handle.remove()
    return seen[0]


def check_atoms_alone(model, x, analysis, kinds_to_measure=("Linear", "Conv1d", "Conv2d", "Embedding", "Gain")):
    """Each atom's sensitivity (its effective operator norm) bounds the atom alone, measured on real weights."""
    kinds = set()
    for layer in analysis.layers:
        if layer.kind not in kinds_to_measure:
            continue
        if layer.kind in ("Linear", "Conv1d", "Conv2d"):
            measured = measure_matrix_atom(model, analysis, layer)
        elif layer.kind == "Embedding":
            measured = measure_embedding(model, layer)
        elif layer.kind == "Gain":
            measured = measure_gain(model, x, analysis, layer)
        else:
            continue
        if measured is None:
            continue
        kinds.add(layer.kind)
        print(f"{layer.name} ({layer.kind}): measured {measured:.4g} bound {layer.sensitivity:.4g}")
        assert measured <= layer.sensitivity * (1 + 1e-6), (layer.name, measured, layer.sensitivity)
        if layer.kind in ("Linear", "Embedding"):  # these bounds are attained: the measurement finds them
            assert measured >= 0.99 * layer.sensitivity, (layer.name, measured, layer.sensitivity)
    return kinds


def measure_matrix_atom(model, analysis, layer):
    if analysis.op(layer.op).source.startswith("Linear over a position axis"):
        return None  # mixes positions (MLP-Mixer): bounded in the ∞→∞ norm, measured in place by the network test
    try:
        module = model.get_submodule(layer.name)
    except AttributeError:  # a packed weight (nn.MultiheadAttention's in_proj_weight): the atom is F.linear
        params = dict(model.named_parameters())
        weight, bias = params[layer.weight], params.get(layer.weight.replace("weight", "bias"))
        module = lambda z, w=weight, b=bias: torch.nn.functional.linear(z, w, b)  # noqa: E731
    fan_in = layer.shape[1] * getattr(module, "groups", 1)
    if layer.kind == "Linear":
        probe, fdim = torch.randn(4, fan_in, dtype=torch.float64), -1
    elif layer.kind == "Conv1d":
        probe, fdim = torch.randn(2, fan_in, max(8, 2 * layer.shape[2]), dtype=torch.float64), 1
    else:
        side = max(6, *layer.shape[2:])
        probe, fdim = torch.randn(2, fan_in, side, side, dtype=torch.float64), 1
    return measured_lipschitz(module, probe, fdim, fdim, steps=100 if layer.kind == "Linear" else 30)


def measure_embedding(model, layer):
    """ℓ1 → RMS: a one-hot input's unit ℓ1 ball has the tokens as extreme points, so the operator norm is the
    largest RMS of the module's output over all token ids (forward scale included): exact, not an estimate."""
    module = model.get_submodule(layer.name)
    with torch.no_grad():
        rows = module(torch.arange(layer.shape[0]))
    return float(rows.double().pow(2).mean(-1).sqrt().max())


def measure_gain(model, x, analysis, layer):
    """A gain w is either folded into its normalization module (nn.LayerNorm, a module named *Norm: the atom's
    constant is the normalization's, ‖w‖_∞ / max(input RMS floor, √eps)) or a separate multiply `y * w` (an inline
    RMSNorm: its constant is ‖w‖_∞). The first is measured on the module alone at inputs whose RMS is the lower
    bound the forward pass proved for it (0.05 when none: the bound is then ‖w‖_∞/√eps) and twice that; the second
    on z ↦ z ⊙ w."""
    op = analysis.op(layer.op)
    weight = dict(model.named_parameters())[layer.weight].detach().double()
    if op.source.startswith("diagonal gain"):
        return measured_lipschitz(lambda z: z * weight, torch.randn(4, weight.numel(), dtype=torch.float64), -1, -1)
    try:
        module = model.get_submodule(layer.name)
    except AttributeError:
        return None
    if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and "norm" not in type(module).__name__.lower():
        return None
    shape = input_shape_of(model, x, module)
    floor = max(analysis.op(op.inputs[0]).lower, 0.05)
    worst = 0.0
    for rms in (floor, 2 * floor):
        point = torch.randn(shape, dtype=torch.float64)
        point = point / point.pow(2).mean(-1, keepdim=True).sqrt() * rms
        worst = max(worst, measured_lipschitz(module, point, -1, -1, steps=12))
    return worst


@pytest.mark.parametrize("model, x", _continuous_fixtures())
def test_every_atom_bound_holds(model, x):
    check_atoms_alone(model, x, modnorm.analyze(model, x, profile="certified"))  # the unconditional constants


@pytest.mark.parametrize("model, tokens", _token_fixtures())
def test_token_models_are_bounded_from_each_embedding(model, tokens):
    """For a model on token ids, a perturbation enters where an embedding's output does: the logits move by at most
    S_down(embedding) times its size. Measured by adding Δ to the embedding's output (a forward hook)."""
    analysis = modnorm.analyze(model, tokens, profile="certified")
    embeddings = [layer for layer in analysis.layers if layer.kind == "Embedding"]
    assert embeddings
    for layer in embeddings:
        module = model.get_submodule(layer.name)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            shape = module(torch.zeros_like(tokens)).shape  # what the embedding hands on, e.g. (B, T, C)
        perturbation = {}
        handle = module.register_forward_hook(lambda _m, _args, out: out + perturbation["delta"].to(out.dtype))

        def logits(delta):
            perturbation["delta"] = delta
            return first_output(model(tokens))

        try:
            with sdpa_kernel(SDPBackend.MATH):
                measured = measured_lipschitz(logits, torch.zeros(shape, dtype=torch.float64), -1, -1, steps=8)
        finally:
            handle.remove()
        bound = layer.downstream_sensitivity
        print(f"{layer.name}: logits move by {measured:.4g} per unit; S_down bound {bound:.4g}")
        if math.isfinite(bound):
            assert 0 < measured <= bound * (1 + 1e-6), (layer.name, measured, bound)
        else:
            assert not analysis.network.certified
    kinds = check_atoms_alone(model, tokens, analysis, ("Embedding", "Gain"))  # Linear: the continuous models
    assert "Embedding" in kinds
