"""Constructs real architectures write that modnorm now reads (issue 17's coverage matrix): constants a meta build
leaves unknown, gains written `x * (1 + w)`, `baddbmm`, l2 normalisation spelled with pow and sum, rows read from
an embedding table by index, activation instances that are not submodules. Each is checked for what the report
says (an atom, a finite certified constant) and, where it has a bound, measured against it with autograd."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from typer.testing import CliRunner

import modnorm
import modnorm.initlaw
from modnorm import buffers
from modnorm.cli import app
from tests.adversary import Budget, measure_input_lipschitz

SEARCH = Budget(examples=1, restarts=3, steps=60)


def measured_lipschitz(model: nn.Module, x: torch.Tensor) -> float:
    return measure_input_lipschitz(model, x, SEARCH)


HERE = Path(__file__).parent


def check(target: Path, *args: str) -> Any:
    """`modnorm check TARGET ARGS`: the CliRunner result."""
    return CliRunner().invoke(app, ["check", str(target), *args])


def check_json(target: Path) -> dict:
    """The JSON report of `modnorm check TARGET --output-format json --exit-zero`."""
    result = check(target, "--output-format", "json", "--exit-zero")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _op(analysis, needle):
    return next(op for op in analysis.ops if needle in op.target or needle in op.name)


# ------------------------------------------------------------------------ constants a meta build leaves unknown
class _Table(nn.Module):
    """A non-persistent buffer computed in __init__, and an initialiser that rewrites it (as transformers does)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        angles = torch.arange(16.0)[:, None] * torch.arange(1.0, d + 1)
        self.register_buffer("table", torch.cos(angles), persistent=False)

    def _init_weights(self, module: nn.Module) -> None:
        if module is self:
            angles = torch.arange(16.0)[:, None] * torch.arange(1.0, self.table.shape[1] + 1)
            self.table.copy_(torch.cos(angles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.table[: x.shape[1]]


def test_a_meta_buffer_is_recovered_from_the_models_initialiser():
    on_cpu = _Table()
    with torch.device("meta"):
        on_meta = _Table()
    assert on_meta.table.is_meta
    recovered = buffers.recover(on_meta, "table")
    assert torch.equal(recovered, on_cpu.table)  # the initialiser's value, not a guess
    assert on_meta.table.is_meta  # the model itself stays on meta


def test_a_buffer_the_initialiser_does_not_write_stays_unknown():
    class NoInit(_Table):
        def _init_weights(self, module: nn.Module) -> None:
            pass

    with torch.device("meta"):
        model = NoInit()
    assert buffers.recover(model, "table") is None
    analysis = modnorm.analyze(model, (torch.zeros(1, 4, 8),))
    assert not _op(analysis, "mul").certified  # reported, not guessed


def test_multiplying_by_a_recovered_table_has_its_max_as_constant():
    with torch.device("meta"):
        model = _Table()
    analysis = modnorm.analyze(model, (torch.zeros(1, 4, 8),))
    mul = _op(analysis, "mul")
    assert mul.certified and mul.lipschitz == (pytest.approx(1.0),)  # max |cos| over the table: cos(0) = 1


class _Temperature(nn.Module):
    """CLIP's learned logit scale: `logits * self.logit_scale.exp()`, the scalar written `torch.tensor(2.6592)`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.logit_scale.exp()


def test_a_number_written_in_the_constructor_is_known_on_meta_through_its_init_law():
    with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
        model = _Temperature()
    laws = modnorm.initlaw.laws_of(model, recorder)
    assert laws["logit_scale"].kind == "constant" and laws["logit_scale"].mean == pytest.approx(2.6592)
    analysis = modnorm.analyze(model, (torch.zeros(1, 3, 8),), init_laws=laws)
    scale = _op(analysis, "mul")
    assert scale.certified and scale.lipschitz == (pytest.approx(math.exp(2.6592)),)  # exp is increasing
    without = modnorm.analyze(model, (torch.zeros(1, 3, 8),))  # no laws: the value is unknown and said so
    assert not _op(without, "mul").certified


# -------------------------------------------------------------------------------------------- gains c + w
class _OffsetGain(nn.Module):
    """Gemma's RMSNorm gain: `x * (1.0 + self.weight.float())`, the weight initialised to zeros."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d) * 0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + self.weight.float())


def test_a_gain_written_one_plus_w_is_an_atom_with_norm_max_abs_one_plus_w():
    model = _OffsetGain().double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    analysis = modnorm.analyze(model, (x,))
    gain = next(layer for layer in analysis.layers if layer.name == "weight" or layer.name.endswith("weight"))
    expected = float((1.0 + model.weight.detach()).abs().max())  # diag(1 + w): its largest entry
    assert gain.kind == "Gain"
    assert gain.sensitivity == pytest.approx(expected, rel=1e-12)
    measured = measured_lipschitz(model, x)
    assert measured <= analysis.network.sensitivity * (1 + 1e-9)
    assert measured == pytest.approx(expected, rel=1e-4)  # a diagonal map: the bound is tight (search to 1e-5)


# ----------------------------------------------------------------------------------------------- baddbmm
class _Alibi(nn.Module):
    """BLOOM's scores: `bias.baddbmm(q, k^T, beta=1, alpha=1/sqrt(d))`, then a mean to keep the output small."""

    def __init__(self, d: int = 8, tokens: int = 5, alpha: float = 0.35, beta: float = 1.0) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.register_buffer("bias", torch.linspace(-1, 1, tokens).expand(1, tokens, tokens).clone())
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.baddbmm(self.q(x), self.k(x).transpose(1, 2), beta=self.beta, alpha=self.alpha)


@pytest.mark.parametrize("alpha,beta", [(0.35, 1.0), (2.0, 0.5)])
def test_baddbmm_is_a_product_of_activations_whose_bound_holds(alpha, beta):
    torch.manual_seed(0)
    model = _Alibi(alpha=alpha, beta=beta).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64) / math.sqrt(2)
    analysis = modnorm.analyze(model, (x,))
    op = _op(analysis, "baddbmm")
    assert op.certified and all(math.isfinite(c) for c in op.lipschitz)
    assert not analysis.network.unknown_ops
    measured = measured_lipschitz(model, x)
    assert measured <= analysis.network.sensitivity


# ------------------------------------------------------------------------------- l2 normalisation by pow/sum
class _ClipNormalize(nn.Module):
    """CLIP's `_get_vector_norm`: `torch.pow(torch.sum(torch.pow(x, 2), dim=-1, keepdim=True), 0.5)`."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return y / torch.pow(torch.sum(torch.pow(y, 2), dim=-1, keepdim=True), 0.5)


def test_l2_normalisation_spelled_with_pow_and_sum_is_recognised():
    with torch.device("meta"):
        model = _ClipNormalize()
    analysis = modnorm.analyze(model, (torch.zeros(1, 4, 16),))
    normalize = _op(analysis, "rms_norm")
    assert normalize.target.startswith("rms_norm")
    assert not any(op.target.endswith("pow") for op in analysis.ops)  # absorbed, not x^0.5
    # The default profile conditions it on a floor: 0.5 x the Linear's typical output RMS at init,
    # RMS(W) sqrt(fan_in) x input RMS 1, with PyTorch's default init RMS(W) = 1/sqrt(3 fan_in): 0.5/sqrt(3).
    assert normalize.assumption is not None
    assert normalize.rms_floor == pytest.approx(0.5 / math.sqrt(3), rel=1e-6)


def test_l2_normalisation_without_eps_is_not_certified_unconditionally():
    """x / ||x|| is unbounded near 0: the certified profile says so and names the op."""
    with torch.device("meta"):
        model = _ClipNormalize()
    analysis = modnorm.analyze(model, (torch.zeros(1, 4, 16),), profile="certified")
    normalize = _op(analysis, "rms_norm")
    assert not normalize.certified and "unbounded near 0" in normalize.reason


# -------------------------------------------------------------------------- rows of an embedding by index
class _Positions(nn.Module):
    """Whisper's decoder positions: `self.weight[start : start + T]` on an nn.Embedding subclass."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.pos = nn.Embedding(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok(ids) + self.pos.weight[: ids.shape[1]]


def test_rows_read_from_an_embedding_table_by_index_are_an_embedding_atom():
    torch.manual_seed(2)
    model = _Positions()
    analysis = modnorm.analyze(model, (torch.randint(0, 50, (1, 6)),))
    kinds = {layer.name: layer.kind for layer in analysis.layers}
    assert kinds == {"tok": "Embedding", "pos": "Embedding"}
    pos = next(layer for layer in analysis.layers if layer.name == "pos")
    rows = model.pos.weight.detach().double()
    assert pos.sensitivity == pytest.approx(float(rows.pow(2).mean(-1).sqrt().max()), rel=1e-9)  # max row RMS


# -------------------------------------------------------------- activation instances that are not submodules
GELU = nn.GELU(approximate="tanh")  # module level, like transformers' ACT2FN["gelu_new"] inside a function


def _act(x: torch.Tensor) -> torch.Tensor:
    return GELU(x)


class _ModuleLevelActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act(self.fc(x))


def test_an_activation_instance_that_is_not_a_submodule_is_read_through():
    analysis = modnorm.analyze(_ModuleLevelActivation(), (torch.zeros(1, 3, 8),))
    assert analysis.model.tracer == "fx_values"
    assert not analysis.network.unknown_ops
    assert any("gelu" in op.target.lower() for op in analysis.ops)


def test_a_module_with_weights_that_is_not_a_submodule_is_named_in_the_error():
    outside = nn.Linear(8, 8)

    class Borrowing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return outside(x)

    analysis = modnorm.analyze(Borrowing(), (torch.zeros(1, 3, 8),))
    fx_attempt = next(a for a in analysis.model.tracer_attempts if a.route == "fx_values")
    assert not fx_attempt.ok and "Linear" in fx_attempt.detail and "not a submodule" in fx_attempt.detail


# ------------------------------------------------------------------------------------ transformers pieces
def test_blooms_gelu_function_has_the_exact_derivative_of_its_forward():
    """Why its forward's constants may be registered: the custom backward is the true derivative."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64, requires_grad=True)
    (custom,) = torch.autograd.grad(bloom.GeLUFunction.apply(x).sum(), x)
    (exact,) = torch.autograd.grad(bloom.bloom_gelu_forward(x).sum(), x)
    assert torch.allclose(custom, exact, atol=1e-6)
    assert float(exact.abs().max()) <= modnorm.registry.GELU_SLOPE


# ------------------------------------------------------------------- attention scaled on q before the product
class _ScaledQuery(nn.Module):
    """torchvision's Swin: heads split, then `q = q * head_dim ** -0.5`, then `softmax(q @ k^T) @ v`."""

    def __init__(self, d: int = 16, heads: int = 2, where: str = "heads") -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.heads, self.where = heads, where

    def split(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = (x.shape[-1] // self.heads) ** -0.5
        q = self.split(self.q(x) * c) if self.where == "atom" else self.split(self.q(x)) * c
        out = torch.softmax(q @ self.split(self.k(x)).transpose(-2, -1), dim=-1) @ self.split(self.v(x))
        out = out.transpose(1, 2).flatten(2)
        return out + q.transpose(1, 2).flatten(2) if self.where == "shared" else out


def test_a_scale_on_the_query_is_part_of_the_logit_scale_mn301_judges():
    analysis = modnorm.analyze(_ScaledQuery(), (torch.zeros(1, 5, 16),))
    attention = _op(analysis, "attention")
    assert attention.attention_scale == pytest.approx(8 ** -0.5)  # c·d = sqrt(8), not 8
    assert any(op.target.endswith("mul") for op in analysis.ops)  # the scalar op stays (Modula counts it as a bond)


def test_a_scale_written_on_the_projection_belongs_to_the_atom_not_the_logits():
    analysis = modnorm.analyze(_ScaledQuery(where="atom"), (torch.zeros(1, 5, 16),))
    assert _op(analysis, "attention").attention_scale == pytest.approx(1.0)
    q = next(layer for layer in analysis.layers if layer.name == "q")
    assert q.scale == pytest.approx(8 ** -0.5)


@pytest.mark.parametrize("where", ["heads", "atom", "shared"])
def test_the_bound_holds_wherever_the_query_scale_is_written(where):
    torch.manual_seed(3)
    model = _ScaledQuery(where=where).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    analysis = modnorm.analyze(model, (x,))
    if where == "shared":  # the scaled q is read elsewhere too: its factor is not counted in the logits
        assert _op(analysis, "attention").attention_scale == pytest.approx(1.0)
    assert measured_lipschitz(model, x) <= analysis.network.sensitivity


# ----------------------------------------------------------------------------- Mamba's selective-scan pieces
class _Mixer(nn.Module):
    """Mamba's mixer in miniature: a depthwise kernel passed as `weight.squeeze(1)` and unsqueezed back, a
    projection written `dt_proj.weight @ x.transpose(1, 2)`, the discretisation `exp(A · softplus(dt))` with
    `A = -exp(A_log)` and `A_log = log(arange(1, N + 1))` written by the model's initialiser, a float32 residual."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(d, d, 3, groups=d, padding=2)
        self.dt_proj = nn.Linear(d, d)
        self.A_log = nn.Parameter(torch.empty(d))
        self._init_weights(self)

    def _init_weights(self, module: nn.Module) -> None:
        if module is self:
            with torch.no_grad():
                self.A_log.copy_(torch.log(torch.arange(1.0, self.A_log.shape[0] + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        T = x.shape[1]
        weight = self.conv1d.weight.squeeze(1)
        h = torch.nn.functional.conv1d(x.transpose(1, 2), weight.unsqueeze(1), padding=2, groups=x.shape[-1])
        dt = (self.dt_proj.weight @ h[..., :T]).transpose(1, 2)
        A = -torch.exp(self.A_log.float())
        return x.to(torch.float32) + torch.exp(A * torch.nn.functional.softplus(dt)) * x


def test_mambas_constants_recovered_signs_tracked_and_the_bound_holds():
    with torch.device("meta"):
        on_meta = _Mixer()
    recovered = buffers.recover_constant_parameter(on_meta, "A_log")  # deterministic: the same under two seeds
    assert torch.allclose(recovered, torch.log(torch.arange(1.0, 9)))
    analysis = modnorm.analyze(on_meta, (torch.zeros(1, 6, 8),))
    kinds = sorted(layer.kind for layer in analysis.layers if layer.kind in ("Conv1d", "Linear"))
    assert kinds == ["Conv1d", "Linear"]  # the reshaped kernel and the left-multiplied weight are atoms
    exp = next(op for op in analysis.ops if "exp" in op.target and op.inputs)
    assert exp.lipschitz == (1.0,)  # A·softplus(dt) <= 0: e^x has slope at most 1
    assert len(analysis.merges) == 1  # `x.to(float32) + branch`: the cast is the stream itself
    torch.manual_seed(4)
    model = _Mixer().double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    real = modnorm.analyze(model, (x,))
    assert measured_lipschitz(model, x) <= real.network.sensitivity


def test_a_random_parameter_is_not_recovered_as_a_constant():
    with torch.device("meta"):
        model = _Mixer()
    assert buffers.recover_constant_parameter(model, "dt_proj.weight") is None  # not an A_log-style constant


def test_copy_into_a_state_holds_the_source():
    class Cache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.register_buffer("state", torch.zeros(1, 4, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.state.clone().copy_(self.fc(x))

    analysis = modnorm.analyze(Cache(), (torch.zeros(1, 4, 8),))
    copy = _op(analysis, "copy_")
    assert copy.certified and copy.lipschitz == (1.0,)


# ------------------------------------------------------------------ a constructor that needs real values
def test_a_model_whose_meta_build_fails_is_built_on_the_cpu_and_the_report_says_so():
    target = HERE / "models" / "real_values_in_init.py"
    report = check_json(target)
    assert report["model"]["device"] == "cpu"
    assert "meta build failed" in report["note"] and "Cannot copy out of meta tensor" in report["note"]
    assert [layer["name"] for layer in report["layers"]] == ["fc1", "fc2"]
    meta_only = check(target, "--device", "meta")
    assert meta_only.exit_code == 2 and "real_values_in_init.py:" in meta_only.output  # --device meta: no fallback
    too_big = check(target, "--max-params", "100")
    assert too_big.exit_code == 2 and "--max-params" in too_big.output


# -------------------------------------------------------------------- post-norm streams of one merge each
def test_a_stream_of_one_merge_is_told_to_average_not_to_drop_its_skip():
    """Post-norm blocks (a LayerNorm after every merge) make streams of L = 1 merge; 1 - 1/L would be 0."""
    report = check_json(HERE.parent / "fixtures" / "bert_encoder.py")
    fixes = [f["fix"] for f in report["findings"] if f["code"] == "MN201"]
    assert fixes and all("scale the skip by 0.5 and the branch by 0.5" in fix for fix in fixes)


# ------------------------------------------------------------- an attention logit bias computed from the input
class _BiasFromInput(nn.Module):
    """softmax((q kᵀ + bias(x)) · c) v: the bias depends on x and is scaled by c after it is added."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(8, 8, bias=False) for _ in range(3))
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = 3 * x.mean(-1).unsqueeze(1)  # (B, 1, T)
        scores = (self.q(x) @ self.k(x).transpose(-2, -1) + bias) * self.c
        return torch.softmax(scores, dim=-1) @ self.v(x)


@pytest.mark.parametrize("c", [0.125, 4.0])
def test_an_attention_bias_from_the_input_is_an_input_of_the_attention_and_the_bound_holds(c):
    torch.manual_seed(5)
    model = _BiasFromInput(c).double()
    with torch.no_grad():  # q = k = 0: the logits are c · bias(x), the bias path is what the bound must cover
        model.q.weight.zero_()
        model.k.weight.zero_()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    analysis = modnorm.analyze(model, (x,))
    attention = _op(analysis, "attention")
    assert len(attention.inputs) == 4  # q, k, v and the bias
    assert measured_lipschitz(model, x) <= analysis.network.sensitivity


# ----------------------------------------------------------------- a layer scale is not a normalization gain
@pytest.mark.parametrize("fixture,says", [("convnext_block", "(a layer scale)"),
                                          ("checkpoint_gains", "normalization gain")])
def test_mn103_names_a_layer_scale_and_a_normalization_gain_for_what_they_are(fixture, says):
    report = check_json(HERE.parent / "fixtures" / f"{fixture}.py")
    messages = [f["message"] for f in report["findings"] if f["code"] == "MN103"]
    assert messages and all(says in m for m in messages)


# ------------------------------------------------------------- an unknown op before a zero-initialised head
def test_an_unknown_op_before_a_zero_initialised_head_is_still_reported():
    report = check_json(HERE / "models" / "zero_head_unknown_op.py")
    assert report["network"]["sensitivity"] == 0  # the head is zero: nothing downstream moves at init
    unknown = [f for f in report["findings"] if f["code"] == "MN901"]
    assert len(unknown) == 1 and "Odd" in unknown[0]["message"] and unknown[0]["severity"] == "error"


# ------------------------------------------------------------------------ functions marked torch.fx.wrap
def test_a_function_marked_fx_wrap_is_read_through_so_its_weights_are_atoms():
    import importlib.util

    path = HERE / "models" / "fx_wrapped_attention.py"
    spec = importlib.util.spec_from_file_location("fx_wrapped_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    analysis = modnorm.analyze(model, (module.example_inputs(model),))
    assert sorted(layer.name for layer in analysis.layers if layer.kind == "Linear") == ["proj", "qkv"]
    assert not analysis.network.unknown_ops


def _branchy(x: torch.Tensor) -> torch.Tensor:
    if float(x.sum()) > 0:  # data-dependent: cannot be traced through
        return x * 2
    return x


torch.fx.wrap("_branchy")


def test_a_wrapped_function_that_cannot_be_traced_through_stays_one_call():
    class UsesBranchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _branchy(self.fc(x))

    analysis = modnorm.analyze(UsesBranchy(), (torch.randn(2, 4),))
    assert analysis.model.tracer == "fx_values"
    assert any("_branchy" in name for name in analysis.network.unknown_ops)  # opaque, and said so
