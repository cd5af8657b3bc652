"""examples/lr_study.py (issue 22) and the target selection of modnorm.optim it relies on.

The study's smoke test trains tiny GPTs on the standard library's source for a few steps: the loss must fall, the
first normalized step must have modular norm lr (measured exactly from the weights before and after it), and the
train/validation split must be by file and the same on every call. The optimizer tests check that the targets are
those of the profile asked for (an independent analysis run with that profile), that they are logged once and
recomputed only on request."""

import importlib.util
import logging
import sys

import pytest
import torch

import modnorm
from modnorm.testing import check_module
from modnorm.optim import ModularNormalized
from tests.conftest import ROOT


def study_module():
    spec = importlib.util.spec_from_file_location("lr_study", ROOT / "examples/lr_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lr_study"] = module  # the worker pool pickles functions by module name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return study_module()


# ------------------------------------------------------------------------------------------------------ the study
def test_split_is_by_file_and_deterministic(study):
    files = study.stdlib_files()
    root = __import__("sysconfig").get_paths()["stdlib"]
    names = [p.relative_to(root).as_posix() for p in files]
    held_out = {n for n in names if study.is_validation(n)}
    assert 0.05 < len(held_out) / len(names) < 0.15  # crc32 mod 10: about a tenth of the files
    assert not any("site-packages" in n for n in names)
    train_a, val_a = study.load_corpus(200_000)
    train_b, val_b = study.load_corpus(200_000)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert int(train_a.max()) < study.VOCAB and len(val_a) > 10_000
    # no validation window occurs in the training text (the split is by file, not by position)
    probe = bytes(val_a[5_000:5_200].tolist())
    assert probe not in bytes(train_a.tolist())


@pytest.mark.parametrize("model", ["modula", "nanogpt-fixed"])
@pytest.mark.parametrize("optimizer", ["norm-adamw", "norm-sgd"])
def test_normalized_training_learns_and_steps_by_lr(study, model, optimizer):
    run = study.Run(model, 16, 2, optimizer, lr=0.3, steps=40, batch=8, context=16)
    result = study.train(run, max_bytes=300_000, measure_step=True)
    start, end = sum(result["curve"][:2]) / 2, sum(result["curve"][-2:]) / 2
    # log(128) = 4.85 nats is the uniform guess; 40 steps must get clearly below where training started
    assert end < start - 0.3, result["curve"]
    assert result["val"] < start
    # the study measures σ by power iteration (modnorm.optim's default), a lower estimate: the step is at least lr
    # (the first one starts cold, so it may be larger; test_normalized_step_is_lr measures the exact norm)
    assert result["first_step_over_lr"] >= 1 - 1e-4, result["first_step_over_lr"]


@pytest.mark.parametrize("optimizer", ["norm-adamw", "norm-sgd"])
def test_normalized_step_is_lr(study, optimizer):
    """With exact norms the first step's modular norm (max over atoms of ‖Δw_i‖_i / t_i, measured from the weights
    before and after it) is the scheduled learning rate."""
    run = study.Run("modula", 16, 2, optimizer, lr=0.3, steps=3, batch=4, context=16, norm="exact")
    assert study.train(run, max_bytes=100_000, measure_step=True)["first_step_over_lr"] == pytest.approx(1, rel=1e-3)


def test_plain_adamw_learns(study):
    run = study.Run("nanogpt", 16, 1, "adamw", lr=3e-3, steps=40, batch=8, context=16, profile="-")
    result = study.train(run, max_bytes=300_000)
    assert result["curve"][-1] < result["curve"][0] - 0.3 and result["first_step_over_lr"] is None


