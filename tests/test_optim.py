"""modnorm.optim: after a normalized step every atom moved by exactly lr × its target in its natural norm, so the
whole update has modular norm lr; with Modula's profile the update is Modula's normalized gradient.

Every update is measured here independently of modnorm.optim: a float64 SVD of (after − before), with each atom's
forward multiplier written out from the fixture's source, and the natural norms of docs/theory/constants.md#atoms.
"""

import importlib.util
import math
import sys

import pytest
import torch

import modnorm
from modnorm.optim import ModularNormalized, orthogonalize
from tests.conftest import ROOT
from tests.test_reference import OK, _model_and_options


def fixture(name):
    spec = importlib.util.spec_from_file_location(f"optim_{name}", ROOT / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "fixtures"))
    spec.loader.exec_module(module)
    model = module.build_model() if hasattr(module, "build_model") else module.Model()
    return model, module.example_inputs(model)


def loss_of(model, x):
    out = model(*x) if isinstance(x, tuple) else model(x)
    out = out[0] if isinstance(out, tuple) else out
    return out.pow(2).mean() if out.is_floating_point() else out.sum()


# The constant each fixture multiplies an atom's output by in `forward`, read from the fixture's source:
# clean_mlp and modula_rescnn use Modula's atoms (Linear √(out/in), Conv2D √(out/in)/k²); the others none.
MULTIPLIERS = {
    "clean_mlp": {"fc1": math.sqrt(64 / 24), "fc2": 1.0, "fc3": math.sqrt(10 / 64)},
    "modula_rescnn": {"conv_in": math.sqrt(8 / 3) / 9, "blocks.0.convs.0": 1 / 9, "blocks.1.convs.0": 1 / 9,
                      "fc": math.sqrt(10 / 8)},
    "resnet_bn": {},
    "llama_block": {},
}


def svd_natural_norm(kind: str, delta: torch.Tensor, multiplier: float) -> float:
    """The operator norm of the effective map `multiplier · delta` between RMS norms (max over positions), by float64
    SVD: Linear √(in/out)·σ_max; Conv k_size·√(in/out)·max over kernel positions of σ_max; Embedding (ℓ1 → RMS)
    the largest row RMS; a gain diag(w) max |w|."""
    d = delta.detach().double()
    if kind == "Gain":
        return multiplier * float(d.abs().max())
    if kind == "Embedding":
        return multiplier * float(d.pow(2).mean(1).sqrt().max())
    fan_out, fan_in = d.shape[:2]
    positions = d.flatten(2).permute(2, 0, 1) if d.dim() > 2 else d.unsqueeze(0)  # (k_size, out, in)
    sigma = float(torch.linalg.svdvals(positions)[:, 0].max())
    return multiplier * positions.shape[0] * math.sqrt(fan_in / fan_out) * sigma


BASES = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", ["clean_mlp", "modula_rescnn", "resnet_bn", "llama_block"])
def test_every_atom_moves_by_lr_times_its_target(name, base):
    model, x = fixture(name)
    model = model.double()  # float64 so that (after - before) measures the update to 1e-9
    x = x.double() if x.is_floating_point() else x
    analysis = modnorm.analyze(model, x)  # the targets the report prints
    atoms = [l for l in analysis.layers if 0 < l.target_norm < math.inf]
    assert atoms
    opt = ModularNormalized(BASES[base](model.parameters()), model, analysis, lr=0.02, norm="exact")
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    loss_of(model, x).backward()
    silent = {l.name for l in atoms if not params[l.weight].grad.any()}  # no gradient (e.g. behind a zero init)
    opt.step()
    # An atom with a bias shares its step: the output changes by at most ‖ΔW‖·‖x‖ + |c|·‖Δb‖_RMS, so each gets
    # lr·t/2 and the sum, the atom's step, is lr·t (tests/test_optim_bounds.py measures the output change).
    steps = {}
    for layer in atoms:
        multiplier = MULTIPLIERS[name].get(layer.name, 1.0)
        weight_step = svd_natural_norm(layer.kind, params[layer.weight] - before[layer.weight], multiplier)
        bias = next((b for b in layer.params if b != layer.weight and b.endswith("bias")), None)
        share = 0.5 if bias else 1.0
        moved = multiplier * float((params[bias] - before[bias]).pow(2).mean().sqrt()) if bias else 0.0
        if bias and layer.name not in silent:
            assert moved == pytest.approx(0.02 * layer.target_norm * (1 - share), rel=1e-6), bias
        if layer.name in silent and base in ("sgd", "momentum"):
            assert weight_step == 0, layer.name
        elif layer.name not in silent:
            assert weight_step == pytest.approx(0.02 * layer.target_norm * share, rel=1e-6), layer.name
        steps[layer.name] = weight_step + moved
    modular_norm = max(steps[l.name] / l.target_norm for l in atoms)
    assert modular_norm == pytest.approx(0.02, rel=1e-6)


