"""The torch.export fallback: an aten-level graph read through the registry's aten aliases gives the same
calculus as the shape-aware fx route, and `auto` falls back to it (and says so) when fx fails."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import modnorm.errors
import modnorm.tracing
from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def report(fixture, *args):
    result = runner.invoke(app, ["check", str(ROOT / f"fixtures/{fixture}.py"), "-f", "json", "--exit-zero", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("fixture", ["clean_mlp", "deep_mlp", "llama_block", "resnet_bn", "modula_gpt",
                                     "modula_rescnn", "checkpoint_gains"])
def test_export_route_agrees_with_the_fx_route(fixture):
    fx, exported = report(fixture, "--tracer", "fx"), report(fixture, "--tracer", "export")
    assert exported["model"]["tracer"] == "export"
    assert {l["name"]: l["target_norm"] for l in exported["layers"]} == \
        pytest.approx({l["name"]: l["target_norm"] for l in fx["layers"]}, rel=1e-9)
    for key in ("sensitivity", "design_sensitivity"):
        if fx["network"][key] is None:
            assert exported["network"][key] is None
        else:
            assert exported["network"][key] == pytest.approx(fx["network"][key], rel=1e-9)
    assert {f["code"] for f in exported["findings"]} == {f["code"] for f in fx["findings"]}


def test_auto_falls_back_to_export_and_records_it(monkeypatch):
    def refuse(*args, **kwargs):
        raise modnorm.errors.ModnormError("torch.fx cannot trace the model: pretend", "nothing")

    monkeypatch.setattr(modnorm.tracing, "trace_fx", refuse)
    result = report("clean_mlp")
    assert result["model"]["tracer"] == "export"
    assert result["model"]["tracer_attempts"][0].startswith("fx_values: failed (torch.fx cannot trace")


def test_every_graph_route_failing_ends_in_the_module_route(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import torch\nfrom torch import nn\n\nclass M(nn.Module):\n    def __init__(self):\n"
                     "        super().__init__()\n        self.fc = nn.Linear(4, 4)\n\n    def forward(self, x):\n"
                     "        if x.sum() > 0:\n            return self.fc(x)\n        return x\n\n"
                     "def example_inputs(model):\n    return torch.randn(2, 4)\n")
    result = runner.invoke(app, ["check", str(model), "--device", "meta", "-f", "json", "--exit-zero"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["tracer"] == "modules"
    assert all("x.sum() > 0" in a for a in report["model"]["tracer_attempts"][:3])
    forced = runner.invoke(app, ["check", str(model), "--device", "meta", "--tracer", "fx"])
    assert forced.exit_code == 2 and "x.sum() > 0" in forced.stderr and "Traceback" not in forced.stderr


def test_leaf_module_with_registered_semantics():
    model = ROOT / "tests/data/leaf_model.py"
    result = runner.invoke(app, ["check", str(model), "--leaf", "Clamp", "-f", "json", "--exit-zero"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["network"]["certified"] and report["network"]["unknown_ops"] == []
    assert report["network"]["sharpness"]["certified"]  # the registered hessian is used
    unknown = runner.invoke(app, ["check", str(model), "--leaf", "Nope"])
    assert unknown.exit_code == 2 and "Clamp" in unknown.stderr


def test_leaf_is_one_op_read_from_the_user_registration():
    from modnorm.check import check_model
    from modnorm.config import Settings

    model = str(ROOT / "tests/data/leaf_model.py")
    as_leaf = check_model(model, Settings(leaf=("Clamp",))).analysis
    inlined = check_model(model, Settings()).analysis
    assert [op.source for op in as_leaf.ops if op.target == "Clamp"] == ["Clamp: tanh, 1-Lipschitz"]
    assert not any(op.target == "Clamp" for op in inlined.ops)
