"""Models as people write them (Hugging Face-style BERT, ViT, MLP-Mixer, a weight-tied LM): each is read by the
shape-aware fx route with no unknown op, and one structural fact derived by hand from the model file holds."""

import importlib.util

import pytest

from modnorm.check import check_model
from modnorm.config import Settings
from tests.conftest import ROOT


def _load(path):
    spec = importlib.util.spec_from_file_location(f"real_fixture_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bert(analysis):
    # Hand count (fixtures/bert_encoder.py, 2 layers): per BertLayer query, key, value, attention.output.dense,
    # intermediate.dense, output.dense = 6 Linear; 2 layers = 12; plus pooler.dense = 13. The three embeddings are
    # the only input atoms, the pooler the only output atom (the sequence output ends in a LayerNorm, no atom).
    linears = [l.name for l in analysis.layers if l.kind == "Linear"]
    assert len(linears) == 13, linears
    roles = {l.name: l.role for l in analysis.layers}
    assert sorted(n for n, r in roles.items() if r == "input") == [
        "embeddings.position_embeddings", "embeddings.token_type_embeddings", "embeddings.word_embeddings"]
    assert [n for n, r in roles.items() if r == "output"] == ["pooler.dense"]
    # q @ kᵀ / sqrt(16) + extended mask, softmax, @ v: one fused attention op per layer (the additive mask is
    # folded into the pattern, not a residual merge); post-LN has 2 residual merges per layer = 4.
    assert sum(op.target == "attention (pattern)" for op in analysis.ops) == 2
    assert len(analysis.merges) == 4


def _vit(analysis):
    # The patch-embedding Conv2d is the first atom the image meets, so it is the (only) "input" atom; the class
    # token and position embedding are bare nn.Parameters, not atoms. The head is the only "output" atom.
    # Pre-LN blocks: attention and MLP merges, 2 per block x 2 blocks = 4, skip and branch coefficients 1.
    by_role = {}
    for layer in analysis.layers:
        by_role.setdefault(layer.role, []).append((layer.name, layer.kind))
    assert by_role["input"] == [("patch_embed.proj", "Conv2d")]
    assert by_role["output"] == [("head", "Linear")]
    assert [(m.skip_coefficient, m.branch_coefficient) for m in analysis.merges] == [(1.0, 1.0)] * 4


def _mlp_mixer(analysis):
    # Token mixing: 16 patches (32/8 squared) -> hidden 32 -> 16, so fc1 is 32x16 and fc2 16x32; channel mixing:
    # 64 -> 256 -> 64. After `.transpose(1, 2)` the feature axis (D = 64) is no longer the last one, so the
    # token-mixing Linear mixes positions: in the max-over-positions RMS norm its Lipschitz constant is the
    # max-row l1 norm ||W||_inf->inf (each output position is a combination of the input positions), whereas the
    # channel-mixing Linear keeps the RMS->RMS bound sqrt(in/out)·σ_max(W). Check both against the real weights
    # (the CPU build is seeded with 0, as modnorm's loader does).
    import math

    import torch

    module = _load(ROOT / "fixtures/mlp_mixer.py")
    torch.manual_seed(0)
    model = module.build_model()
    layers = {l.name: l for l in analysis.layers}
    assert layers["blocks.0.token_mixing.fc1"].shape == (32, 16)
    assert layers["blocks.0.token_mixing.fc2"].shape == (16, 32)
    for block in ("blocks.0", "blocks.1"):
        for fc in ("fc1", "fc2"):
            w = model.get_submodule(f"{block}.token_mixing.{fc}").weight.detach().double()
            assert layers[f"{block}.token_mixing.{fc}"].sensitivity == pytest.approx(
                float(w.abs().sum(1).max()), rel=1e-6)
            w = model.get_submodule(f"{block}.channel_mixing.{fc}").weight.detach().double()
            out, fan_in = w.shape
            assert layers[f"{block}.channel_mixing.{fc}"].sensitivity == pytest.approx(
                math.sqrt(fan_in / out) * float(torch.linalg.matrix_norm(w, 2)), rel=1e-6)
    assert len(analysis.merges) == 4  # token and channel mixing, 2 blocks


def _tied_lm(analysis):
    # `self.head.weight = self.embed.weight`: one tensor under two names, reported as a tied group; both atoms
    # (embed: input role, head: output role) name the same parameter object.
    assert ("embed.weight", "head.weight") in {tuple(sorted(g)) for g in analysis.network.tied_weights}
    roles = {l.name: l.role for l in analysis.layers}
    assert roles["embed"] == "input" and roles["head"] == "output"
    assert len(analysis.merges) == 2  # one residual MLP block per layer, 2 layers


CASES = {"bert_encoder": _bert, "vit": _vit, "mlp_mixer": _mlp_mixer, "tied_lm": _tied_lm}


@pytest.mark.parametrize("name", list(CASES))
def test_real_model_traces_with_fx_and_no_unknown_op(name):
    result = check_model(str(ROOT / f"fixtures/{name}.py"), Settings())
    analysis = result.analysis
    assert analysis.model.tracer == "fx_values", analysis.model.tracer_attempts
    assert analysis.network.unknown_ops == ()
    assert "MN901" not in {f.code for f in result.findings}
    CASES[name](analysis)
