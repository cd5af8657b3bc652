"""Issue 21: a check of a CPU model with real weights runs its trace's ops on the CPU (not meta, whose ops import
torch._dynamo in torch 2.13) and computes the floors' statistics only where read. Behaviour only: the graph,
its shadows and the statistics are the ones the meta trace and the eager statistics give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modnorm import floors, tracing

ROOT = Path(__file__).resolve().parents[1]


def test_check_of_a_cpu_cnn_does_not_import_dynamo() -> None:
    code = ("import sys, torch\nfrom modnorm.check import check_model\nfrom modnorm.config import Settings\n"
            f"check_model({str(ROOT / 'fixtures/resnet_bn.py')!r}, Settings(device='cpu'))\n"
            "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_check_of_a_cpu_cnn_does_not_import_symbolic_shapes() -> None:
    """The convolutions' shadows come from the output-size formula, not from the meta kernel's torch._check."""
    code = ("import sys, torch\nfrom modnorm.check import check_model\nfrom modnorm.config import Settings\n"
            f"check_model({str(ROOT / 'bench/fixtures/efficientnet_b0.py')!r}, Settings(device='cpu'))\n"
            "print('torch.fx.experimental.symbolic_shapes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False"]


_CONVS = [  # (class, in, out, kernel, keywords, input shape)
    (nn.Conv1d, 4, 6, 3, {}, (2, 4, 17)),
    (nn.Conv1d, 4, 8, 5, {"stride": 2, "padding": 2, "dilation": 2, "groups": 4}, (1, 4, 33)),
    (nn.Conv2d, 3, 8, 3, {"stride": 2, "padding": 1}, (2, 3, 15, 16)),
    (nn.Conv2d, 8, 8, 7, {"padding": 3, "groups": 8}, (1, 8, 9, 9)),  # depthwise
    (nn.Conv2d, 8, 4, 1, {}, (1, 8, 1, 1)),  # squeeze-excite: both layouts' strides coincide but for size-1 dims
    (nn.Conv2d, 1, 4, 3, {}, (2, 1, 5, 5)),
    (nn.Conv2d, 4, 4, 3, {"padding": "same", "dilation": 2}, (1, 4, 10, 11)),
    (nn.Conv2d, 4, 4, 3, {"padding": "valid"}, (1, 4, 10, 11)),
    (nn.Conv2d, 4, 4, 3, {"padding": 1, "padding_mode": "reflect"}, (1, 4, 6, 7)),
    (nn.Conv2d, 4, 4, (3, 1), {"stride": (1, 3), "padding": (1, 0)}, (1, 4, 6, 7)),
    (nn.Conv3d, 2, 3, 3, {"stride": 2, "padding": 1}, (1, 2, 5, 6, 7)),
]


@pytest.mark.parametrize("layout", ["default", "channels_last"])
@pytest.mark.parametrize("case", _CONVS, ids=lambda c: f"{c[0].__name__}-{c[5]}")
def test_conv_shadow_is_what_the_meta_kernel_returns(case, layout) -> None:
    cls, c_in, c_out, kernel, keywords, shape = case
    conv = cls(c_in, c_out, kernel, **keywords)
    x = torch.randn(shape)
    if layout == "channels_last":
        if x.dim() != 4:
            pytest.skip("channels_last is a 4-D layout")
        x = x.to(memory_format=torch.channels_last)
    shadow = tracing._conv_shadow(conv, (x,), {})
    expected = tracing._run_on_meta(conv, (x.to("meta"),), {})
    if layout == "channels_last" and x.stride() != torch.empty(x.shape).stride():
        assert shadow is None  # the meta kernel decides the layout
        return
    assert shadow is not None and shadow.is_meta
    assert (shadow.shape, shadow.dtype, shadow.stride()) == (expected.shape, expected.dtype, expected.stride())
    assert shadow.shape == conv(x).shape


def test_conv_shadow_leaves_what_the_kernel_would_refuse_to_it() -> None:
    conv = nn.Conv2d(4, 4, 3)
    assert tracing._conv_shadow(conv, (torch.randn(1, 3, 8, 8),), {}) is None  # wrong channels: meta explains
    assert tracing._conv_shadow(conv, (torch.randn(1, 4, 2, 2),), {}) is None  # smaller than the kernel
    assert tracing._conv_shadow(conv, (torch.randn(1, 4, 8, 8, dtype=torch.float64),), {}) is None  # dtypes differ
    assert tracing._conv_shadow(conv, (torch.randn(4, 8, 8),), {}) is None  # unbatched


def test_uninteresting_files_are_fx_s() -> None:
    from torch.fx.experimental.symbolic_shapes import uninteresting_files

    ours, theirs = tracing._uninteresting_files(), uninteresting_files()
    assert theirs <= ours
    extra = {Path(f) for f in ours - theirs}  # polyfills not loaded in this build: never on an eager stack
    assert all(p.parent.name == "polyfills" for p in extra), extra


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.register_buffer("scale", torch.tensor([0.5, 1.0, 2.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = y * self.scale.view(1, -1, 1, 1)
        y = F.relu(y, inplace=True) + x
        return y


class _Mixed(nn.Module):
    """Ops the CPU runs, ops left to meta (data-dependent), in-place writes and a constant made from shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.block = _Block()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + torch.arange(h * w, device=x.device).view(1, -1, 1).to(t.dtype) * 0.01
        t = self.norm(t)
        kept = t[:, t.shape[1] // 2:]
        picked = t.nonzero()  # data-dependent: unknown on meta, and so here
        del picked
        kept = kept.clone()
        kept.mul_(2.0)
        return self.head(kept.mean(1)).softmax(-1)


def _shadows(model: nn.Module, inputs: tuple, monkeypatch: pytest.MonkeyPatch, real: bool,
             strides: bool = True) -> tuple[str, list]:
    with monkeypatch.context() as patch:
        if not real:
            patch.setattr(tracing._RealValues, "of", classmethod(lambda cls, inputs: None))
        traced = tracing.trace_fx(model, inputs)
    rows = []
    for node in traced.graph.nodes:
        value = node.meta.get("value")
        if isinstance(value, torch.Tensor):
            assert value.is_meta
            value = (tuple(value.shape), value.dtype, value.stride() if strides else None, value.requires_grad)
        elif isinstance(value, (tuple, list)):
            value = [(tuple(v.shape), v.dtype, v.stride() if strides else None) if isinstance(v, torch.Tensor)
                     else v for v in value]
        rows.append((node.name, node.op, str(node.target), value, node.stack_trace.splitlines()[-2:]
                     if node.stack_trace else None))
    return traced.graph.python_code("self").src, rows


@pytest.mark.parametrize("make", [_Mixed, _Block])
def test_cpu_values_give_the_meta_trace(make: type, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 9, 9) if make is _Mixed else torch.randn(2, 4, 5, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = x.clone()
    rng = torch.get_rng_state()
    real = _shadows(model, (x,), monkeypatch, True)
    assert torch.equal(torch.get_rng_state(), rng)  # the CPU ops drew no random numbers
    fresh = make().eval()  # fx names constants after those already on the root
    fresh.load_state_dict(state)
    assert real == _shadows(fresh, (x,), monkeypatch, False)
    assert torch.equal(x, before)  # the example inputs and the weights are never written into
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_real_fixtures_trace_as_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shapes and dtypes as on meta; strides may differ where a CPU kernel picks another layout than the meta one
    (sdpa's output), which the analysis does not read."""
    from modnorm.loading import load

    for target in ("fixtures/resnet_bn.py", "fixtures/vit.py", "fixtures/mlp_mixer.py"):
        loaded = load(str(ROOT / target), device="cpu")
        real = _shadows(loaded.model, tuple(loaded.inputs), monkeypatch, True, strides=False)
        meta = _shadows(loaded.model, tuple(loaded.inputs), monkeypatch, False, strides=False)
        assert real == meta, target


def _eager(graph_module: torch.fx.GraphModule, inputs: tuple) -> dict:
    """The statistics as computed before issue 21: every node's, as it runs."""
    stats = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):
            result = super().run_node(n)
            figures = floors._position_stats(result)
            if figures is not None:
                stats[n.name] = figures
            return result

    with torch.no_grad():
        Recorder(graph_module).run(*floors.in_unit_ball(inputs))
    return stats


@pytest.mark.parametrize("kept", [floors.KEPT_BYTES, 0])
def test_measured_statistics_are_the_eager_ones(kept: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floors, "KEPT_BYTES", kept)
    torch.manual_seed(1)
    model = _Mixed().eval()
    x = torch.randn(2, 3, 9, 9) * 3
    traced = tracing.trace_fx(model, (x,))
    measured = floors.measure(traced.graph_module, (x,))
    expected = _eager(traced.graph_module, (x,))
    assert list(measured) == list(expected) and len(measured) == len(expected)
    for name in reversed(list(expected)):  # read last first: the in-place writes have all run by then
        assert measured.get(name) == expected[name], name
    assert measured.get("no_such_node") is None


@pytest.mark.parametrize("fixture", ["fixtures/resnet_bn.py", "fixtures/vit.py"])
def test_norms_computed_ahead_are_the_ones_computed_inline(fixture: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from modnorm import weightstore
    from modnorm.check import check_model
    from modnorm.config import Settings

    target = str(ROOT / fixture)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = check_model(target, Settings(device="cpu"))
        monkeypatch.setattr(weightstore, "JOB_CORES", 2)
        monkeypatch.setattr(weightstore.os, "cpu_count", lambda: 2)
        started = []
        original = weightstore.NormsAhead.start
        monkeypatch.setattr(weightstore.NormsAhead, "start", lambda self: (started.append(self), original(self)))
        ahead = check_model(target, Settings(device="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert len(started) == 1 and len(started[0]) > 0
    started[0].stop()
    assert repr(ahead.analysis) == repr(inline.analysis)
    assert [f.message for f in ahead.findings] == [f.message for f in inline.findings]


def test_measured_is_empty_when_the_graph_does_not_run() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    traced = tracing.trace_fx(model, (torch.randn(2, 4),))
    measured = floors.measure(traced.graph_module, (torch.randn(2, 5),))  # the Linear refuses 5 features
    assert not measured and measured.get("_0") is None and list(measured) == []
    fine = floors.measure(traced.graph_module, (torch.randn(2, 4),))
    assert fine and fine.get("_0") is not None
