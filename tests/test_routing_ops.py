"""Specifications of the mixture-of-experts ops (analyzer/ops_routing.py), each checked against a measurement
(tests/adversary.py: power iteration and gradient ascent on the Jacobian, in modnorm's max-position RMS norms) and,
where the constant has a closed form, against a hand derivation written next to it.

Routing is held fixed by construction of the measurement: forward-mode AD differentiates the op at a point with the
indices that point selects, which is exactly "for a fixed routing", the condition under which modnorm's bound holds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from tests import adversary
from tests.adversary import Budget, measure_input_lipschitz, rms_max

BUDGET = Budget(examples=1, restarts=3, steps=60)
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def bound_and_measure(fn, x):
    model = Fn(fn).double()
    analysis = modnorm.analyze(model, x)
    measured = measure_input_lipschitz(lambda z: model(z), x.double(), BUDGET)
    return analysis, measured


def test_topk_values_along_features_are_sqrt_n_over_k_lipschitz_and_it_is_attained():
    # Hand derivation: perturb the 2 largest of 8 entries by d: RMS in = |d|/sqrt(8), RMS out = |d|/sqrt(2) -> 2.
    analysis, measured = bound_and_measure(lambda x: torch.topk(x, 2, dim=-1).values, torch.randn(3, 8))
    assert analysis.network.sensitivity == pytest.approx(2.0)
    assert 0.95 * 2.0 <= measured <= 2.0 * (1 + 1e-6)


def test_sort_along_features_is_non_expansive():
    analysis, measured = bound_and_measure(lambda x: torch.sort(x, dim=-1).values, torch.randn(3, 8))
    assert analysis.network.sensitivity == pytest.approx(1.0)  # rearrangement inequality
    assert measured <= 1.0 + 1e-6


def test_sort_along_positions_gathers_entries_of_up_to_n_vectors():
    analysis, measured = bound_and_measure(lambda x: torch.sort(x, dim=0).values, torch.randn(5, 8))
    assert analysis.network.sensitivity == pytest.approx(math.sqrt(5))
    assert measured <= math.sqrt(5) * (1 + 1e-6)


def test_cumsum_along_features_is_bounded_by_the_frobenius_norm_of_the_ones_triangle():
    # sigma_max(L_8) = 1 / (2 sin(pi / 34)) = 5.44 <= sqrt(8 * 9 / 2) = 6 (the bound), measured approaches 5.44.
    analysis, measured = bound_and_measure(lambda x: torch.cumsum(x, dim=-1), torch.randn(3, 8))
    assert analysis.network.sensitivity == pytest.approx(6.0)
    assert 0.9 * 5.44 <= measured <= 6.0


def test_cumsum_along_positions_sums_up_to_n_vectors():
    analysis, measured = bound_and_measure(lambda x: torch.cumsum(x, dim=0), torch.randn(4, 8))
    assert analysis.network.sensitivity == pytest.approx(4.0)  # the last position sums all 4 (attained)
    assert 0.95 * 4.0 <= measured <= 4.0 * (1 + 1e-6)


def test_index_add_bounds_repeated_rows_by_their_count():
    index = torch.tensor([0, 0, 0, 2])  # three source rows land on position 0

    def scatter(x):
        return torch.zeros(3, x.shape[-1], dtype=x.dtype).index_add(0, index, x)

    analysis, measured = bound_and_measure(scatter, torch.randn(4, 8))
    assert math.isfinite(analysis.network.sensitivity) and analysis.network.certified
    assert measured <= analysis.network.sensitivity * (1 + 1e-6)
    assert measured >= 0.95 * 3.0  # three rows add up at position 0


def test_renormalised_top_k_of_a_softmax_is_bounded_for_a_fixed_routing():
    def router(logits):
        probs = F.softmax(logits, dim=-1)
        weights, _ = torch.topk(probs, 2, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True)

    analysis, measured = bound_and_measure(router, torch.randn(5, 4))
    assert math.isfinite(analysis.network.sensitivity)
    assert measured <= analysis.network.sensitivity
    assert not analysis.network.certified  # the selection is discontinuous, and the report says so
    assert any("fixed routing" in r for r in analysis.network.uncertified_reasons)


def test_counting_ops_on_integer_routing_indices_carry_no_perturbation():
    class Dispatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(8, 4, bias=False)

        def forward(self, x):
            chosen = torch.topk(self.router(x), 2, dim=-1).indices.reshape(-1)
            order = torch.argsort(chosen)
            counts = torch.histc(chosen[order].float(), bins=4, min=0, max=3)
            offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
            mask = F.one_hot(chosen // 1, num_classes=4) == 1
            return x * 1.0, offsets, mask

    analysis = modnorm.analyze(Dispatch(), torch.randn(3, 8))
    for name in ("histc", "cumsum", "one_hot", "argsort", "floordiv", "eq"):
        op = next(o for o in analysis.ops if name in o.target)
        assert all(c == 0 for c in op.lipschitz), (name, op.lipschitz)
    assert not analysis.network.unknown_ops


def test_an_in_place_write_of_activations_is_unknown_not_lost():
    class Write(nn.Module):
        def forward(self, x):
            out = torch.zeros_like(x)
            out[0] = torch.tanh(x[1])
            return out + x

    analysis = modnorm.analyze(Write(), torch.randn(3, 8))
    assert any("setitem" in op for op in analysis.network.unknown_ops)


class Grouped(nn.Module):
    """Rows sorted by expert through a grouped matmul: (S, in) by an (E, in, out) expert stack, fixed offsets."""

    def __init__(self, experts=3, fan_in=8, fan_out=4, rows=6):
        super().__init__()
        self.w = nn.Parameter(torch.randn(experts, fan_in, fan_out))
        self.register_buffer("offs", torch.tensor([2, 4, rows], dtype=torch.int32))

    def forward(self, x):
        return F.grouped_mm(x, self.w, offs=self.offs)


def test_grouped_mm_is_a_batched_atom_with_the_largest_experts_norm():
    model = Grouped()
    analysis = modnorm.analyze(model, torch.randn(6, 8))
    (layer,) = [l for l in analysis.layers if l.kind == "Batched"]
    assert layer.shape == (3, 8, 4)
    # Hand: row s goes through expert e: ||y||_RMS <= sqrt(in/out) sigma_max(W_e) ||x||_RMS, max over e.
    expected = math.sqrt(8 / 4) * max(float(torch.linalg.matrix_norm(model.w[e].double(), ord=2)) for e in range(3))
    assert analysis.network.sensitivity == pytest.approx(expected, rel=1e-4)
    # Measured: the op is linear in x; ascend ||f(v)|| / ||v|| in modnorm's norms (grouped_mm has no forward AD).
    v = torch.randn(6, 8, requires_grad=True)
    optimizer = torch.optim.Adam([v], lr=0.05)
    best = 0.0
    for _ in range(300):
        ratio = rms_max(model(v)) / rms_max(v)
        best = max(best, float(ratio))
        optimizer.zero_grad()
        (-ratio).backward()
        optimizer.step()
    assert 0.9 * expected <= best <= expected * (1 + 1e-4)


@pytest.mark.parametrize("fixture", ["topk_moe", "switch_moe"])
def test_moe_fixture_bound_holds_for_a_fixed_routing(fixture):
    """The hand-written MoE fixtures: measured input Lipschitz constant (routing held at each point) <= bound."""
    namespace: dict = {}
    path = ROOT / "fixtures" / f"{fixture}.py"
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # our own fixture file, not untrusted input
    torch.manual_seed(0)
    model = namespace["build_model"]().double().eval()
    x = namespace["example_inputs"](model).double()
    analysis = modnorm.analyze(model, x)
    assert not analysis.network.unknown_ops and math.isfinite(analysis.network.sensitivity)
    measured = measure_input_lipschitz(lambda z: model(z), x, BUDGET)
    assert 0 < measured <= analysis.network.sensitivity


def test_mixtral_experts_are_stacks_of_atoms():
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                        num_local_experts=4, num_experts_per_tok=2)
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(config).eval()
    analysis = modnorm.analyze(model, torch.zeros(1, 8, dtype=torch.long))
    assert analysis.model.tracer == "fx_values"
    stacks = {l.name.rsplit(".", 1)[-1]: l for l in analysis.layers if l.kind == "Batched"}
    # transformers 5.x MixtralExperts: gate_up_proj (E, 2I, H), down_proj (E, H, I)
    assert stacks["gate_up_proj"].shape == (4, 128, 32) and stacks["down_proj"].shape == (4, 32, 64)
    assert any(l.name.endswith("mlp.gate") and l.kind == "Linear" for l in analysis.layers)  # the router
    assert not analysis.network.unknown_ops


def test_a_tensor_used_as_an_index_is_not_called_control_flow():
    class Indexes(nn.Module):
        def forward(self, x):
            return x[: int(x.argmax())]

    with pytest.raises(modnorm.errors.ModnormError) as caught:
        modnorm.routes.trace(Indexes(), (torch.randn(3, 8),), tracer="fx")
    assert "control flow" not in caught.value.problem and "Python number" in caught.value.problem


def test_eager_experts_are_read_through_grouped_mm_and_the_config_is_restored():
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                        num_local_experts=4, num_experts_per_tok=2)
    config._experts_implementation = "eager"  # a data-dependent loop over the experts a batch hits
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(config).eval()
    traced = modnorm.routes.trace(model, (torch.zeros(1, 8, dtype=torch.long),))
    assert traced.tracer == "fx_values"
    assert any("grouped_mm" in str(a) for a in traced.attempts)
    assert model.config._experts_implementation == "eager"


class TransposedWeight(nn.Linear):
    """FalconLinear's spelling of a Linear: `x @ self.weight.T`."""

    def forward(self, x):
        return x @ self.weight.T


def test_matmul_by_a_transposed_parameter_is_a_linear_atom():
    model = TransposedWeight(12, 6, bias=False).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    analysis = modnorm.analyze(model, x)
    (layer,) = [l for l in analysis.layers if l.kind == "Linear"]
    # Hand: a Linear (out=6, in=12) in RMS norms: sqrt(12/6) sigma_max(W).
    expected = math.sqrt(12 / 6) * float(torch.linalg.matrix_norm(model.weight.detach(), ord=2))
    assert analysis.network.sensitivity == pytest.approx(expected, rel=1e-6)
    measured = measure_input_lipschitz(lambda z: model(z), x, BUDGET)
    assert 0.95 * expected <= measured <= expected * (1 + 1e-6)