def test_targets_are_the_ones_the_report_prints():
    from modnorm.check import check_model
    from modnorm.config import Settings

    model, x = fixture("nanogpt")
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    printed = [l.target_norm for l in check_model(str(ROOT / "fixtures/nanogpt.py"), Settings()).analysis.layers
               if l.target_norm > 0]
    assert sorted(a.target for a in opt.atoms) == pytest.approx(sorted(printed), rel=1e-9)


def test_hidden_mass_moves_feature_learning_to_the_hidden_atoms():
    """The paper's 1:m:1 (Modula's GPT default m = 5): input atoms share mass 1, hidden atoms m, output atoms 1, and
    t_i = (m_i/M)/S_down(i) with S_down unchanged, so going from m = 1 to 5 multiplies every hidden target by
    (5/7)/(1/3) = 15/7 and every input and output target by (1/7)/(1/3) = 3/7; the choice is printed."""
    model, x = fixture("nanogpt")
    one = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    five = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x, hidden_mass=5)
    roles = {l.name: l.role for l in modnorm.analyze(model, x).layers}
    for a, b in zip(one.atoms, five.atoms):
        expected = 15 / 7 if roles[a.name] == "hidden" else 3 / 7
        assert b.target / a.target == pytest.approx(expected, rel=1e-9), (a.name, roles[a.name])
    assert "hidden mass 5" in five.describe() and "hidden mass 1" in one.describe()
    with pytest.raises(ValueError, match="hidden_mass"):
        ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, modnorm.analyze(model, x),
                          hidden_mass=5)


def modula_update(kind: str, grad: torch.Tensor, target: float) -> torch.Tensor:
    """Modula's `normalize(−G, target)` in its own parameterization (its forward scale cancels the RMS factors):
    Linear scales G to spectral norm t; Conv2D scales each kernel slice G[:, :, i, j] to spectral norm t;
    Embedding scales each row to ℓ2 norm t. Exact SVD here; Modula itself uses one power-iteration step."""
    g = grad.double()
    if kind == "Linear":
        return -target * g / torch.linalg.matrix_norm(g, 2)
    if kind == "Conv2D":
        slices = torch.linalg.matrix_norm(g.permute(2, 3, 0, 1), 2)  # (k, k)
        return -target * g / slices
    return -target * g / g.norm(dim=1, keepdim=True)  # Embedding


def natural_sizes(kind: str, delta: torch.Tensor) -> torch.Tensor:
    """Per slice (Conv2D kernel position, Embedding row, or the whole Linear) the size Modula normalizes."""
    if kind == "Linear":
        return torch.linalg.matrix_norm(delta, 2).reshape(1)
    if kind == "Conv2D":
        return torch.linalg.matrix_norm(delta.permute(2, 3, 0, 1), 2).flatten()
    return delta.norm(dim=1)


def normalized_sgd_step(config):
    model, x, options = _model_and_options(config)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    analysis = modnorm.analyze(model, x, profile="modula", **options)
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=1.0), model, analysis, lr=0.01, norm="exact")
    # The wrapper recovers the base step as (after − before), exact only to ~1e-16·|w| / |lr · g|, and the base SGD
    # runs at the group lr (0.01, the modular step). At Modula's init the q and k gradients are ~1e-10 (attention is
    # near-uniform), so that rounding is ~1e-5 of the step: the "2e-6 on attn.q" once seen. Scaling the loss leaves
    # every direction unchanged and makes the base step large enough to compare to 1e-9.
    (1e6 * loss_of(model, x)).backward()
    params = dict(model.named_parameters())
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt.step()
    return {n: params[n].detach() - before[n] for n in params}, grads


