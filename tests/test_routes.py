"""The tracing chain: shape-aware fx, then torch.export, then the op log, then the module hierarchy alone. Each
route that takes over says why the earlier ones failed (construct, file, line); the op log reproduces the fx
route's calculus wherever both run; custom autograd.Functions and torch.compile'd code are leaves, not modelled."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modnorm
from modnorm.check import check_model
from modnorm.cli import app
from modnorm.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA_DEPENDENT = str(ROOT / "fixtures/data_dependent.py")
IF_LINE = next(i for i, line in enumerate(Path(DATA_DEPENDENT).read_text().splitlines(), 1)
               if line.strip().startswith("if h.abs()"))
runner = CliRunner()


def analysis_of(target, **settings):
    return check_model(str(target), Settings(**settings)).analysis


@pytest.mark.parametrize("fixture", ["clean_mlp", "nanogpt", "llama_block", "resnet_bn", "modula_gpt",
                                     "modula_rescnn", "checkpoint_gains"])
def test_op_log_reproduces_the_fx_route(fixture):
    """Same atoms, targets, norms and network figures: the op log records the fx route's spellings."""
    fx = analysis_of(ROOT / f"fixtures/{fixture}.py", tracer="fx")
    log = analysis_of(ROOT / f"fixtures/{fixture}.py", tracer="oplog")
    assert log.model.tracer == "oplog"
    assert [l.name for l in log.layers] == [l.name for l in fx.layers]
    for ours, theirs in zip(log.layers, fx.layers):
        assert (ours.target_norm, ours.norm_at_init) == pytest.approx((theirs.target_norm, theirs.norm_at_init),
                                                                      rel=1e-9)
    for key in ("sensitivity", "design_sensitivity"):
        assert getattr(log.network, key) == pytest.approx(getattr(fx.network, key), rel=1e-9, nan_ok=True)
    assert log.network.certified == fx.network.certified and log.network.unknown_ops == ()
    assert len(log.merges) == len(fx.merges)


def test_data_dependent_branch_falls_back_to_the_op_log_on_the_cpu():
    analysis = analysis_of(DATA_DEPENDENT)
    attempts = [str(a) for a in analysis.model.tracer_attempts]
    assert analysis.model.tracer == "oplog"
    assert attempts[0].startswith(f"fx_values: failed at fixtures/data_dependent.py:{IF_LINE}")
    assert attempts[1].startswith(f"export: failed at fixtures/data_dependent.py:{IF_LINE}")
    assert "path these example inputs took" in attempts[2]
    # typed, not parsed back from the sentence: MN904 points at the construct from these fields
    fx = analysis.model.tracer_attempts[0]
    assert (fx.route, fx.ok, fx.file, fx.line) == ("fx_values", False, "fixtures/data_dependent.py", IF_LINE)
    (mn904,) = [f for f in check_model(str(DATA_DEPENDENT), Settings()).findings if f.code == "MN904"]
    assert mn904.line == IF_LINE and mn904.file.endswith("data_dependent.py")
    # Hand derivation: three well-normed Linear atoms in series (roles input, hidden, output; masses 1:1:1),
    # tanh 1-Lipschitz, so S_down = 1 and every target is 1/3; the network is certified with no unknown op.
    assert [l.target_norm for l in analysis.layers] == pytest.approx([1 / 3] * 3)
    assert analysis.network.certified and analysis.network.unknown_ops == ()


def test_op_log_bound_holds_on_the_path_it_recorded():
    from tests.test_soundness import _load, max_position_rms, measured_lipschitz

    module = _load(Path(DATA_DEPENDENT))
    model = module.build_model().double().eval()
    analysis = modnorm.analyze(model, module.example_inputs(model).double())
    assert analysis.model.tracer == "oplog"
    x = torch.randn(4, 16, dtype=torch.float64)
    measured = measured_lipschitz(model, x / max_position_rms(x, -1) * 0.9, -1, -1)
    assert measured <= analysis.network.sensitivity * (1 + 1e-6)


def test_on_meta_every_graph_route_fails_and_the_module_route_reports_atoms_alone():
    analysis = analysis_of(DATA_DEPENDENT, device="meta")
    assert analysis.model.tracer == "modules"
    failed = [str(a) for a in analysis.model.tracer_attempts if not a.ok]
    assert [a.split(":")[0] for a in failed] == ["fx_values", "export", "oplog"]
    assert all(f"data_dependent.py:{IF_LINE}" in a for a in failed)
    assert "Tensor.item() cannot be called on meta tensors" in failed[2]
    # Atoms keep their own norms, predicted from the recorded init on meta. Hand derivation: orthogonal init has
    # spectral norm 1; Modula's forward scale sqrt(out/in) times the RMS->RMS factor sqrt(in/out) gives 1.
    norms = {l.name: l.norm_at_init for l in analysis.layers}
    assert norms == pytest.approx({"fc1": 1.0, "fc2": 1.0, "fc3": 1.0}, rel=1e-6)
    assert all(l.norm_source.startswith("predicted from orthogonal_") for l in analysis.layers)
    # ... and nothing that needs the graph is claimed.
    assert all(math.isnan(l.target_norm) and l.downstream_sensitivity == math.inf for l in analysis.layers)
    assert not analysis.network.certified and analysis.network.sharpness is None and not analysis.merges
    codes = {f.code: f for f in check_model(DATA_DEPENDENT, Settings(device="meta")).findings}
    assert codes["MN904"].line == IF_LINE and codes["MN904"].severity == "warning"


