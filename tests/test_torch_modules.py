"""torch.nn composites are read through, not left unknown: nn.MultiheadAttention (self-attention) is spelled out
in registry ops that compute exactly what its forward computes, and nn.TransformerEncoder traces cleanly."""

import pytest
import torch
from torch import nn

import modnorm
from modnorm.ops_attention import multi_head_attention_ops


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_spelled_out_attention_equals_torchs(batch_first, need_weights, masked):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(24, 3, batch_first=batch_first).eval()
    x = torch.randn(2, 7, 24) if batch_first else torch.randn(7, 2, 24)
    mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1) if masked else None
    ours = multi_head_attention_ops(m, x, x, x, need_weights=need_weights, attn_mask=mask)
    theirs = m(x, x, x, need_weights=need_weights, attn_mask=mask)
    assert torch.allclose(ours[0], theirs[0], atol=1e-5)
    if need_weights:
        assert torch.allclose(ours[1], theirs[1], atol=1e-6)


def test_multihead_attention_atoms_and_no_unknown_op():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.out = nn.Linear(32, 8)

        def forward(self, x):
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.out(x + y)

    analysis = modnorm.analyze(Model().eval(), torch.randn(2, 10, 32))
    assert analysis.network.unknown_ops == () and analysis.network.certified
    shapes = {l.name: l.shape for l in analysis.layers}
    assert shapes == {"attn.in_proj_weight": (96, 32), "attn.out_proj": (32, 32), "out": (8, 32)}
    assert any("attention" in op.tags for op in analysis.ops)


def test_cross_attention_stays_an_honest_unknown():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x, memory):
            return self.attn(x, memory, memory, need_weights=False)[0]

    analysis = modnorm.analyze(Cross().eval(), (torch.randn(1, 5, 16), torch.randn(1, 6, 16)))
    assert any("multi_head_attention_forward" in op for op in analysis.network.unknown_ops)
