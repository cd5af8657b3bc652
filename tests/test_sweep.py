"""Scale sweeps: exponent fits against closed forms, flat Modula designs, drifting nanoGPT, plots, errors."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnorm.check import check_sweep
from modnorm.cli import app
from modnorm.config import Settings
from modnorm.sweep import Axis, fit_exponents, parse_sweep, role_of

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def sweep_of(fixture, *axes, **settings):
    return check_sweep(str(ROOT / "fixtures" / fixture), Settings(**settings), parse_sweep(axes)).sweep


def test_fit_recovers_known_exponents():
    """q = 3 · w^0.5 · L^-1 exactly: the least-squares fit returns (0.5, -1)."""
    axes = (Axis("width", (64, 128, 256)), Axis("depth", (2, 4, 8)))
    points = [{"width": w, "depth": d} for w in (64, 128, 256) for d in (2, 4, 8)]
    values = [3 * p["width"] ** 0.5 / p["depth"] for p in points]
    assert fit_exponents(points, values, axes) == pytest.approx({"width": 0.5, "depth": -1.0})


def test_roles_match_blocks_across_depths():
    assert role_of("blocks.3.attn.q") == "blocks.*.attn.q" and role_of("0") == "0" and role_of("0.fc") == "*.fc" and role_of("lm_head") == "lm_head"
    assert role_of("transformer.h.11.mlp.c_fc") == "transformer.h.*.mlp.c_fc"


def head_norm(width, out):
    """Default nn.Linear init (kaiming_uniform(a=√5): std 1/√(3·fan_in)): ‖W‖ ≈ std(√out + √in), so the RMS→RMS
    norm is √(in/out)·std·(√out + √in) = (1 + √(in/out))/√3
    (docs/theory/constants.md#default-init)."""
    return (1 + math.sqrt(width / out)) / math.sqrt(3)


@pytest.mark.parametrize("device, tolerance", [("meta", 1e-9), ("cpu", 0.05)])
def test_default_init_head_exponent_matches_the_closed_form(tmp_path, device, tolerance):
    model = tmp_path / "head.py"
    model.write_text("import torch\nfrom torch import nn\n\n"
                     "def build_model(width=64):\n    return nn.Sequential(nn.Linear(16, width), nn.Tanh(), "
                     "nn.Linear(width, 10))\n\n"
                     "def example_inputs(model):\n    return torch.randn(2, 16)\n")
    widths = (256, 512, 1024, 2048)
    sweep = check_sweep(str(model), Settings(device=device), parse_sweep([f"width={','.join(map(str, widths))}"])).sweep
    fitted = sweep.of("2", "norm_at_init").exponents["width"]
    expected = fit_exponents([{"width": w} for w in widths], [head_norm(w, 10) for w in widths],
                             (Axis("width", widths),))["width"]
    assert fitted == pytest.approx(expected, abs=tolerance)
    assert 0.4 < expected < 0.5  # (1 + √(w/10))/√3 approaches w^0.5


def test_modula_gpt_is_flat_in_width_and_depth():
    sweep = sweep_of("sweep_modula_gpt.py", "width=16,32,64", "depth=2,4")
    for series in sweep.series:
        if series.role == "network" or series.quantity in ("mass_share", "design_downstream_sensitivity"):
            continue
        assert abs(series.exponents["width"]) < 0.02, (series.role, series.quantity, series.exponents)
        if series.quantity != "target_norm":
            assert abs(series.exponents["depth"]) < 0.02, (series.role, series.quantity, series.exponents)
        else:  # share per atom ∝ 1/L and S_down ∝ 1/L: the target is flat up to the embedding/head split
            assert abs(series.exponents["depth"]) < 0.2  # 0.0549, 0.0482, 0.0450 at L = 2, 4, 8: converging
    assert abs(sweep.of("network", "design_sensitivity").exponents["depth"]) < 0.05


def test_modula_resmlp_is_flat_in_width():
    sweep = sweep_of("modula_resmlp.py", "width=32,64,128")
    for series in sweep.series:
        if series.role != "network" and series.quantity in ("norm_at_init", "sensitivity", "target_norm"):
            assert abs(series.exponents["width"]) < 0.02, (series.role, series.quantity)


def test_nanogpt_drifts_with_width_and_grows_with_depth():
    sweep = sweep_of("nanogpt.py", "n_embd=32,64,128", "n_layer=2,4")
    assert sweep.of("lm_head", "norm_at_init").exponents["n_embd"] > 0.4  # std 0.02: norm ∝ √width
    assert sweep.of("network", "attention_logit_bound").exponents["n_embd"] > 0.5  # c·d = √d
    assert sweep.of("network", "design_sensitivity").exponents["n_layer"] > 1
    codes = {f.code for f in check_sweep(str(ROOT / "fixtures/nanogpt.py"), Settings(select=("MN4",)),
                                         parse_sweep(["n_embd=32,64,128", "n_layer=2,4"])).findings}
    assert codes == {"MN401", "MN402", "MN403"}


def test_sweep_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    picture = tmp_path / "sweep.png"
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/sweep_nanogpt.py"), "--sweep", "n_embd=32,64",
                                 "--sweep", "n_layer=2,4", "-f", "json", "--exit-zero", "--plot", str(picture)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [a["name"] for a in report["sweep"]["axes"]] == ["n_embd", "n_layer"]
    assert len(report["sweep"]["points"]) == 4
    assert picture.stat().st_size > 10_000


def test_plot_axes_are_labelled():
    pytest.importorskip("matplotlib")
    from modnorm.plot import plot_layers, plot_sweep

    import tempfile

    sweep = sweep_of("nanogpt.py", "n_embd=32,64", "n_layer=2,4")

    with tempfile.TemporaryDirectory() as folder:
        figure = plot_sweep(sweep, Path(folder) / "s.svg")
        assert [ax.get_xlabel() for ax in figure.axes] == ["n_embd", "n_layer"]
        assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in figure.axes)
        assert any("p = " in text.get_text() for text in figure.axes[0].get_legend().get_texts())
        layers = plot_layers(sweep.analyses[0], Path(folder) / "layers.html")
        assert layers.axes[0].get_xlabel() == "layer" and (Path(folder) / "layers.html").read_text().startswith("<!doctype")


@pytest.mark.parametrize("bad", ["width", "width=64", "width=a,b", "width=0,4", "2x=1,2"])
def test_bad_sweep_is_exit_two(bad):
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/nanogpt.py"), "--sweep", bad])
    assert result.exit_code == 2 and "--sweep" in result.stderr


def test_unknown_plot_suffix_is_exit_two(tmp_path):
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/clean_mlp.py"), "--plot", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and ".png" in result.stderr


def test_sweep_from_pyproject(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.modnorm]\nselect = ["MN4"]\nsweep = { n_embd = [32, 64] }\n')
    (tmp_path / "gpt.py").write_text((ROOT / "fixtures/nanogpt.py").read_text())
    monkeypatch.chdir(tmp_path)
    report = json.loads(runner.invoke(app, ["check", "gpt.py", "-f", "json", "--exit-zero"]).stdout)
    assert [a["name"] for a in report["sweep"]["axes"]] == ["n_embd"]
    assert {f["code"] for f in report["findings"]} == {"MN401", "MN403"}
    (tmp_path / "pyproject.toml").write_text('[tool.modnorm]\nsweep = { n_embd = 64 }\n')
    result = runner.invoke(app, ["check", "gpt.py"])
    assert result.exit_code == 2 and "`sweep` must be a table" in result.stderr


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/clean_mlp.py"), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and 'pip install "modnorm[plot]"' in result.stderr