def check_against_modula(config):
    """modnorm's step with Modula's profile against Modula's normalized gradient, with the targets Modula computed.

    Linear atoms: equal (direction and size). Conv2D and Embedding atoms: Modula normalizes every kernel slice / row
    to the target separately, modnorm.optim scales the whole tensor so its largest slice / row is at the target —
    the same modular norm (every slice ≤ t, the largest = t), the same direction −G, and on the largest slice
    exactly Modula's update; the other slices move less (docs/guides/optim.md#modula)."""
    deltas, grads = normalized_sgd_step(config)
    for atom in config["atoms"]:
        name, kind, target = atom["torch_param"], atom["type"], 0.01 * atom["target_norm"]
        delta, grad = deltas[name], grads[name]
        expected = modula_update(kind, grad, target)
        cosine = torch.nn.functional.cosine_similarity(delta.flatten(), -grad.double().flatten(), dim=0)
        assert cosine > 1 - 1e-12, name
        sizes = natural_sizes(kind, delta)
        assert float(sizes.max()) == pytest.approx(target, rel=1e-9), name
        largest = int(natural_sizes(kind, grad.double()).argmax())
        if kind == "Conv2D":
            i, j = divmod(largest, grad.shape[3])
            delta, expected = delta[:, :, i, j], expected[:, :, i, j]
        elif kind == "Embedding":
            delta, expected = delta[largest], expected[largest]
        # (after − before) in float64 carries the weights' rounding, ~1e-16 of |w| ≈ 1: compare whole tensors
        assert float((delta - expected).norm() / expected.norm()) < 1e-9, name


FAST = [c for c in OK if c["name"] in ("ResMLP_w32_nb2_bd1", "ResCNN_w8_nb2_bd1", "GPT_d16_nb1",
                                        "MLP_unequal_mass", "Attention_only")]


@pytest.mark.parametrize("config", FAST, ids=[c["name"] for c in FAST])
def test_normalized_sgd_is_modulas_normalized_gradient(config):
    check_against_modula(config)


@pytest.mark.slow
@pytest.mark.parametrize("config", OK, ids=[c["name"] for c in OK])
def test_normalized_sgd_is_modulas_normalized_gradient_on_every_reference_config(config):
    check_against_modula(config)


CLEAN_MLP = {"fc1": ("Linear", MULTIPLIERS["clean_mlp"]["fc1"]), "fc2": ("Linear", 1.0),
             "fc3": ("Linear", MULTIPLIERS["clean_mlp"]["fc3"])}


def clean_mlp_steps(model, before):
    """Each clean_mlp atom's step in its natural norm, by float64 SVD (multipliers written out above)."""
    params = dict(model.named_parameters())
    return {name: svd_natural_norm(kind, params[f"{name}.weight"].double() - before[f"{name}.weight"].double(), c)
            for name, (kind, c) in CLEAN_MLP.items()}


def test_dualized_update_is_orthogonal_and_normalized():
    model, x = fixture("clean_mlp")
    model = model.double()
    x = x.double()
    analysis = modnorm.analyze(model, x)
    targets = {l.name: l.target_norm for l in analysis.layers}
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, analysis, lr=0.05, dualize=True,
                            norm="exact")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, x).backward()
    opt.step()
    steps = clean_mlp_steps(model, before)
    assert all(steps[n] == pytest.approx(0.05 * targets[n], rel=1e-6) for n in CLEAN_MLP), (steps, targets)
    # The direction is the orthogonalized gradient: a batch of 4 gives a gradient of rank 4, whose 4 singular values
    # the update equalizes (Newton–Schulz ends with σ in about [0.7, 1.2]), unlike the gradient's own.
    fc2 = model.fc2.weight.detach() - before["fc2.weight"]
    singular = torch.linalg.svdvals(fc2)[:4]
    grad_singular = torch.linalg.svdvals(model.fc2.weight.grad.double())[:4]
    assert float(singular.min() / singular.max()) > 0.5 > float(grad_singular.min() / grad_singular.max())
    g = torch.randn(40, 30, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert 0.6 < singular.min() and singular.max() < 1.3  # quintic Newton–Schulz: σ in about [0.7, 1.2]
    assert (orthogonalize(g) - u @ vh).norm() / (u @ vh).norm() < 0.35


def test_parameter_groups_keep_their_own_step():
    model, x = fixture("clean_mlp")
    model, x = model.double(), x.double()
    analysis = modnorm.analyze(model, x)
    targets = {l.name: l.target_norm for l in analysis.layers}
    groups = [{"params": model.fc1.parameters(), "lr": 0.01}, {"params": [*model.fc2.parameters(),
                                                                          *model.fc3.parameters()], "lr": 0.03}]
    opt = ModularNormalized(torch.optim.Adam(groups), model, analysis, norm="exact")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, x).backward()
    opt.step()
    steps = clean_mlp_steps(model, before)
    assert steps["fc1"] == pytest.approx(0.01 * targets["fc1"], rel=1e-6)
    assert steps["fc2"] == pytest.approx(0.03 * targets["fc2"], rel=1e-6)
    assert steps["fc3"] == pytest.approx(0.03 * targets["fc3"], rel=1e-6)


