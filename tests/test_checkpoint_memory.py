"""Peak memory of a checkpoint audit: a few weight matrices in flight, never the checkpoint (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modnorm.weights import save_sharded
from modnorm import weightstore
from modnorm.weightstore import WeightStore

_AUDIT = """
import sys, torch
from pathlib import Path
from torch import nn
from modnorm.weights import check_shapes, open_checkpoint
from modnorm import weightstore
from modnorm.weightstore import WeightStore

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

layers, side = int(sys.argv[2]), int(sys.argv[3])
with torch.device("meta"):
    model = nn.Sequential(*(nn.Linear(side, side, bias=False) for _ in range(layers)))
opened = open_checkpoint(sys.argv[1])
store = WeightStore(model, checkpoint=(opened, check_shapes(opened, model)))
before = status("VmRSS")
uppers = [store.spectral(f"{i}.weight")[0] for i in range(layers)]
opened.close()
print(status("VmHWM") - before, len(set(uppers)), min(uppers))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS and VmHWM from /proc")
def test_sharded_audit_holds_a_few_matrices_not_the_checkpoint(tmp_path):
    """16 bf16 matrices of 3072 x 3072 (block Lanczos size), 302 MB in 3 shards, audited in a fresh process: its
    peak RSS grows by less than 5 float32 matrices (189 MB; two are computed at once, ~150 MB measured, with
    Lanczos work space and per-thread malloc arenas). The 512 MB cache of raw
    tensors this replaced held the whole checkpoint on top of the float32 copies."""
    layers, side = 16, 3072
    base = (0.02 * torch.randn(side, side, generator=torch.Generator().manual_seed(0))).to(torch.bfloat16)
    state = {f"{i}.weight": base * (1 + i / 100) for i in range(layers)}
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = save_sharded(state, tmp_path, shard_bytes=total // 3)
    out = subprocess.run([sys.executable, "-c", _AUDIT, str(index), str(layers), str(side)], capture_output=True,
                         text=True, check=True)
    growth, distinct, smallest = out.stdout.split()
    assert int(distinct) == layers and float(smallest) > 0
    assert int(growth) < 5 * side * side * 4 < 0.65 * total, f"peak grew by {int(growth) / 2**20:.0f} MB"


def test_row_norms_of_a_large_weight_make_no_float64_copy_of_it(monkeypatch):
    """Row RMS, RMS and max row l1 of a weight are float64 sums taken a block of rows at a time: no float64 (or
    |w|) copy of the whole weight is made (two float64 copies of a 32000 x 4096 embedding were 2 GB of a 7B audit's
    3 GB peak). Checked on the copies themselves: peak RSS after small frees depends on malloc's history."""
    weight = torch.randn(8192, 1024, generator=torch.Generator().manual_seed(1))
    store = WeightStore(nn.Embedding(8192, 1024, _weight=weight))
    copied: list[int] = []
    for method in ("double", "abs"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method, lambda t, *a, _f=original, **k: copied.append(t.numel()) or _f(t, *a, **k))
    monkeypatch.setattr(weightstore, "_BLOCK_BYTES", 1 << 20)
    row_rms, rms = store.row_rms("weight"), store.rms("weight")
    max_l1, abs_max = store.max_row_l1("weight"), store.abs_max("weight")
    monkeypatch.undo()
    assert copied and max(copied) * 8 <= 1 << 20
    exact = weight.double()
    assert row_rms[0] == float(exact.pow(2).mean(1).sqrt().max())
    assert rms[0] == pytest.approx(float(exact.pow(2).mean().sqrt()), rel=1e-12)
    assert max_l1[0] == float(exact.abs().sum(1).max()) and abs_max[0] == float(weight.abs().max())


@pytest.mark.parametrize("source", ["safetensors", "torch"])
def test_a_wide_matrix_is_read_stored_transposed_and_its_norm_is_unchanged(tmp_path, source):
    """load(tall=True) gives the same float32 matrix with its transpose contiguous (no transposed copy for block
    Lanczos, which works on the taller side), read in chunks of whole rows (a 1 MB buffer here: 104 rows of
    5000 bf16 per chunk, the last one partial); the Lanczos figures are those of the contiguous copy."""
    from modnorm import norms, weights
    from modnorm.weights import open_checkpoint

    generator = torch.Generator().manual_seed(3)
    wide = (0.02 * torch.randn(2100, 5000, generator=generator)).to(torch.bfloat16)
    tall = (0.02 * torch.randn(2200, 2100, generator=generator)).to(torch.bfloat16)
    state = {"wide": wide, "tall": tall}
    if source == "safetensors":
        path = save_sharded(state, tmp_path, shard_bytes=10 ** 9)
    else:
        path = tmp_path / "state.pt"
        torch.save(state, path)
    weights._CHUNK_BYTES, saved = 1 << 20, weights._CHUNK_BYTES
    try:
        opened = open_checkpoint(str(path))
        stored = opened.load("wide", widen=True, tall=True)
        plain = opened.load("wide", widen=True)
        assert stored.shape == (2100, 5000) and stored.T.is_contiguous() and plain.is_contiguous()
        assert torch.equal(stored, plain) and torch.equal(stored, wide.float())
        assert opened.load("tall", widen=True, tall=True).is_contiguous()  # taller than wide: as it is
        opened.close()
    finally:
        weights._CHUNK_BYTES = saved
    a, b = norms.lanczos_spectral_norm(stored), norms.lanczos_spectral_norm(plain)
    assert (a.value, a.upper) == (b.value, b.upper)  # the same Gram products on the same tall side
    assert a.lower == pytest.approx(b.lower, rel=1e-9) and a.lower <= a.value <= a.upper
