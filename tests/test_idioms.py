"""Idioms people write from memory (issue 19): each is read as what it computes, not as an unknown op or a
constant of unknown value. The models are in tests/data/idioms/."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modnorm
from modnorm.cli import app

IDIOMS = Path(__file__).parent / "data" / "idioms"
runner = CliRunner()


def check(name: str, *args: str) -> dict:
    result = runner.invoke(app, ["check", str(IDIOMS / name), "-f", "json", "--exit-zero", "--isolated", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def load(name: str, entry: str = "build_model") -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(Path(name).stem, IDIOMS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, entry)()


def codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"]}


def test_meta_llama_casts_and_repeat_interleave_keep_the_attention_pattern():
    """softmax(scores.float()).type_as(q) is still attention divided by sqrt(d): MN301 fires as it does without the
    casts; repeat_interleave (GQA) is a known op, so nothing is unknown and the network figure is finite."""
    report = check("meta_llama.py")
    assert "MN301" in codes(report)
    assert "MN901" not in codes(report), [f["message"] for f in report["findings"] if f["code"] == "MN901"]
    mn301 = next(f for f in report["findings"] if f["code"] == "MN301")
    assert "head dim 8" in mn301["message"] and "0.354" in mn301["message"]  # 1/sqrt(8) = 0.3536
    assert report["network"]["sensitivity"] < float("inf")


def layers(report: dict) -> dict[str, dict]:
    return {layer["name"]: layer for layer in report["layers"]}


def test_raw_parameter_lora_factors_are_atoms():
    """`x @ self.A.t() @ self.B.t()`: A and B are trainable weights, so they are Linear atoms with mass (not
    'matmul with a constant of unknown value'), and B at 0 is LoRA's init, not a missing one."""
    report = check("raw_lora.py")
    assert "MN901" not in codes(report)
    found = layers(report)
    for name, shape in {"l1.A": [4, 32], "l1.B": [64, 4], "l2.A": [4, 64], "l2.B": [10, 4]}.items():
        assert found[name]["kind"] == "Linear" and found[name]["shape"] == shape and found[name]["mass"] > 0
    assert found["l1.B"]["norm_at_init"] == 0
    assert not [f for f in report["findings"] if f["code"] == "MN101" and f["module"].endswith(".B")]
    assert report["network"]["sensitivity"] < float("inf")


def test_raw_parameter_lora_bound_holds_by_measurement():
    """The network's input Lipschitz bound, with A and B as atoms, against power iteration and gradient ascent.
    B is set non-zero first (a trained adapter), so the low-rank branch really contributes."""
    from tests.adversary import DEFAULT, measure_input_lipschitz

    model = load("raw_lora.py").double()
    with torch.no_grad():
        for lora in (model.l1, model.l2):
            lora.B.normal_(0, 0.5)
    x = torch.randn(4, 32, dtype=torch.float64)
    bound = modnorm.analyze(model, x).network.sensitivity
    measured = measure_input_lipschitz(model, x, DEFAULT)
    assert 0 < measured <= bound, (measured, bound)


def test_peft_lora_zero_b_is_not_flagged_and_frozen_base_gets_no_mass():
    report = check("peft_lora.py")
    found = layers(report)
    assert found["l1.base_layer"]["mass"] == 0 and found["l2.base_layer"]["mass"] == 0  # requires_grad=False
    trainable = [found[n]["mass"] for n in ("l1.lora_A", "l1.lora_B", "l2.lora_A", "l2.lora_B")]
    assert all(m > 0 for m in trainable) and sum(trainable) == report["network"]["mass"]
    assert not [f for f in report["findings"] if f["code"] == "MN101" and "lora_B" in f["module"]]
    # a frozen base is not the user's to re-initialise: no MN101 on it, and the mass table counts it apart
    assert not [f for f in report["findings"] if f["code"] == "MN101" and "base_layer" in f["module"]]
    roles = {g["name"]: (g["atoms"], g["frozen"]) for g in report["network"]["mass_groups"]["role"]}
    assert roles == {"input": (1, 1), "hidden": (2, 0), "output": (1, 1)}  # l1: base + lora_A in, l2: base + lora_B out


