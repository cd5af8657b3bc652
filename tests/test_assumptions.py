"""The `assumed` profile (the default): normalizer constants ||w||_inf / floor, where the floor on the (centred)
RMS entering each normalizer is 0.5x its value at init — stated beside every figure, checked by `modnorm probe`,
and sound at every input where it holds (measured here, never restated from the code).
"""

import json
import math

import pytest
import torch
from torch import nn
from torch.func import jvp
from typer.testing import CliRunner

import modnorm
from modnorm.cli import app
from modnorm.probe import probe

runner = CliRunner()


class NormMLP(nn.Module):
    """Linear -> normalizer -> Linear, no biases: scaling the input scales the normalizer's input exactly."""

    def __init__(self, norm: nn.Module, width: int = 32) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(16, width, bias=False), norm, nn.Linear(width, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


def _model(norm: nn.Module) -> NormMLP:
    torch.manual_seed(0)
    model = NormMLP(norm)
    if getattr(norm, "weight", None) is not None:
        with torch.no_grad():  # a gain that is not all ones: ||w||_inf matters
            norm.weight.copy_(0.5 + torch.rand_like(norm.weight))
    return model.eval()


def _inputs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(8, 16) * 0.5  # inside the unit ball: the floors are measured on these as they are


def _norm_op(analysis):
    return next(op for op in analysis.ops if "normalization" in op.tags)


NORMS = {"layernorm": lambda: nn.LayerNorm(32), "rmsnorm": lambda: nn.RMSNorm(32, eps=1e-6)}


@pytest.mark.parametrize("kind", NORMS)
def test_floor_is_half_the_smallest_input_rms_at_init_and_stated(kind):
    model, x = _model(NORMS[kind]()), _inputs()
    analysis = modnorm.analyze(model, x)
    op = _norm_op(analysis)
    h = model.fc1(x).detach().double()  # what enters the normalizer, computed here independently
    if kind == "layernorm":
        h = h - h.mean(-1, keepdim=True)
    smallest = float(h.pow(2).mean(-1).sqrt().min())
    assumed = op.info["assumed"]
    assert assumed["basis"] == "measured" and assumed["floor"] == pytest.approx(0.5 * smallest, rel=1e-6)
    # the constant is ||w||_inf / sqrt(floor² + eps) (the Jacobian norm bound at RMS = floor)
    w_max = float(model.norm.weight.detach().abs().max())
    assert op.lipschitz[0] == pytest.approx(w_max / math.sqrt(assumed["floor"] ** 2 + model.norm.eps), rel=1e-6)
    assert analysis.profile == "assumed" and analysis.network.certified and len(analysis.network.assumptions) == 1
    # the unconditional worst case keeps today's constant: ||w||_inf / sqrt(eps)
    certified = _norm_op(modnorm.analyze(model, x, profile="certified"))
    assert certified.lipschitz[0] == pytest.approx(w_max / math.sqrt(model.norm.eps), rel=1e-6)
    assert not certified.info.get("assumption")


def _worst_jacobian_on_floor(norm: nn.Module, floor: float, centred: bool, steps: int = 40) -> float:
    """Power iteration on JᵀJ (jvp/vjp, float64) of the normalizer alone, per position in RMS norms, at random
    inputs whose (centred) RMS is exactly the floor: the constant ||w||_inf / r is largest at the smallest RMS the
    assumption allows, so this is where a wrong constant would show. A lower estimate of the supremum."""
    norm = norm.double()
    torch.manual_seed(2)
    x = torch.randn(64, 32, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True) if centred else torch.zeros_like(x[..., :1])
    part = x - mean
    x = mean + part * (floor / part.pow(2).mean(-1, keepdim=True).sqrt())  # on the floor, position by position
    f = norm
    v = torch.randn_like(x)
    best = 0.0
    for _ in range(steps):
        v = v / v.pow(2).mean(-1, keepdim=True).sqrt()
        _, jv = jvp(f, (x,), (v,))
        best = max(best, float(jv.pow(2).mean(-1).sqrt().max()))
        _, pullback = torch.func.vjp(f, x)
        (v,) = pullback(jv)
        v = v.detach()
    return best


@pytest.mark.parametrize("kind", NORMS)
def test_assumed_constant_bounds_the_measured_jacobian_wherever_the_assumption_holds(kind):
    model, x = _model(NORMS[kind]()), _inputs()
    op = _norm_op(modnorm.analyze(model, x))
    floor, bound = op.info["assumed"]["floor"], op.lipschitz[0]
    measured = _worst_jacobian_on_floor(model.norm, floor, centred=kind == "layernorm")
    print(f"\n{kind}: assumed bound {bound:.4g}, measured on RMS >= floor {measured:.4g}, "
          f"tightness {measured / bound:.3f}")
    assert measured <= bound * (1 + 1e-6)
    assert measured >= 0.5 * bound  # the floor is reachable: the constant is not vacuous there


def test_probe_reports_an_assumption_that_fails_on_smaller_inputs():
    model, x = _model(nn.LayerNorm(32)), _inputs()
    analysis = modnorm.analyze(model, x)
    held = probe(model, (x,), analysis, trials=1, steps=4)
    rows = [r for r in held.rows if r.kind == "assumption"]
    assert len(rows) == 1 and not held.broken_assumptions and not held.violations
    assert rows[0].measured == pytest.approx(2 * rows[0].bound, rel=1e-6)  # the floor is half the value at init
    # inputs scaled by 0.1 (no biases: the normalizer input scales by 0.1 too) fall below the 0.5x floor
    shrunk = probe(model, (0.1 * x,), analysis, trials=1, steps=4)
    assert [r.op for r in shrunk.broken_assumptions] == [rows[0].op]
    assert shrunk.broken_assumptions[0].measured == pytest.approx(0.2 * rows[0].bound, rel=1e-6)
    assert not shrunk.violations  # bounds resting on a broken assumption are shown, not asserted


MODEL_FILE = '''
import torch
from torch import nn

SCALE = {scale}

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32, bias=False), nn.LayerNorm(32), nn.Linear(32, 4, bias=False))

def example_inputs(model):
    torch.manual_seed(1)
    return torch.randn(8, 16) * 0.5 * SCALE
'''


def test_assumptions_are_beside_the_figures_in_text_json_and_sarif(tmp_path):
    path = tmp_path / "normed.py"
    path.write_text(MODEL_FILE.format(scale=1.0))
    base = ["check", str(path), "--isolated", "--exit-zero", "--color", "never"]
    text = runner.invoke(app, base).stdout
    assert "certified given 1 assumption" in text and "assumption: 1: input centred RMS >= " in text
    report = json.loads(runner.invoke(app, [*base, "-f", "json"]).stdout)
    assert report["profile"] == "assumed"
    (row,) = report["assumptions"]
    assert row["quantity"] == "input centred RMS" and row["basis"] == "measured"
    assert row["floor"] == pytest.approx(0.5 * row["at_init"])
    sarif = json.loads(runner.invoke(app, [*base, "-f", "sarif"]).stdout)
    for result in sarif["runs"][0]["results"]:
        assert result["properties"]["profile"] == "assumed" and result["properties"]["assumptions"]
    certified = json.loads(runner.invoke(app, [*base, "-f", "json", "--profile", "certified"]).stdout)
    assert certified["assumptions"] == [] and certified["network"]["assumptions"] == []


def test_stated_floor_is_an_assumption_not_a_bare_certificate(tmp_path):
    path = tmp_path / "normed.py"
    path.write_text(MODEL_FILE.format(scale=1.0))
    report = json.loads(runner.invoke(app, ["check", str(path), "--isolated", "--exit-zero", "-f", "json",
                                            "--profile", "certified", "--norm-input-rms", "1"]).stdout)
    (row,) = report["assumptions"]
    assert row["basis"] == "stated" and row["floor"] == 1.0 and "--norm-input-rms" in row["text"]
    assert report["network"]["certified"] and report["network"]["certification"] == "given assumptions"
    sarif = json.loads(runner.invoke(app, ["check", str(path), "--isolated", "--exit-zero", "-f", "sarif",
                                           "--profile", "certified", "--norm-input-rms", "1"]).stdout)
    assert {r["properties"]["certification"] for r in sarif["runs"][0]["results"]} == {"given assumptions"}
    unconditional = json.loads(runner.invoke(app, ["check", str(path), "--isolated", "--exit-zero", "-f", "json",
                                                   "--profile", "certified"]).stdout)
    assert unconditional["network"]["certification"] == "unconditional"


def test_probe_command_checks_the_assumption_and_passes_when_it_holds(tmp_path):
    analysed = tmp_path / "normed.py"
    analysed.write_text(MODEL_FILE.format(scale=1.0))
    ok = runner.invoke(app, ["probe", str(analysed), "--trials", "1", "-f", "json"])
    assert ok.exit_code == 0, ok.output
    rows = [r for r in json.loads(ok.stdout)["rows"] if r["kind"] == "assumption"]
    assert len(rows) == 1 and not rows[0]["assumption_broken"]


def _codes(path, *options) -> list[str]:
    report = json.loads(runner.invoke(app, ["check", str(path), "--isolated", "--exit-zero", "-f", "json",
                                            *options]).stdout)
    return [f["code"] for f in report["findings"]]


def test_a_stated_floor_the_example_inputs_break_is_a_finding(tmp_path):
    """MN603: the LayerNorm's centred input RMS at the example inputs is measured (about 0.1-0.3 here: inputs of
    RMS 0.5 through a default-init 16->32 Linear); a stated floor of 10 is broken there, one of 0.01 is not, and
    the default profile states none (its floors are half the measured value)."""
    path = tmp_path / "normed.py"
    path.write_text(MODEL_FILE.format(scale=1.0))
    report = json.loads(runner.invoke(app, ["check", str(path), "--isolated", "--exit-zero", "-f", "json",
                                            "--norm-input-rms", "10"]).stdout)
    (row,) = report["assumptions"]
    assert row["basis"] == "stated" and row["at_init"] is not None and row["at_init"] < 10
    (finding,) = [f for f in report["findings"] if f["code"] == "MN603"]
    assert finding["severity"] == "warning" and f"{row['at_init']:.3g}" in finding["message"]
    assert "MN603" not in _codes(path, "--norm-input-rms", "0.01")
    assert "MN603" not in _codes(path)
