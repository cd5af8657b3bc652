"""What a check imports, where users wait for it: the CLI's own process never imports torch (the report comes back
from the check's child as plain data), and a meta build does not import torch._dynamo for `normal_` (2.5 s of a
small model's check). Each runs in a fresh interpreter: this test process has imported everything already."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modnorm import initlaw

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("fixture, device", [("fixtures/nanogpt.py", "cpu"), ("fixtures/resnet_bn.py", "cpu"),
                                             ("fixtures/llama_block.py", "meta")])
def test_a_check_result_unpickles_without_torch(tmp_path, fixture, device):
    pickled = tmp_path / "result.pkl"
    _fresh(f"""
        import pickle
        from modnorm.check import check_model
        from modnorm.config import Settings
        pickle.dump(check_model({str(ROOT / fixture)!r}, Settings(device={device!r})), open({str(pickled)!r}, "wb"))
    """)
    assert _fresh(f"""
        import pickle, sys
        result = pickle.load(open({str(pickled)!r}, "rb"))
        print(len(result.analysis.layers) > 0, "torch" in sys.modules)
    """) == "True False"


def test_a_meta_build_with_normal_init_does_not_import_dynamo():
    assert _fresh(f"""
        import sys
        from modnorm.loading import load
        loaded = load({str(ROOT / "fixtures/bert_encoder.py")!r}, device="meta")
        print(loaded.init_laws is not None and len(loaded.init_laws) > 0, "torch._dynamo" in sys.modules)
    """) == "True False"


def test_normal_on_meta_keeps_the_checks_of_its_kernel_and_records_the_law():
    with torch.device("meta"), initlaw.record_init() as recorder:
        weight = torch.empty(4, 8)
        assert weight.normal_(0.0, 0.02) is weight
        with pytest.raises(RuntimeError, match="std >= 0.0"):
            torch.empty(3).normal_(0.0, -1.0)
        with pytest.raises(RuntimeError, match="floating-point or complex"):
            torch.empty(3, dtype=torch.long).normal_()
        recorded = recorder.laws[id(weight)]
    assert (recorded.kind, recorded.mean, recorded.std) == ("normal", 0.0, 0.02)
