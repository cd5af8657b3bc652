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


# ------------------------------------------------------------------- checkpoints read wrongly instead of refused
def _raw_safetensors(path, header, data=b""):
    """A safetensors file with exactly this header (any JSON) and data: how a corrupt or hostile file looks."""
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    return path


def _refused(result, *words):
    """Exit 2, one paragraph naming the problem, no traceback, no internal error, no finding reported instead."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert "MN901" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_compressed_torch_archive_is_read_correctly(blown_up, tmp_path):
    """A zip whose members are deflated: memory-mapping it read compressed bytes as weights (norm 1.2e38)."""
    import zipfile

    path, state = blown_up
    plain, packed = tmp_path / "plain.pt", tmp_path / "packed.pt"
    torch.save(state, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member.filename))
    assert any(m.compress_type == zipfile.ZIP_DEFLATED for m in zipfile.ZipFile(packed).infolist())
    a = json.loads(check("--weights", path, "-f", "json", "--exit-zero").stdout)["layers"]
    b = json.loads(check("--weights", packed, "-f", "json", "--exit-zero").stdout)["layers"]
    assert [l["norm_at_init"] for l in b] == pytest.approx([l["norm_at_init"] for l in a], rel=1e-12)


def _deep_mlp_header():
    """deep_mlp's real safetensors header and data, to corrupt one entry of."""
    state = deep_mlp.build_model().state_dict()
    blob = bytearray()
    header = {}
    for name, tensor in state.items():
        raw = tensor.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    return header, bytes(blob)


@pytest.mark.parametrize("corrupt, words", [
    ({"data_offsets": [-16, 112]}, ["`0.bias`", "outside the data area"]),
    ({"data_offsets": [0, 8]}, ["`0.bias`", "spans 8 bytes", "needs 256"]),
    ({"shape": [3, 1000]}, ["`0.bias`", "needs 12000"]),
    ({"data_offsets": None}, ["`0.bias`", "not two integers"]),
    ({"shape": [-64]}, ["`0.bias`", "non-negative integers"]),
], ids=["negative-offset", "short-range", "shape-larger-than-range", "null-offsets", "negative-shape"])
def test_safetensors_entry_whose_bytes_do_not_match_is_refused(tmp_path, corrupt, words):
    header, data = _deep_mlp_header()
    header["0.bias"] = {**header["0.bias"], **corrupt}
    _refused(check("--weights", _raw_safetensors(tmp_path / "bad.safetensors", header, data)), *words)


@pytest.mark.parametrize("header, words", [
    ([1, 2, 3], ["header is a JSON list"]),
    (None, ["header is a JSON NoneType"]),
    ({"0.weight": "F32"}, ["`0.weight`", "is a JSON str"]),
    ({"0.weight": None}, ["`0.weight`", "is a JSON NoneType"]),
    ({"0.weight": {"dtype": "F32", "shape": [64, 32]}}, ["`0.weight`", "has no data_offsets"]),
], ids=["list", "null", "string-entry", "null-entry", "missing-offsets"])
def test_malformed_safetensors_header_is_a_clear_error(tmp_path, header, words):
    _refused(check("--weights", _raw_safetensors(tmp_path / "bad.safetensors", header, bytes(64 * 32 * 4))), *words)


def test_meta_tensors_in_a_torch_checkpoint_are_refused(tmp_path):
    """A state dict saved from a model on meta has no data; it was silently ignored (norms predicted from init)."""
    with torch.device("meta"):
        state = deep_mlp.build_model().state_dict()
    path = tmp_path / "meta.pt"
    torch.save(state, path)
    _refused(check("--weights", path), "meta device", str(path))


