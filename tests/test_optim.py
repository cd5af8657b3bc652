"""modnorm.optim: after a normalized step every atom moved by exactly lr × its target in its natural norm, so the
whole update has modular norm lr; with Modula's profile the update is Modula's normalized gradient."""

import importlib.util
import math
import sys

import pytest
import torch

import modnorm
from modnorm.optim import ModularNormalized, natural_norm, orthogonalize
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
    return out.float().pow(2).mean() if out.is_floating_point() else out.sum()


def one_step(model, x, base, **options):
    opt = ModularNormalized(base, model, example_inputs=x, norm="exact", **options)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, x).backward()
    opt.step()
    return opt, before


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
    model = model.double()  # float64 so that (after - before) measures the update to 1e-4
    x = x.double() if x.is_floating_point() else x
    opt, before = one_step(model, x, BASES[base](model.parameters()), lr=0.02)
    ratios = opt.update_norms(before, model)
    still = {a.name for a in opt.atoms if not a.weight.grad.any()}  # no gradient (e.g. behind a zero init)
    assert ratios and all(r == pytest.approx(0.02, rel=1e-4) for n, r in ratios.items() if n not in still), ratios
    assert all(ratios[n] == 0 for n in still if base in ("sgd", "momentum"))
    assert max(ratios.values()) == pytest.approx(0.02, rel=1e-4)  # the modular norm of the whole update


def test_targets_are_the_ones_the_report_prints():
    from modnorm.check import check_model
    from modnorm.config import Settings

    model, x = fixture("nanogpt")
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    printed = [l.target_norm for l in check_model(str(ROOT / "fixtures/nanogpt.py"), Settings()).analysis.layers
               if l.target_norm > 0]
    assert sorted(a.target for a in opt.atoms) == pytest.approx(sorted(printed), rel=1e-9)


MODULA = [c for c in OK if c["arch"] != "GPT"][::3]  # GPT: open question in the issue note (2e-6 off on q)


@pytest.mark.parametrize("config", MODULA, ids=[c["name"] for c in MODULA])
def test_normalized_sgd_is_modulas_normalized_gradient(config):
    """Modula's update of atom i is -lr · t_i · G_i / ‖G_i‖_i with t_i from the reference (computed by Modula)."""
    model, x, options = _model_and_options(config)
    model = model.double()
    analysis = modnorm.analyze(model, x.double() if x.is_floating_point() else x, profile="modula", **options)
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=1.0), model, analysis, lr=0.01, norm="exact")
    loss_of(model, x.double() if x.is_floating_point() else x).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    reference = {a["torch_param"]: a["target_norm"] for a in config["atoms"]}
    for atom in opt.atoms:
        delta = atom.weight.detach() - before[atom.weight_name]
        grad = grads[atom.weight_name]
        expected = -0.01 * reference[atom.weight_name] * grad / natural_norm(atom, grad, "exact")
        cosine = torch.nn.functional.cosine_similarity(delta.flatten(), expected.flatten(), dim=0)
        assert cosine > 1 - 1e-9 and delta.norm() == pytest.approx(float(expected.norm()), rel=1e-6), atom.name


def test_dualized_update_is_orthogonal_and_normalized():
    model, x = fixture("clean_mlp")
    opt, before = one_step(model, x, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.05, dualize=True)
    assert all(r == pytest.approx(0.05, rel=1e-4) for r in opt.update_norms(before, model).values())
    g = torch.randn(40, 30, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert 0.6 < singular.min() and singular.max() < 1.3  # quintic Newton–Schulz: σ in about [0.7, 1.2]
    assert (orthogonalize(g) - u @ vh).norm() / (u @ vh).norm() < 0.35


def test_parameter_groups_keep_their_own_step():
    model, x = fixture("clean_mlp")
    groups = [{"params": model.fc1.parameters(), "lr": 0.01}, {"params": [*model.fc2.parameters(),
                                                                          *model.fc3.parameters()], "lr": 0.03}]
    opt = ModularNormalized(torch.optim.Adam(groups), model, example_inputs=x, norm="exact")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, x).backward()
    opt.step()
    ratios = opt.update_norms(before, model)
    assert ratios["fc1"] == pytest.approx(0.01, rel=1e-4) and ratios["fc3"] == pytest.approx(0.03, rel=1e-4)


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
    ratios = opt.update_norms(before, model)
    assert all(0 < r < 1 for r in ratios.values()), ratios


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
    model, x = fixture("resnet_bn")
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    assert any(name.endswith(".bias") for name in opt.unmanaged)
    assert not math.isnan(sum(a.target for a in opt.atoms))


def test_the_learning_rate_example_runs_at_a_tiny_size():
    """examples/lr_transfer.py (the study behind README's table) runs end to end; here 5 steps, width 16."""
    spec = importlib.util.spec_from_file_location("lr_transfer", ROOT / "examples/lr_transfer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for kind in ("resmlp", "gpt"):
        for optimizer, lr in (("adam", 1e-3), ("modnorm", 0.1)):
            assert math.isfinite(example.train(kind, 32, optimizer, lr, steps=5, batch=4))
