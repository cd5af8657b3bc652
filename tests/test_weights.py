"""--weights PATH: a checkpoint is audited one tensor at a time, shapes checked first, never unpickled unsafely."""

import json
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.weights import open_checkpoint, save_safetensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
import deep_mlp  # noqa: E402

runner = CliRunner()
MODEL = ROOT / "fixtures/deep_mlp.py"


def check(*args):
    return runner.invoke(app, ["check", str(MODEL), *map(str, args)])


@pytest.fixture
def blown_up(tmp_path):
    """deep_mlp's weights with layer `6` multiplied by 50, as a trained checkpoint gone wrong."""
    torch.manual_seed(1)
    state = deep_mlp.build_model().state_dict()
    state["6.weight"] = state["6.weight"] * 50
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path)
    return path, state


def test_blown_up_layer_is_flagged_by_name(blown_up):
    path, state = blown_up
    result = check("--weights", path, "-f", "json", "--select", "MN101", "--exit-zero")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert [f["module"] for f in errors] == ["6"]
    layer = next(l for l in report["layers"] if l["name"] == "6")
    w = state["6.weight"].double()
    exact = math.sqrt(w.shape[1] / w.shape[0]) * float(torch.linalg.matrix_norm(w, 2))
    assert layer["norm_at_init"] == pytest.approx(exact, rel=1e-6) and layer["norm_source"] == "measured"
    assert report["model"]["weights"] == str(path) and report["model"]["device"] == "meta"


def test_torch_state_dict_gives_the_same_numbers(blown_up, tmp_path):
    path, state = blown_up
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    a = json.loads(check("--weights", path, "-f", "json", "--exit-zero").stdout)["layers"]
    b = json.loads(check("--weights", pt, "-f", "json", "--exit-zero").stdout)["layers"]
    assert [l["norm_at_init"] for l in a] == pytest.approx([l["norm_at_init"] for l in b], rel=1e-12)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_safetensors(deep_mlp.build_model(width=96).state_dict(), path)
    result = check("--weights", path)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "does not match the architecture" in result.stderr and "0.weight: checkpoint [96, 32], model [64, 32]" \
        in result.stderr and str(path) in result.stderr


def test_missing_tensor_is_named(tmp_path):
    state = deep_mlp.build_model().state_dict()
    del state["14.weight"]
    path = tmp_path / "partial.safetensors"
    save_safetensors(state, path)
    result = check("--weights", path)
    assert result.exit_code == 2 and "missing (14.weight)" in result.stderr


class Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/modnorm_pwned_marker")


def test_malicious_pickle_is_refused_without_running(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"0.weight": Payload()}, handle)
    result = check("--weights", path)
    assert result.exit_code == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not MARKER.exists()


def test_other_formats_are_not_opened(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"anything")
    result = check("--weights", path)
    assert result.exit_code == 2 and "never unpickled" in result.stderr


def test_safetensors_reader_reads_lazily_and_exactly(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "c": torch.randn(5, dtype=torch.float64).to(torch.bfloat16), "empty": torch.zeros(0, 2)}
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, metadata={"format": "pt"})
    opened = open_checkpoint(path)
    assert sorted(opened.keys()) == sorted(tensors)
    for name, tensor in tensors.items():
        assert opened.shape(name) == tuple(tensor.shape)
        assert torch.equal(opened.load(name), tensor)


def test_compatible_with_the_safetensors_package(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = {"w": torch.randn(4, 3), "b": torch.randn(4).to(torch.float16)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(tensors, ours)
    safetensors.save_file(tensors, str(theirs))
    assert all(torch.equal(safetensors.load_file(str(ours))[k], v) for k, v in tensors.items())
    assert all(torch.equal(open_checkpoint(theirs).load(k), v) for k, v in tensors.items())


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00")
    result = check("--weights", path)
    assert result.exit_code == 2 and "truncated" in result.stderr