def test_complex_weights_are_refused_not_truncated_to_real(tmp_path):
    state = deep_mlp.build_model().state_dict()
    state["6.weight"] = torch.complex(state["6.weight"], 10 * state["6.weight"])
    path = tmp_path / "complex.pt"
    torch.save(state, path)
    _refused(check("--weights", path), "6.weight", "complex")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_weights_name_the_layer(tmp_path, bad, suffix):
    state = deep_mlp.build_model().state_dict()
    state["6.weight"][3, 5] = bad
    path = tmp_path / f"diverged{suffix}"
    save_safetensors(state, path) if suffix == ".safetensors" else torch.save(state, path)
    _refused(check("--weights", path), "`6.weight` has non-finite weights", str(path))


# ------------------------------------------------------------------------------------------ sharded checkpoints
def test_sharded_checkpoint_gives_the_same_numbers_as_one_file(blown_up, tmp_path):
    from modnorm.weights import save_sharded

    path, state = blown_up
    index = save_sharded(state, tmp_path / "sharded", shard_bytes=20_000)
    assert len(set(json.loads(index.read_text())["weight_map"].values())) >= 3
    one = json.loads(check("--weights", path, "-f", "json", "--exit-zero").stdout)["layers"]
    for given in (index, index.parent):  # the index or the directory holding it
        many = json.loads(check("--weights", given, "-f", "json", "--exit-zero").stdout)["layers"]
        assert [l["norm_at_init"] for l in many] == [l["norm_at_init"] for l in one]


def test_sharded_reader_reads_each_tensor_once(tmp_path):
    from modnorm.weights import save_sharded

    tensors = {f"t{i}": torch.randn(50, 40) for i in range(6)}
    opened = open_checkpoint(save_sharded(tensors, tmp_path, shard_bytes=20_000))
    for _ in range(3):  # shape, norm and RMS of a weight all ask for it
        for name, tensor in tensors.items():
            assert torch.equal(opened.load(name), tensor)
    assert opened.bytes_read == sum(t.numel() * 4 for t in tensors.values())


@pytest.mark.parametrize("index, words", [
    ({"weight_map": {"0.weight": "../elsewhere.safetensors"}}, ["not a .safetensors file next to it"]),
    ({"weight_map": {"0.weight": "missing.safetensors"}}, ["does not exist"]),
    ({"weights": {}}, ["no `weight_map`"]),
    ([], ["no `weight_map`"]),
], ids=["path-outside", "missing-shard", "no-map", "list"])
def test_bad_shard_index_is_a_clear_error(tmp_path, index, words):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    _refused(check("--weights", path), *words)


def test_bf16_checkpoint_is_audited_in_float32_with_the_float64_figures(blown_up, tmp_path):
    """16-bit checkpoint tensors are widened to float32, not float64 (every bf16 value is a float32 value, so the
    norms are those of the same numbers at half the memory): the report equals the one of the same weights stored
    as float64, and the row sums behind the l1 bounds are exact sums (float64), not float32 roundings."""
    from modnorm.weights import _widened

    w = torch.randn(64, 300).to(torch.bfloat16)
    assert _widened(w).dtype == torch.float32 and torch.equal(_widened(w).double(), w.double())
    assert _widened(w.float()).dtype == torch.float32 and _widened(w.double()).dtype == torch.float64
    _, state = blown_up
    as_bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    as_f64 = {k: v.double() for k, v in as_bf16.items()}  # the same values, stored wide
    reports = []
    for name, state in (("bf16", as_bf16), ("f64", as_f64)):
        save_safetensors(state, tmp_path / f"{name}.safetensors")
        result = runner.invoke(app, ["check", str(MODEL), "--weights", str(tmp_path / f"{name}.safetensors"),
                                     "-f", "json", "--exit-zero", "--isolated"])
        assert result.exit_code == 0, result.output
        reports.append({l["name"]: l["norm_at_init"] for l in json.loads(result.stdout)["layers"]})
    assert reports[0].keys() == reports[1].keys()
    for name in reports[0]:
        assert math.isclose(reports[0][name], reports[1][name], rel_tol=1e-6), name
