"""One defect, one code, and the changes that matter most (rules.explain, rules.rank_changes).

A finding that the fixes of its causes would remove is reported at info, naming the cause; a finding they do not
remove keeps its severity. Expected figures are derived by hand next to each model: a residual block
a·x + b·f(x) with a well-normed branch has design sensitivity a + b, and a stream of L blocks the product.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm.rules import rank_changes, run_rules


def blocking(findings) -> dict[str, list]:
    found: dict[str, list] = {}
    for f in findings:
        if f.severity != "info":
            found.setdefault(f.code, []).append(f)
    return found


class ResMLP(nn.Module):
    """x <- skip·x + branch·relu(W x) over `depth` blocks, then `tail`·x into the head (orthogonal, norm 1)."""

    def __init__(self, skip=1.0, branch=1.0, depth=8, tail=1.0, width=32):
        super().__init__()
        self.skip, self.branch, self.tail = skip, branch, tail
        self.inp = nn.Linear(width, width, bias=False)
        self.blocks = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.out = nn.Linear(width, width, bias=False)
        for layer in (self.inp, *self.blocks, self.out):
            nn.init.orthogonal_(layer.weight)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = self.skip * x + self.branch * torch.relu(block(x))
        return self.out(x * self.tail)


def test_stream_growth_and_network_figure_follow_from_the_unscaled_merges():
    """x + f(x) at depth 8: each block 1 + 1 = 2 (MN201), the stream 2^8 = 256 (MN203), the network 256 (MN204):
    one defect. With 1 - 1/8 and 1/8 each block is 1, so MN203 and MN204 go: they are consequences."""
    findings = run_rules(modnorm.analyze(ResMLP(), torch.randn(2, 32)))
    assert set(blocking(findings)) == {"MN201"}
    consequences = {f.code: f for f in findings if "— follows from" in f.message}
    assert {"MN203", "MN204"} <= set(consequences)
    assert all(f.severity == "info" and "follows from MN201 (blocks.*)" in f.message for f in consequences.values())
    assert "grows ×256" in consequences["MN203"].message  # the figure itself is kept


def test_a_second_defect_keeps_its_severity():
    """Add ×50 before the head: with the merges fixed the network is still 50 > e, so MN204 is its own defect."""
    findings = run_rules(modnorm.analyze(ResMLP(tail=50.0), torch.randn(2, 32)))
    assert {"MN201", "MN204"} <= set(blocking(findings))


class AttentionStream(nn.Module):
    """(1 - 1/L)·x + (1/L)·o(sdpa(q/3, k/3, v/3)), one head, the default 1/sqrt(d) scale, head dim 64 (the 1/3
    after the head split, as Modula's GPT writes it, so it is not folded into the atoms): the q and k
    constants are c·d = 8, the branch (8 + 8 + 1)/3 = 5.67, the block 0.75 + 5.67/4 = 2.17 over MN201's 1.5 at
    L = 4, and the stream 2.17^4 = 22 over MN203's e². With 1/d logits the branch is (1 + 1 + 1)/3 = 1."""

    def __init__(self, depth=4, width=64):
        super().__init__()
        self.depth = depth
        self.q, self.k, self.v, self.o = (nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
                                          for _ in range(4))
        for layer in (*self.q, *self.k, *self.v, *self.o):
            nn.init.orthogonal_(layer.weight)

    def forward(self, x):
        for q, k, v, o in zip(self.q, self.k, self.v, self.o):
            heads = (z.view(*x.shape[:2], 1, -1).transpose(1, 2) / 3 for z in (q(x), k(x), v(x)))
            y = F.scaled_dot_product_attention(*heads, is_causal=True).transpose(1, 2).reshape(x.shape)
            x = (1 - 1 / self.depth) * x + (1 / self.depth) * o(y)
        return x


def test_a_consequence_names_the_root_of_the_chain():
    analysis = modnorm.analyze(AttentionStream(), torch.randn(1, 5, 64))
    merge = analysis.merges[0]
    assert merge.design_block_sensitivity == pytest.approx(0.75 + (8 + 8 + 1) / 3 / 4)
    findings = run_rules(analysis)
    assert set(blocking(findings)) == {"MN301"}
    follows = {f.code: f.message for f in findings if "— follows from" in f.message}
    assert {"MN201", "MN203"} <= set(follows)
    assert "follows from MN301" in follows["MN201"]
    assert "follows from MN301" in follows["MN203"] and "MN201 (" not in follows["MN203"].split("follows from")[1]


def test_the_ranked_change_for_unscaled_merges_brings_the_network_to_one():
    """ResMLP depth 8: 2^8 = 256 before (log10 2.41); with 1 - 1/8 and 1/8 every block is 1, so 1 after."""
    analysis = modnorm.analyze(ResMLP(), torch.randn(2, 32))
    changes = rank_changes(analysis, run_rules(analysis))
    top = changes[0]
    assert (top.code, top.role, top.instances) == ("MN201", "blocks.*", 8)
    assert top.log10_sensitivity == pytest.approx((8 * math.log10(2), 0.0), abs=1e-9)
    assert top.log10_spread[1] < top.log10_spread[0]
    assert top.removes >= 8 + 2  # its 8 merges, and the stream and network figures that follow from them


def test_fixes_that_move_no_design_figure_are_not_ranked():
    """A blown-up atom (norm 10) is MN101's finding; its fix changes no design figure, so no ranked change."""
    model = ResMLP(skip=7 / 8, branch=1 / 8)
    with torch.no_grad():
        model.blocks[3].weight.mul_(10)
    analysis = modnorm.analyze(model, torch.randn(2, 32))
    findings = run_rules(analysis)
    assert set(blocking(findings)) == {"MN101"}
    assert rank_changes(analysis, findings) == ()
