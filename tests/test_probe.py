"""`modnorm probe`: measurements on real weights stay below the bounds, and a bound that is wrong is caught."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modnorm
import modnorm.errors
from modnorm.cli import app
from modnorm.probe import probe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
import clean_mlp  # noqa: E402

runner = CliRunner()


@pytest.mark.parametrize("fixture", ["clean_mlp", "deep_mlp", "nanogpt", "llama_block", "resnet_bn",
                                     "modula_rescnn"])
def test_every_measurement_is_within_its_bound(fixture):
    result = runner.invoke(app, ["probe", str(ROOT / f"fixtures/{fixture}.py"), "-f", "json", "--trials", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    bounded = [r for r in rows if r["kind"] == "bound"]
    assert bounded and not any(r["violated"] for r in rows)
    assert all(r["measured"] > 0 for r in bounded if r["bound"] is None or r["bound"] > 0)


def test_shares_are_compared_with_mass_shares():
    rows = json.loads(runner.invoke(app, ["probe", str(ROOT / "fixtures/clean_mlp.py"), "-f", "json"]).stdout)["rows"]
    shares = [r for r in rows if "share of the output change" in r["what"]]
    assert len(shares) == 3 and sum(r["measured"] for r in shares) == pytest.approx(1.0)
    assert sum(r["bound"] for r in shares) == pytest.approx(1.0)  # the mass shares


def test_a_wrong_bound_is_reported_as_a_bug():
    """Shrink the network's certified sensitivity by 1e6: the measurement now exceeds it and probe says so."""
    model = clean_mlp.build_model()
    x = clean_mlp.example_inputs(model)
    analysis = modnorm.analyze(model, x)
    network = dataclasses.replace(analysis.network, sensitivity=analysis.network.sensitivity * 1e-6)
    doctored = dataclasses.replace(analysis, network=network)
    measured = probe(model, (x,), doctored)
    (violation,) = measured.violations
    assert violation.what.startswith("network input Lipschitz")


def test_meta_models_are_refused_with_advice():
    with torch.device("meta"):
        model = clean_mlp.build_model()
    analysis = modnorm.analyze(model, torch.randn(2, 24))
    with pytest.raises(modnorm.errors.ModnormError, match="real weights"):
        probe(model, (torch.randn(2, 24),), analysis)


def test_check_probe_flag_appends_the_table():
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/clean_mlp.py"), "--probe"])
    assert result.exit_code == 0 and "measured on real weights" in result.stdout


class _ScaledIdentityResidual(torch.nn.Module):
    """y = x + fc(x) with fc's weight s·I: the block is (1 + s)·I."""

    def __init__(self, width: int, s: float) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(s * torch.eye(width))

    def forward(self, x):
        return x + self.fc(x)


def test_a_residual_block_is_measured_against_its_bound():
    """Hand derivation: y = x + s·x is (1 + s)·I, Lipschitz exactly 1 + s in the RMS norms; the calculus's block
    bound |a| + |b|·s_f is 1 + ‖sI‖ = 1 + s. The probe's row for the block measures 1.5 and is tight (1.0)."""
    model, x = _ScaledIdentityResidual(16, 0.5), torch.randn(4, 16)
    measured = probe(model, (x,), modnorm.analyze(model, x), trials=1, steps=3)
    (row,) = [r for r in measured.rows if r.what.startswith("block ")]
    assert row.bound == pytest.approx(1.5) and row.measured == pytest.approx(1.5)
    assert not row.violated and row.tightness == pytest.approx(1.0)


@pytest.mark.parametrize("fixture", ["modula_gpt", "modula_resmlp", "convnext_block", "vit"])
def test_every_residual_block_gets_a_row_within_its_bound(fixture):
    """One row per residual merge the analysis found (the per-block tightness of the certified figure)."""
    result = runner.invoke(app, ["probe", str(ROOT / f"fixtures/{fixture}.py"), "-f", "json", "--trials", "1"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout)["rows"] if r["what"].startswith("block ")]
    streams = json.loads(runner.invoke(app, ["check", str(ROOT / f"fixtures/{fixture}.py"), "-f", "json",
                                             "--exit-zero"]).stdout)["residual_streams"]
    assert len(rows) == sum(len(stream["merges"]) for stream in streams) > 0
    assert not any(r["violated"] for r in rows), [r for r in rows if r["violated"]]
    assert all(0 < r["measured"] <= r["bound"] for r in rows)
