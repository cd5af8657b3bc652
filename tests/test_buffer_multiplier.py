"""Issue 16: a multiplier written right after an atom as a constant tensor of one value (Gemma's
`emb(ids) * self.embed_scale.to(dtype)`) belongs to the atom, as the number `emb(ids) * d ** 0.5` does.

The independent check is the number spelling of the same model (tests/models/buffer_scaled_embedding.py), which
the scaled-atom pattern already reads: every spelling of one value must give the same norms, targets, downstream
sensitivities and network figures, on the CPU and on meta, and leave no op constant behind.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
import modnorm.initlaw
from tests.models import buffer_scaled_embedding as fixture

LAYER_FIELDS = ("kind", "norm_at_init", "sensitivity", "downstream_sensitivity", "design_downstream_sensitivity",
                "target_norm", "scale")


def _analyze(make, device: str):
    """Build under `device` (meta: with the init laws recorded, as `modnorm check --device meta` does) and analyse."""
    if device == "cpu":
        torch.manual_seed(0)
        model = make()
        return modnorm.analyze(model, fixture.example_inputs(model))
    with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
        model = make()
    laws = modnorm.initlaw.laws_of(model, recorder)
    return modnorm.analyze(model, fixture.example_inputs(model), init_laws=laws)


def _figures(analysis) -> dict:
    layers = {(layer.name, f): getattr(layer, f) for layer in analysis.layers for f in LAYER_FIELDS}
    network = {"sensitivity": analysis.network.sensitivity, "design": analysis.network.design_sensitivity,
               "op constants": [(c.target, c.count, c.largest) for c in analysis.op_constants()]}
    return {**layers, **network}


def _assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def _layer(analysis, name: str):
    return next(layer for layer in analysis.layers if layer.name == name)


CASES = [(s, d) for d in ("cpu", "meta") for s in fixture.SCALAR_SPELLINGS if s != "number"
         if not (s == "full" and d == "meta")]  # torch.full on meta: no law, no initialiser: unknown (below)


@pytest.mark.parametrize("spelling,device", CASES)
def test_a_constant_tensor_of_one_value_is_the_atoms_multiplier_as_the_number_is(spelling, device):
    number = _analyze(lambda: fixture.Net("number"), device)
    assert _layer(number, "emb").scale == pytest.approx(4.0)  # sqrt(d), d = 16: the pattern's reading of a number
    found = _analyze(lambda: fixture.Net(spelling), device)
    _assert_same(_figures(found), _figures(number))
    assert not any(op.target == "_operator.mul" for op in found.ops)  # fused into the atom, not counted again


def test_a_constant_of_one_value_unknown_on_meta_stays_a_reported_op():
    """`torch.full` on meta is neither recorded nor replayed: its value is unknown, so it is not taken as a scale."""
    analysis = _analyze(lambda: fixture.Net("full"), "meta")
    assert _layer(analysis, "emb").scale == 1.0
    mul = next(op for op in analysis.ops if op.target == "_operator.mul")
    assert not mul.certified


def test_a_per_channel_constant_stays_an_op_with_its_largest_entry():
    analysis = _analyze(lambda: fixture.Net("per_channel"), "cpu")
    assert _layer(analysis, "emb").scale == 1.0
    mul = next(op for op in analysis.ops if op.target == "_operator.mul")
    assert mul.lipschitz == (pytest.approx(4.0),)  # max of linspace(1, sqrt(16), 16)
    assert _layer(analysis, "emb").norm_at_init < _layer(_analyze(lambda: fixture.Net("number"), "cpu"),
                                                         "emb").norm_at_init


class _Bfloat16Scale(fixture.Net):
    """`x * scale.to(torch.bfloat16)`: the product applies sqrt(21) as bfloat16 holds it, 4.59375 > 4.5826."""

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx) * self.scale.to(torch.bfloat16)


class _RoundedNumber(fixture.Net):
    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx) * float(torch.tensor(self.d ** 0.5).to(torch.bfloat16))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_cast_multiplier_is_the_value_the_cast_holds(device):
    found = _analyze(lambda: _Bfloat16Scale("buffer", d=21), device)
    expected = _analyze(lambda: _RoundedNumber("number", d=21), device)
    _assert_same(_figures(found), _figures(expected))
    assert _layer(found, "emb").scale > 21 ** 0.5  # the rounded-up value: the bound stays an upper bound


class _TrainedScalar(fixture.Net):
    """A 0-d *parameter* after the atom is trained (a gain of its own), not a constant scale."""

    def __init__(self) -> None:
        super().__init__("number")
        self.alpha = nn.Parameter(torch.tensor(4.0))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx) * self.alpha


def test_a_scalar_parameter_is_not_taken_as_the_atoms_scale():
    analysis = _analyze(_TrainedScalar, "cpu")
    assert _layer(analysis, "emb").scale == 1.0
    assert any(layer.name == "alpha" for layer in analysis.layers)  # its own gain atom, as before


# ------------------------------------------------------------------------------------------------- Gemma
transformers = pytest.importorskip("transformers")


def _gemma(number: bool):
    """A 2-layer Gemma on meta; `number` swaps its embedding's `* self.embed_scale.to(dtype)` for the float it
    holds (`scalar_embed_scale`), the spelling the pattern reads as a number."""
    from transformers.models.gemma import modeling_gemma

    config = transformers.GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=1, head_dim=16, vocab_size=128)
    with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
        model = transformers.GemmaForCausalLM(config).eval()
    if number:
        embedding = model.model.embed_tokens
        embedding.forward = lambda ids: nn.Embedding.forward(embedding, ids) * embedding.scalar_embed_scale
        assert isinstance(embedding, modeling_gemma.GemmaTextScaledWordEmbedding)
    laws = modnorm.initlaw.laws_of(model, recorder)
    return modnorm.analyze(model, (torch.zeros(1, 8, dtype=torch.long),), init_laws=laws)


def test_gemmas_embedding_scale_buffer_reads_as_its_number():
    found, expected = _gemma(number=False), _gemma(number=True)
    assert _layer(found, "model.embed_tokens").scale == pytest.approx(8.0)  # sqrt(hidden_size = 64)
    _assert_same(_figures(found), _figures(expected))
    assert all(c.largest < 8.0 for c in found.op_constants() if c.target == "_operator.mul")
