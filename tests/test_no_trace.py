"""The library leaves no trace: `modnorm.analyze` and `modnorm.probe.probe` change neither the model they are
given nor torch's global state, and two threads may analyse at once.

Before the fixes: fx's Tracer.trace patches nn.Module.__call__/__getattr__ process-wide, and two concurrent
traces left them patched (a plain nn.Linear(3, 2)(x) then raised); each analyze added a `_tensor_constantN`
attribute to the model; the export route reset logging.disable; probe converted the model to float64 in place,
left it in eval mode and reseeded the global RNG.
"""

import logging
import os
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import modnorm
from modnorm.loading import load
from modnorm.probe import probe
from modnorm.export_route import trace_export

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted(p for p in (ROOT / "fixtures").glob("*.py") if not p.name.startswith("_")
                  and not p.name.startswith("sweep_"))
QUICK = ["clean_mlp", "resnet_bn"]  # every fixture: the slow test below


def global_state() -> dict:
    """What a library call must leave as it found it."""
    return {"rng": torch.random.get_rng_state().clone(), "default dtype": torch.get_default_dtype(),
            "grad mode": torch.is_grad_enabled(), "Module.__call__": nn.Module.__call__,
            "Module.__getattr__": nn.Module.__getattr__, "Function.apply": torch.autograd.Function.__dict__["apply"],
            "logging disabled": logging.root.manager.disable}


def model_state(model: nn.Module) -> dict:
    return {"parameters": {k: (v.dtype, v.detach().clone()) for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()], "attributes": sorted(vars(model)),
            "modules": [name for name, _ in model.named_modules()]}


def assert_same(before: dict, after: dict) -> None:
    for key in before:
        if key == "rng":
            assert torch.equal(before[key], after[key]), "the global RNG moved"
        elif key == "parameters":
            assert before[key].keys() == after[key].keys()
            for name, (dtype, value) in before[key].items():
                assert after[key][name][0] == dtype, f"{name}: dtype {dtype} -> {after[key][name][0]}"
                assert torch.equal(after[key][name][1], value), f"{name} changed"
        else:
            assert before[key] == after[key], f"{key}: {before[key]!r} -> {after[key]!r}"


def analyse_and_probe(path: Path) -> None:
    loaded = load(str(path), device="cpu")  # the user's own code ran; from here on modnorm must leave no trace
    model, inputs = loaded.model, loaded.inputs
    model.train()  # a user's model is usually in training mode
    logging.disable(logging.WARNING)  # a user's choice the export route used to reset
    try:
        model_before, global_before = model_state(model), global_state()
        analysis = modnorm.analyze(model, inputs, file=loaded.file)
        analysis = modnorm.analyze(model, inputs, file=loaded.file)  # twice: nothing may pile up
        try:
            probe(model, inputs, analysis, trials=1, steps=2)
        except NotImplementedError:  # e.g. nn.TransformerEncoderLayer's fused kernel has no forward AD:
            pass  # the probe cannot measure it, and must still leave no trace
        assert_same(model_before, model_state(model))
        assert_same(global_before, global_state())
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", QUICK)
def test_analyze_and_probe_leave_model_and_torch_as_they_were(name):
    analyse_and_probe(ROOT / f"fixtures/{name}.py")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MODNORM_SLOW"), reason="every fixture analysed and probed (~5 min); "
                    "MODNORM_SLOW=1 runs it")
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_fixture_leaves_no_trace(path):
    analyse_and_probe(path)


def test_the_export_route_keeps_the_callers_logging_level():
    logging.disable(logging.WARNING)
    try:
        trace_export(nn.Linear(4, 2), (torch.randn(2, 4),))
        assert logging.root.manager.disable == logging.WARNING
    finally:
        logging.disable(logging.NOTSET)


def test_no_tensor_constants_pile_up_on_the_model():
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * torch.tensor([1.0, 2.0, 3.0, 4.0])  # fx stores it as `_tensor_constant0`

    model = WithConstant()
    for _ in range(3):
        modnorm.analyze(model, torch.randn(2, 4))
    assert not [name for name in vars(model) if name.startswith("_tensor_constant")]


def test_analyze_refuses_unknown_choices_and_non_finite_numbers():
    model = nn.Linear(4, 2)
    for bad in ({"profile": "bogus"}, {"mass": "bogus"}, {"loss": "bogus"}, {"hidden_mass": float("nan")},
                {"hidden_mass": -1.0}, {"norm_input_rms": -1.0}, {"mass_of": (("*", float("inf")),)}):
        with pytest.raises(modnorm.errors.ModnormError, match=next(iter(bad))):
            modnorm.analyze(model, torch.randn(2, 4), **bad)


def _models() -> list:
    sys.path.insert(0, str(ROOT / "fixtures"))
    import clean_mlp
    import modula_gpt

    first, second = clean_mlp.build_model(), modula_gpt.build_model()
    return [(first, clean_mlp.example_inputs(first)), (second, modula_gpt.example_inputs(second))]


def _summary(analysis) -> tuple:
    return (analysis.network.sensitivity, tuple((layer.name, layer.target_norm) for layer in analysis.layers))


def test_two_threads_analyse_two_models_ten_times_and_torch_is_intact():
    models = _models()
    expected = [_summary(modnorm.analyze(model, x)) for model, x in models]
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    results: list = [[], []]
    errors: list = []

    def work(i: int) -> None:
        model, x = models[i]
        try:
            for _ in range(10):
                results[i].append(_summary(modnorm.analyze(model, x)))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == [[expected[0]] * 10, [expected[1]] * 10]
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
    assert nn.Linear(3, 2)(torch.randn(1, 3)).shape == (1, 2)  # plain torch still works
