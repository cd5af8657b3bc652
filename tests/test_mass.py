"""Mass allocation (docs/theory/modular-norm.md#mass): schemes, glob overrides that total like Modula's tare,
and the grouped shares.

Expected masses are hand-derived from the definitions: with `roles`, input atoms share 1, output atoms share 1 and
hidden atoms share m; with `uniform`, every atom has mass 1; an override `GLOB=T` gives the matching atoms T/n each.
"""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import modnorm
from modnorm.cli import app
from modnorm.errors import ModnormError
from modnorm.report import render_full

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
import sqrt_depth_resmlp  # noqa: E402  (inp, 16 blocks of one Linear, out)


@pytest.fixture(scope="module")
def resmlp():
    torch.manual_seed(0)
    model = sqrt_depth_resmlp.build_model(depth=16)
    return model, sqrt_depth_resmlp.example_inputs(model)


def masses(analysis):
    return {layer.name: layer.mass for layer in analysis.layers}


def test_roles_scheme_is_one_m_one(resmlp):
    analysis = modnorm.analyze(*resmlp, hidden_mass=4.0)
    m = masses(analysis)
    assert m["inp"] == 1.0 and m["out"] == 1.0
    assert all(m[f"blocks.{i}.fc"] == pytest.approx(4.0 / 16) for i in range(16))
    assert analysis.network.mass == pytest.approx(6.0)


def test_uniform_scheme_gives_every_atom_mass_one(resmlp):
    analysis = modnorm.analyze(*resmlp, mass="uniform")
    assert set(masses(analysis).values()) == {1.0} and analysis.network.mass == 18.0


def test_glob_override_totals_like_tare_and_composes_with_the_scheme(resmlp):
    analysis = modnorm.analyze(*resmlp, mass="uniform", mass_of=(("blocks.*", 8.0),))
    m = masses(analysis)
    assert m["inp"] == m["out"] == 1.0  # the scheme still decides the rest
    assert all(m[f"blocks.{i}.fc"] == pytest.approx(0.5) for i in range(16))  # 8 shared by 16
    assert analysis.network.mass == pytest.approx(10.0)


def test_single_atom_override_gets_its_value_and_later_globs_win(resmlp):
    analysis = modnorm.analyze(*resmlp, mass_of=(("blocks.*", 8.0), ("out", 3.0), ("blocks.0.fc", 2.0)))
    m = masses(analysis)
    assert m["out"] == 3.0 and m["blocks.0.fc"] == 2.0 and m["blocks.1.fc"] == pytest.approx(0.5)


def test_shares_and_targets_follow_the_masses(resmlp):
    """t_i = (m_i / M) / S_down(i): doubling the output mass doubles its share's numerator."""
    base = {l.name: l for l in modnorm.analyze(*resmlp).layers}
    more = {l.name: l for l in modnorm.analyze(*resmlp, mass_of=(("out", 2.0),)).layers}
    assert base["out"].mass_share == pytest.approx(1 / 3) and more["out"].mass_share == pytest.approx(2 / 4)
    assert more["out"].target_norm == pytest.approx(more["out"].mass_share / more["out"].design_downstream_sensitivity)


def test_an_override_that_matches_nothing_names_the_glob(resmlp):
    with pytest.raises(ModnormError, match=r"`layers\.\*=2` matches no atom"):
        modnorm.analyze(*resmlp, mass_of=(("layers.*", 2.0),))


def test_mass_groups_by_role_and_block(resmlp):
    groups = modnorm.analyze(*resmlp, hidden_mass=5.0).network.mass_groups
    roles = {g.name: g for g in groups if g.by == "role"}
    assert {name: (g.atoms, g.mass) for name, g in roles.items()} == \
        {"input": (1, 1.0), "hidden": (16, pytest.approx(5.0)), "output": (1, 1.0)}
    assert sum(g.share for g in roles.values()) == pytest.approx(1.0)
    blocks = [g for g in groups if g.by == "block"]
    assert [g.name for g in blocks] == ["inp"] + [f"blocks.{i}" for i in range(16)] + ["out"]
    assert sum(g.share for g in blocks) == pytest.approx(1.0)
    assert blocks[1].share == pytest.approx(5 / 16 / 7)


def test_json_has_mass_groups_and_the_report_collapses_long_stacks(resmlp):
    report = json.loads(CliRunner().invoke(app, ["check", str(ROOT / "fixtures/sqrt_depth_resmlp.py"), "-f", "json",
                                                 "--exit-zero", "--hidden-mass", "5"]).stdout)
    roles = {g["name"]: g["share"] for g in report["network"]["mass_groups"]["role"]}
    assert roles == pytest.approx({"input": 1 / 7, "hidden": 5 / 7, "output": 1 / 7})
    buffer = io.StringIO()
    render_full(modnorm.analyze(*resmlp), (), Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "role hidden" in text and "block blocks.0" in text and "… 12 more blocks" in text  # 18 groups: 4 shown, 12 folded, 2 shown
