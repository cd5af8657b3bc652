"""Rule cut-offs are options (defaults documented in each rule), not literals in the rule's code."""

import torch
import torch.nn.functional as F

import modnorm
from modnorm.rules import all_rules
from tests.test_patterns import Lambda


def test_mn301_lower_cut_off_is_an_option():
    def attention(x):  # (B, T, C) with head dim 8, logits scaled by 1/d: aligned c·d = 1
        return F.softmax(x @ x.transpose(1, 2) / 8, dim=-1) @ x

    analysis = modnorm.analyze(Lambda(attention, width=8), torch.randn(2, 4, 8))
    rule = all_rules()["MN301"]
    assert list(rule().check(analysis)) == []  # 1 <= the default cut-off 1.5
    flagged = list(rule(min_aligned_logit=0.5).check(analysis))
    assert [f.severity for f in flagged] == ["warning"]