def test_fixed_nanogpt_has_the_changes_modnorm_prints(study):
    """Residual merges (1 - 1/2L, 1/2L) and every atom well-normed (norm 1) at init, the tied token embedding and
    head included: MN101's tied fix keeps the tie, gives the embedding rows of RMS 1 and multiplies the head's output
    by sqrt(out/in) / sigma_max (its natural norm then is sqrt(in/out) sigma_max · that = 1). The change is confined
    to what modnorm prints for nanoGPT (MN201, MN301, MN101): no MN101 is left."""
    model = study.build("nanogpt-fixed", 32, 2, 16)
    assert model.lm_head.head.weight is model.transformer.wte.weight  # still tied
    result = check_module(model, torch.zeros(1, 16, dtype=torch.long), isolated=True)
    analysis = result.analysis
    assert analysis.merges and all(m.skip_coefficient == pytest.approx(0.75) and
                                   m.branch_coefficient == pytest.approx(0.25) for m in analysis.merges)
    atoms = [l for l in analysis.layers if l.kind in ("Linear", "Embedding")]
    assert {"transformer.wte", "lm_head.head"} <= {l.name for l in atoms}
    assert all(l.norm_at_init == pytest.approx(1, rel=1e-3) for l in atoms), [(l.name, l.norm_at_init) for l in atoms]
    assert not [f for f in result.findings if f.code == "MN101"]
    as_written = modnorm.analyze(study.build("nanogpt", 32, 2, 16), torch.zeros(1, 16, dtype=torch.long))
    assert min(l.target_norm for l in analysis.layers if l.target_norm > 0) > \
        100 * min(l.target_norm for l in as_written.layers if l.target_norm > 0)


def test_optimum_interpolates_a_parabola(study):
    grid = [0.01, 0.1, 1.0]
    # loss = (log10 lr + 1.2)^2 + 2: the optimum is at 10^-1.2 exactly (a parabola is fitted exactly)
    losses = [(e + 1.2) ** 2 + 2 for e in (-2, -1, 0)]
    lr, loss, interpolated = study.optimum(grid, losses)
    assert lr == 0.1 and loss == pytest.approx(2.04) and interpolated == pytest.approx(10 ** -1.2)
    assert study.optimum(grid, [3.0, 2.0, float("inf")])[2] == 0.1  # a diverged neighbour: no interpolation


def test_quick_mode_runs_end_to_end(study, tmp_path):
    out = tmp_path / "quick.json"
    report = study.main(["--quick", "--models", "modula", "--optimizers", "norm-adamw", "--workers", "1",
                         "--out", str(out)])
    assert out.exists() and (tmp_path / "quick_certified.md").exists()
    finite = [r["val"] for r in report["results"].values() if r["val"] != float("inf")]
    assert len(report["results"]) == 3 * len(study.GRIDS["norm-adamw"]) and finite
    assert min(finite) < 4.85  # better than the uniform guess over 128 characters after 12 steps
    again = study.main(["--quick", "--models", "modula", "--optimizers", "norm-adamw", "--workers", "1",
                        "--out", str(out)])  # resumes: nothing is trained again
    assert again["results"] == report["results"]


def test_seed_mass_sizes_and_per_optimizer_rates_select_the_runs(study):
    """`--sizes 128x2 --lrs adamw=0.01 --lrs norm-adamw=0.5,1 --hidden-mass 5 --seed 1`: just those runs, AdamW
    without a mass, the seed and mass in the key (so they never overwrite the study's own runs)."""
    grid = study.dataclasses.replace(study.FULL, only=((128, 2),))
    rates = study._learning_rates(["adamw=0.01", "norm-adamw=0.5,1"])
    runs = study.runs_of(grid, ["modula"], ["adamw", "norm-adamw"], "modula", rates, hidden_mass=5, seed=1)
    assert [(r.optimizer, r.lr, r.hidden_mass, r.width, r.depth) for r in runs] == [
        ("adamw", 0.01, 1.0, 128, 2), ("norm-adamw", 0.5, 5, 128, 2), ("norm-adamw", 1.0, 5, 128, 2)]
    assert runs[0].key.endswith("|-|s1") and runs[1].key.endswith("|modula|m5|s1")
    assert study._learning_rates(["0.1,1"]) == [0.1, 1.0]
    stored = {"model": "modula", "width": 128, "depth": 2, "optimizer": "adamw", "profile": "-"}  # an old run
    assert study._matches(stored, study.selector("modula", 128, 2, "adamw", "modula"))
    assert not study._matches(stored, study.selector("modula", 128, 2, "adamw", "modula", seed=1))