def test_forced_route_failure_is_one_paragraph_with_the_line():
    result = runner.invoke(app, ["check", DATA_DEPENDENT, "--tracer", "fx"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"data_dependent.py:{IF_LINE}" in result.stderr and "--leaf" in result.stderr
    forced = runner.invoke(app, ["check", DATA_DEPENDENT, "--tracer", "oplog", "--device", "meta"])
    assert forced.exit_code == 2 and "Traceback" not in forced.stderr
    assert "--max-params" in forced.stderr and f":{IF_LINE}" in forced.stderr


def test_report_names_the_route_and_why():
    result = runner.invoke(app, ["check", DATA_DEPENDENT, "-f", "json", "--exit-zero", "--device", "meta"])
    report = json.loads(result.stdout)
    assert report["model"]["tracer"] == "modules"
    assert report["layers"][0]["target_norm"] is None  # not computed, not invented


@pytest.mark.parametrize("tracer", ["fx", "oplog"])
def test_custom_autograd_function_is_a_leaf_not_modelled(tracer):
    analysis = analysis_of(ROOT / "tests/data/custom_function.py", tracer=tracer)
    leaf = [op for op in analysis.ops if op.target == "StraightThroughClamp.apply"]
    assert len(leaf) == 1 and leaf[0].kind == "unknown"
    assert "user-defined" in leaf[0].reason and "@modnorm.register(StraightThroughClamp)" in leaf[0].reason
    assert not any("clamp" in op.target for op in analysis.ops)  # its forward is not looked into
    assert not analysis.network.certified


def test_registered_autograd_function_is_used():
    from modnorm import semantics

    analysis = None

    def clamp_semantics(view):
        return semantics.Semantics("bond", (1.0,), "straight-through clamp: 1-Lipschitz", label="Clamp")

    with semantics.REGISTRY.override():
        from modnorm.loading import load

        loaded = load(str(ROOT / "tests/data/custom_function.py"))
        function = type(loaded.model).__module__
        clamp = getattr(__import__("sys").modules[function], "StraightThroughClamp")
        modnorm.register(clamp)(clamp_semantics)
        from modnorm.calculus import analyze_traced
        from modnorm.routes import trace

        analysis = analyze_traced(trace(loaded.model, loaded.inputs, loaded.file), user_file=loaded.file)
    assert semantics.lookup(clamp) is None  # the override ended with the block
    assert analysis.network.certified and analysis.network.unknown_ops == ()
    assert [op.source for op in analysis.ops if op.target == "StraightThroughClamp.apply"] == [
        "straight-through clamp: 1-Lipschitz"]


def test_torch_compile_code_is_a_leaf_not_modelled():
    analysis = analysis_of(ROOT / "tests/data/compiled_function.py", tracer="fx")
    compiled = [op for op in analysis.ops if "torch.compile" in op.reason]
    assert {op.target for op in compiled} == {"fused_gelu", "OptimizedModule"}
    assert analysis.model.tracer == "fx_values"


def test_the_calculus_writes_each_nodes_result_under_node_meta():
    """Like ShapeProp's `tensor_meta`: after the passes every node of the traced graph carries its frozen `Op`
    under `node.meta["modnorm"]`, the same object the `Analysis` lists (a downstream fx pass can read it)."""
    from modnorm.calculus import analyze_traced
    from modnorm.loading import load
    from modnorm.result import Op
    from modnorm.routes import trace

    loaded = load(str(ROOT / "fixtures/nanogpt.py"))
    traced = trace(loaded.model, loaded.inputs, loaded.file)
    analysis = analyze_traced(traced, user_file=loaded.file)
    written = {n.name: n.meta["modnorm"] for n in traced.graph_module.graph.nodes if "modnorm" in n.meta}
    assert written and all(isinstance(op, Op) for op in written.values())
    assert written == {op.name: op for op in analysis.ops}
    atoms = [op for op in written.values() if op.kind == "atom"]
    assert {l.op for l in analysis.layers} <= {op.name for op in atoms}