def test_accumulated_gradients_give_the_direction_of_their_sum():
    model, x = fixture("clean_mlp")
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=1.0), model, example_inputs=x, lr=0.02)
    before = model.fc1.weight.detach().clone()
    for half in x.chunk(2):
        loss_of(model, half).backward()
    total = model.fc1.weight.grad.detach().clone()
    opt.step()
    delta = model.fc1.weight.detach() - before
    assert torch.nn.functional.cosine_similarity(delta.flatten(), -total.flatten(), dim=0) > 1 - 1e-5


def test_step_is_in_place_and_works_in_bfloat16():
    import copy

    model, x = fixture("clean_mlp")
    analysis = modnorm.analyze(copy.deepcopy(model), x)  # the analysis binds to parameter names, not tensors
    model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    pointers = [p.data_ptr() for p in model.parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = ModularNormalized(torch.optim.AdamW(model.parameters(), lr=1e-3), model, analysis, lr=0.02, norm="exact")
    loss_of(model, x).backward()
    opt.step()
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # bf16 keeps 8 bits of mantissa: a small step is mostly rounding (use float32 master weights for exact
    # steps), but every atom moved, and by no more than the rounding of its weights allows.
    targets = {l.name: l.target_norm for l in analysis.layers}
    steps = clean_mlp_steps(model, before)
    # Each atom moved, by the requested step up to bf16 rounding of its weights (|w| ≈ 0.1-0.2: 2^-8 of it).
    assert all(0 < steps[n] < 3 * 0.02 * targets[n] for n in CLEAN_MLP), (steps, targets)


def test_training_with_the_wrapper_reduces_the_loss():
    """A teacher-student regression: a random tanh MLP labels Gaussian inputs; 150 normalized Adam steps."""
    torch.manual_seed(0)
    model, _ = fixture("clean_mlp")
    teacher, _ = fixture("clean_mlp")
    x = torch.randn(256, 24)
    with torch.no_grad():
        y = teacher(x)
    opt = ModularNormalized(torch.optim.Adam(model.parameters(), lr=1e-3), model, example_inputs=x[:4], lr=0.05)
    losses = []
    for _ in range(150):
        loss = (model(x) - y).pow(2).mean()
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_unmanaged_parameters_are_listed():
    """resnet_bn: its atoms are the convolutions and the Linear head (with its bias); BatchNorm's affine weights and
    biases belong to no atom of mass > 0, so the base optimizer's update stays theirs and they are listed."""
    model, x = fixture("resnet_bn")
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    batch_norms = {n for n, _ in model.named_parameters() if ".bn" in f".{n}"}
    assert batch_norms and batch_norms <= set(opt.unmanaged)
    assert "fc.bias" not in opt.unmanaged and "fc.weight" not in opt.unmanaged
    assert not any(name.endswith("conv1.weight") or name == "stem.weight" for name in opt.unmanaged)
    assert all(0 < a.target < math.inf for a in opt.atoms)


@pytest.mark.slow  # tens of seconds: CI's second step (pytest -m slow)
def test_the_learning_rate_example_trains_at_a_tiny_size():
    """examples/lr_transfer.py (the study behind README's table) trains end to end: at width 32, 25 steps of either
    optimizer bring the mean of the last 20 losses below the first loss."""
    spec = importlib.util.spec_from_file_location("lr_transfer", ROOT / "examples/lr_transfer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def train(kind, optimizer, lr, steps):
        torch.manual_seed(0)  # the same model and batches for every call
        return example.train(kind, 32, optimizer, lr, steps=steps, batch=8)

    for kind in ("resmlp", "gpt"):
        for optimizer, lr in (("adam", 3e-3), ("modnorm", 0.1)):
            first, trained = train(kind, optimizer, lr, 1), train(kind, optimizer, lr, 25)
            assert trained < first, (kind, optimizer, first, trained)
