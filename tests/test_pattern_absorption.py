"""A pattern may absorb a node only if all its users are inside the pattern.

For every recogniser in modnorm's patterns module, a model where an absorbed intermediate node (the mean square,
the rsqrt, the variance, the mean, the logits, the probabilities, the transposed keys, the atom's output) has
another user outside the pattern. Whether modnorm then declines to fuse or keeps that user's input, the measured
bound must hold (tests/adversary.py measures it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.adversary import Budget, Case, explain, measure_case, pattern_recognisers

SEARCH = Budget(examples=1, restarts=2, steps=20)


class Fn(nn.Module):
    def __init__(self, fn, width: int = 8) -> None:
        super().__init__()
        self.fn = fn
        self.fc = nn.Linear(width, width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _rms_mean_square_shared(s, x):
    ms = x.pow(2).mean(-1, keepdim=True)
    return x / torch.sqrt(ms + 1e-6) + 10 * ms


def _rms_rsqrt_shared(s, x):
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-2)
    return x * r + r


def _layer_norm_variance_shared(s, x):
    centred = x - x.mean(-1, keepdim=True)
    var = centred.pow(2).mean(-1, keepdim=True)
    return centred / torch.sqrt(var + 1e-5) + 10 * var


def _mean_shared(s, x):
    m = x.mean(-1, keepdim=True)
    return (x - m) + 10 * m


def _qkv(s, x):
    return s.qkv(x).split(x.shape[-1], -1)


def _attention_logits_shared(s, x):
    q, k, v = _qkv(s, x)
    logits = q @ k.transpose(-2, -1) * 0.125
    return torch.softmax(logits, dim=-1) @ v + logits.mean(-1, keepdim=True)


def _attention_probs_shared(s, x):
    q, k, v = _qkv(s, x)
    p = torch.softmax(q @ k.transpose(-2, -1) * 0.125, dim=-1)
    return p @ v + 10 * p[..., :1]


def _attention_keys_shared(s, x):
    q, k, v = _qkv(s, x)
    kt = k.transpose(-2, -1)
    return torch.softmax(q @ kt * 0.125, dim=-1) @ v + 10 * kt.transpose(-2, -1)


def _scaled_atom_shared(s, x):
    h = s.fc(x)
    return h * 3 + h * h


def _rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


def _rotary_tables(x):
    angles = torch.arange(x.shape[-2], dtype=x.dtype)[:, None] * torch.linspace(0.1, 1.0, x.shape[-1] // 2,
                                                                                 dtype=x.dtype)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rotary_rotated_shared(s, x):
    cos, sin = _rotary_tables(x)
    rotated = _rotate_half(x)
    return x * cos + rotated * sin + 10 * rotated


def _rotary_half_shared(s, x):
    cos, sin = _rotary_tables(x)
    upper = x[..., x.shape[-1] // 2:]
    rotated = torch.cat((-upper, x[..., : x.shape[-1] // 2]), dim=-1)
    return (x * cos + rotated * sin)[..., :4] * 0 + 10 * upper


# recogniser (by the name of its match function in modnorm's patterns module) -> models that stress it
CASES = {
    "rms": [_rms_mean_square_shared, _rms_rsqrt_shared, _layer_norm_variance_shared],
    "mean_subtract": [_mean_shared],
    "attention": [_attention_logits_shared, _attention_probs_shared, _attention_keys_shared],
    "scaled_atom": [_scaled_atom_shared],
    "rotary": [_rotary_rotated_shared, _rotary_half_shared],
}


def test_every_pattern_has_a_shared_node_case() -> None:
    missing = [name for name in pattern_recognisers() if name not in CASES]
    assert not missing, f"patterns without a shared-node case here: {missing}"


# Cases fused although an absorbed node has another user (issue 15's list; keep it empty).
ABSORBS_SHARED: dict = {}  # empty since patterns.find_patterns checks every absorbed node's users


def _params() -> list:
    return [pytest.param(fn, id=fn.__name__.strip("_"), marks=[pytest.mark.xfail(
        strict=True, raises=AssertionError, reason=ABSORBS_SHARED[fn])] if fn in ABSORBS_SHARED else [])
        for fns in CASES.values() for fn in fns]


@pytest.mark.parametrize("fn", _params())
def test_a_shared_intermediate_keeps_its_other_user(fn) -> None:
    torch.manual_seed(0)
    case = Case(fn.__name__, Fn(fn).double().eval(), torch.randn(2, 5, 8, dtype=torch.float64))
    measurements = measure_case(case, SEARCH)
    assert all(m.holds for m in measurements), explain(case, measurements)