@pytest.mark.parametrize("entry, cell, rnn_params", [
    ("build_model", "LSTM", 4 * 64 * (32 + 64) + 2 * 4 * 64),  # 4 gates: W_ih 256×32, W_hh 256×64, two biases
    ("build_gru", "GRU", 3 * 64 * (32 + 64) + 2 * 3 * 64),  # 3 gates
])
def test_recurrent_cell_is_reported_with_its_parameters_and_sharpness_is_not_certified(entry, cell, rnn_params):
    report = check(f"recurrent.py:{entry}")
    total = 100 * 32 + rnn_params + 64 * 10 + 10
    unknown = [f for f in report["findings"] if f["code"] == "MN901"]
    assert len(unknown) == 1 and unknown[0]["module"] == "rnn"
    assert f"{rnn_params:,} parameters ({round(100 * rnn_params / total)}% of the model's" in unknown[0]["message"]
    model = load("recurrent.py", entry)
    op = next(o for o in modnorm.analyze(model, torch.randint(0, 100, (2, 7))).ops if o.kind == "unknown")
    assert op.module == "rnn" and op.info["unmodelled_parameters"] == rnn_params
    assert abs(op.info["unmodelled_share"] - rnn_params / total) < 1e-9
    sharpness = report["network"]["sharpness"]
    assert sharpness["certified"] is False and cell in sharpness["reason"]  # not "certified α 0 β 0 γ 0"


def test_recurrent_cell_is_listed_in_the_mass_table():
    result = runner.invoke(app, ["check", str(IDIOMS / "recurrent.py"), "-v", "--isolated", "--exit-zero",
                                 "--color", "never"])
    assert "unmodelled rnn (LSTM)" in result.stdout and "86.7% of the parameters" in result.stdout  # 25088/28938
    assert "sharpness (certified)" not in result.stdout


def source_line(name: str, text: str) -> int:
    lines = (IDIOMS / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_modulelist_of_sequential_blocks_names_the_block():
    """`for block in self.blocks: x = x + block(x)` adds in the parent's forward: the merges are named by their
    block (`blocks.3`), so the eight identical `[<model>]` lines fold into one finding for the role `blocks.*`."""
    report = check("sequential_blocks.py")
    merges = [f for f in report["findings"] if f["code"] == "MN201"]
    assert len(merges) == 1 and merges[0]["module"] == "blocks.*", merges
    assert "×8" in merges[0]["message"]


def test_convs_inside_a_sequential_point_at_their_own_lines():
    report = check("cifar_cnn.py")
    found = layers(report)
    for name, text in {"features.0": "nn.Conv2d(3, 32", "features.3": "nn.Conv2d(32, 64",
                       "features.6": "nn.Conv2d(64, 128"}.items():
        assert found[name]["line"] == source_line("cifar_cnn.py", text), (name, found[name]["line"])
    assert found["classifier"]["line"] == source_line("cifar_cnn.py", "return self.classifier(")


def test_a_query_scaled_after_its_projection_is_part_of_the_logit_scale(monkeypatch):
    """`q_proj(x) * head_dim**-0.5` then sdpa(scale=1.0) (Whisper, BART): the logits are scaled by 1/sqrt(16) =
    0.25, aligned q·k reaches 16 x 0.25 = 4: a warning (not an error claiming scale 1 and aligned 16), and the fix
    names where the multiplier is written: 1/(16 x 1) = 0.0625 on the projection. With that fix: no MN301."""
    mn301 = [f for f in check("prescaled_query.py")["findings"] if f["code"] == "MN301"]
    assert len(mn301) == 1 and mn301[0]["severity"] == "warning", mn301
    assert "scaled by 0.25 (1 in the call × 0.25" in mn301[0]["message"] and "reaches 4 " in mn301[0]["message"]
    assert "multiply the q projection's output by 0.0625 instead of 0.25" in mn301[0]["fix"], mn301[0]["fix"]
    fixed = load("prescaled_query.py", "build_model")
    monkeypatch.setitem(type(fixed).forward.__globals__, "QUERY_SCALE", 1 / 16)
    analysis = modnorm.analyze(fixed, torch.randn(1, 8, 64))
    op = next(o for o in analysis.ops if "attention" in o.tags)
    assert op.attention_scale * op.attention_operand_scale * op.head_dim == 1.0
