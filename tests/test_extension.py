"""Adding a kind of atom and an op is one file each (tests/data/toy_atom.py, tests/data/toy_op.py): both flow
through the report, modnorm.optim and modnorm.probe without touching modnorm."""

import importlib
import json
import sys

import pytest
import torch
from torch import nn

import modnorm
from modnorm import atoms, semantics
from modnorm.optim import ModularNormalized
from modnorm.probe import probe
from modnorm.report import to_json


@pytest.fixture
def toy():
    """The toy op's module, imported fresh inside a registry override (its entry is gone after the test)."""
    with semantics.REGISTRY.override():
        sys.modules.pop("tests.data.toy_op", None)
        yield importlib.import_module("tests.data.toy_op")
    atoms.ATOM_KINDS.pop("FrobeniusLinear", None)
    sys.modules.pop("tests.data.toy_atom", None)


def model_of(toy):
    torch.manual_seed(0)
    return nn.Sequential(toy.ToyLinear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def test_toy_atom_appears_in_the_report(toy):
    model, x = model_of(toy), torch.randn(5, 8, dtype=torch.double)
    analysis = modnorm.analyze(model, x)
    layer = next(l for l in analysis.layers if l.weight == "0.weight")
    # by hand: 0.5 · √(8/16) · ‖W‖_F
    assert layer.kind == "FrobeniusLinear"
    assert layer.norm_at_init == pytest.approx(0.5 * (8 / 16) ** 0.5 * float(model[0].weight.detach().norm()))
    report = json.loads(to_json(analysis))
    assert [l["kind"] for l in report["layers"]] == ["FrobeniusLinear", "Linear"]
    assert analysis.network.unknown_ops == ()


def test_toy_atom_update_is_normalized_in_its_own_norm(toy):
    model, x = model_of(toy), torch.randn(5, 8, dtype=torch.double)
    opt = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x, norm="exact",
                            lr=0.02)
    before = model[0].weight.detach().clone()
    model(x).pow(2).mean().backward()
    opt.step()
    toy_atom = next(a for a in opt.atoms if a.kind == "FrobeniusLinear")
    delta = model[0].weight.detach() - before
    # natural norm of the update, by hand in the toy norm: 0.5 · √(8/16) · ‖Δ‖_F = lr · target
    assert 0.5 * (8 / 16) ** 0.5 * float(delta.norm()) == pytest.approx(0.02 * toy_atom.target, rel=1e-6)


def test_toy_atom_bound_holds_under_probe(toy):
    model, x = model_of(toy), torch.randn(5, 8, dtype=torch.double)
    analysis = modnorm.analyze(model, x)
    result = probe(model, (x,), analysis, trials=2, steps=10)
    rows = [r for r in result.rows if "atom 0" in r.what]
    assert rows and not result.violations, [(r.what, r.bound, r.measured) for r in result.rows]