# ------------------------------------------------------------------------------------------- target selection
def small_gpt():
    sys.path.insert(0, str(ROOT / "fixtures"))
    from nanogpt import build_model, example_inputs

    torch.manual_seed(0)
    model = build_model()
    return model, example_inputs(model)


@pytest.mark.parametrize("profile", ["certified", "modula"])
def test_targets_are_those_of_the_chosen_profile(profile):
    model, x = small_gpt()
    opt = ModularNormalized(torch.optim.AdamW(model.parameters()), model, example_inputs=x, profile=profile)
    independent = modnorm.analyze(model, x, profile=profile)
    assert sorted(a.target for a in opt.atoms) == pytest.approx(
        sorted(l.target_norm for l in independent.layers if l.target_norm > 0), rel=1e-9)
    assert opt.profile == profile and f"profile {profile}" in opt.describe()


def test_default_profile_is_the_reports_and_differs_from_modulas():
    model, x = small_gpt()
    default = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x)
    nominal = ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x,
                                profile="modula")
    assert default.profile == "certified"
    assert [a.target for a in default.atoms] != pytest.approx([a.target for a in nominal.atoms], rel=1e-3)


def test_choice_is_logged_once_and_targets_change_only_on_retarget(caplog):
    model, x = small_gpt()
    with caplog.at_level(logging.INFO, logger="modnorm.optim"):
        opt = ModularNormalized(torch.optim.AdamW(model.parameters(), lr=1e-3), model, example_inputs=x, lr=0.1)
        before = [a.target for a in opt.atoms]
        for _ in range(3):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    assert sum("profile certified" in r.getMessage() for r in caplog.records) == 1
    assert [a.target for a in opt.atoms] == before  # not recomputed per step
    # a checkpoint with other weights: the targets follow only when asked
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.mul_(4.0)
    assert [a.target for a in opt.atoms] == before
    opt.retarget()
    fresh = modnorm.analyze(model, x)
    assert sorted(a.target for a in opt.atoms) == pytest.approx(
        sorted(l.target_norm for l in fresh.layers if l.target_norm > 0), rel=1e-9)
    assert [a.target for a in opt.atoms] != pytest.approx(before, rel=1e-3)
    model(x, x)[1].backward()
    opt.step()  # the rebound atoms still step (the base optimizer's state is kept)


def test_profile_must_agree_with_a_given_analysis():
    model, x = small_gpt()
    analysis = modnorm.analyze(model, x, profile="modula")
    with pytest.raises(ValueError, match="profile"):
        ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, analysis, profile="certified")
    assert ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, analysis).profile == "modula"
    with pytest.raises(ValueError, match="profile must be one of"):
        ModularNormalized(torch.optim.SGD(model.parameters(), lr=0.1), model, example_inputs=x, profile="nominal")


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_a_tied_weight_keeps_every_atom_within_lr(base):
    """nanoGPT ties its token embedding to its head: one parameter, two atoms with targets ~1e4 apart. The step must
    keep both within lr · t_i (measured exactly from the weights before and after), and reach lr on one of them."""
    model, x = small_gpt()
    model = model.double()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3)}[base]
    opt = ModularNormalized(make(model.parameters()), model, example_inputs=x, lr=0.05, norm="exact")
    assert len(opt._tied) == 1  # transformer.wte and lm_head
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    model(x, x)[1].backward()
    opt.step()
    ratios = opt.update_norms(before, model)
    tied = {"transformer.wte", "lm_head"}
    assert max(ratios[n] for n in tied) == pytest.approx(0.05, rel=1e-6)
    assert all(r <= 0.05 * (1 + 1e-6) for r in ratios.values()), ratios
    assert max(ratios.values()) == pytest.approx(0.05, rel=1e-6)
