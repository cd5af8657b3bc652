"""Fixes that apply (issue 19): each rule's fix text, applied as written to the model that triggered it, makes the
finding go away. The numbers applied are read from the fix text itself, so a wrong formula there fails here."""

import math
import re

import torch
from torch import nn

from modnorm.testing import check_module
from tests.test_idioms import load


def findings(model, x, code):
    return [f for f in check_module(model, x, isolated=True).findings if f.code == code]


def number_after(text: str, label: str) -> float:
    return float(re.search(rf"{label}\s*([0-9.e+-]+)", text).group(1))


def test_mn101_conv_fix_brings_every_conv_into_band():
    """'each kernel position w[:, :, i, j] orthogonal with gain g = sqrt(out/in) / kernel size', applied to the
    convs of a CIFAR CNN; the printed gain is checked against that formula for the instance it names."""
    model, x = load("cifar_cnn.py"), torch.randn(2, 3, 32, 32)
    (conv,) = [f for f in findings(model, x, "MN101") if f.module.startswith("features")]
    assert "each kernel position w[:, :, i, j] orthogonal" in conv.fix
    named = model.features[6]
    out, inp, kh, kw = named.weight.shape
    assert math.isclose(number_after(conv.fix, "gain"), math.sqrt(out / inp) / (kh * kw), rel_tol=1e-2)
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                out, inp, kh, kw = layer.weight.shape
                for i in range(kh):
                    for j in range(kw):
                        nn.init.orthogonal_(layer.weight[:, :, i, j], gain=math.sqrt(out / inp) / (kh * kw))
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith("features")]


def test_mn101_linear_and_embedding_fixes_apply():
    """The Linear head: orthogonal with the printed gain; the Embedding: rows rescaled to the printed RMS."""
    model, x = load("recurrent.py"), torch.randint(0, 100, (2, 7))
    by_module = {f.module: f for f in findings(model, x, "MN101")}
    assert "give every row RMS" in by_module["embed"].fix and "orthogonal" in by_module["head"].fix
    with torch.no_grad():
        nn.init.orthogonal_(model.head.weight, gain=number_after(by_module["head"].fix, "gain"))
        w, rms = model.embed.weight, number_after(by_module["embed"].fix, "row RMS")
        w.copy_(w / w.pow(2).mean(1, keepdim=True).sqrt() * rms)
    assert not findings(model, x, "MN101")


def test_mn101_multiplier_alternative_applies():
    """'or multiply the output by c': a Linear followed by that constant is in band."""
    model, x = load("recurrent.py"), torch.randint(0, 100, (2, 7))
    head = next(f for f in findings(model, x, "MN101") if f.module == "head")
    c = number_after(head.fix, "multiply the output by")

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * c

    model.head = Scaled(model.head)
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith("head")]


def test_mn301_fix_fits_hand_written_attention():
    """Meta's hand-written attention: 'divide the logits by head_dim', done by setting the divisor to d."""
    model, x = load("meta_llama.py"), torch.randn(2, 8, 32)
    (finding,) = findings(model, x, "MN301")
    assert "divide the logits by head_dim" in finding.fix and "sdpa" not in finding.fix
    d = int(number_after(finding.fix, r"k\.transpose\(-2, -1\) /"))
    import tests.data.idioms.meta_llama as source  # noqa: F401  (the class whose forward reads math.sqrt)

    module = type(model.attn)
    module_globals = module.forward.__globals__
    original = module_globals["math"]
    try:
        module_globals["math"] = type("M", (), {"sqrt": staticmethod(lambda v: float(d))})  # / sqrt(d) -> / d
        assert not findings(model, x, "MN301")
    finally:
        module_globals["math"] = original


def test_mn301_fix_fits_sdpa():
    from fixtures.llama_block import build_model

    model = build_model()
    x = torch.randint(0, model.vocab, (2, model.max_len))
    (finding,) = findings(model, x, "MN301")
    assert "pass scale=1/head_dim" in finding.fix
    scale = number_after(finding.fix, "1/head_dim =")
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    try:
        F.scaled_dot_product_attention = lambda *a, **k: sdpa(*a, **{**k, "scale": scale})
        assert not findings(model, x, "MN301")
    finally:
        F.scaled_dot_product_attention = sdpa
