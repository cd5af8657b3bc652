"""Selection and padding ops of the registry: roll, pad, masked_fill, gather (Swin's shifted windows, DeBERTa's
attention masks, MoE index plumbing).

Each constant bounds the max-position RMS of the output by that of the input (the norm convention of registry.py):
a permutation of entries keeps it; zeros added keep or shrink it; a selection that may repeat entries is bounded by
the square root of how many entries it may draw one output from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import OpView, Semantics, linear, register
from .ops_shape import first_fdim


@register(torch.roll, "roll")
def _roll(op: OpView) -> Semantics:
    """Along given dims, roll permutes whole positions or the entries of each feature vector: RMS unchanged. With
    no dims the flattened tensor is rolled: an output vector is made of pieces of at most two input vectors, so its
    sum of squares is at most twice the largest: sqrt(2)."""
    dims = op.arg(2, "dims")
    if dims is None or dims == () or dims == []:
        return linear(Semantics("bond", (math.sqrt(2.0),), "roll of the flattened tensor: pieces of two vectors",
                                tags=("layout",), label="roll"))
    return linear(Semantics("bond", (1.0,), "roll along axes: a permutation of positions or of features",
                            tags=("layout",), label="roll"))


@register(F.pad, torch.constant_pad_nd, "pad")
def _pad(op: OpView) -> Semantics:
    """Constant padding with 0 adds zero positions or zero features (RMS kept or shrunk), Lipschitz 1; a nonzero
    fill adds |value| to the output's bound. Reflect/replicate copy existing entries: 1 along positions, sqrt(F)
    when the feature axis itself is padded (one entry may be copied many times)."""
    pad = op.arg(1, "pad") or ()
    mode = op.arg(2, "mode", "constant") or "constant"
    value = op.arg(3, "value", 0.0) or 0.0
    shape = op.in_shape(0)
    fdim = first_fdim(op)
    padded_dims = {len(shape) - 1 - i // 2 for i, p in enumerate(pad) if p}
    upper = op.bounds[0].upper + abs(float(value)) if op.bounds else None
    if mode == "constant":
        return linear(Semantics("bond", (1.0,), f"constant padding with {value}: zeros kept apart from the input",
                                upper=upper, tags=("layout",), label="pad"))
    constant = math.sqrt(shape[fdim]) if fdim in padded_dims else 1.0
    return linear(Semantics("bond", (constant,), f"{mode} padding copies entries", tags=("layout",), label="pad"))


@register(torch.masked_fill, "masked_fill", "masked_fill_")
def _masked_fill(op: OpView) -> Semantics:
    """For a fixed mask each entry is either the input's or the constant: Lipschitz 1 in the input, 0 in the mask
    (a boolean carries no gradient); the output's RMS is at most the input's plus |value|."""
    value = op.arg(2, "value", 0.0)
    fill = abs(float(value)) if isinstance(value, (int, float)) else math.inf
    upper = op.bounds[0].upper + fill if op.bounds else None
    lipschitz = (1.0,) + (0.0,) * (len(op.inputs) - 1)
    return linear(Semantics("bond", lipschitz, "masked_fill: entries kept or replaced by a constant", upper=upper,
                            label="masked_fill"))


@register(torch.gather, "gather", torch.index_select, "index_select")
def _gather(op: OpView) -> Semantics:
    """Output entries are input entries along `dim`, possibly repeated: an output vector's sum of squares is at most
    the sum over the n entries of `dim` it may draw each feature from, so sqrt(n) (1 when `dim` is not the
    feature axis and the index is the same for every feature: index_select of positions). The index is not data."""
    shape = op.in_shape(0)
    dim = op.arg(1, "dim", -1)
    dim = dim % max(1, len(shape)) if isinstance(dim, int) else len(shape) - 1
    name = getattr(op.node.target, "__name__", op.node.target)
    whole_vectors = name == "index_select" and dim != first_fdim(op)
    constant = 1.0 if whole_vectors else math.sqrt(shape[dim] if shape else 1)
    lipschitz = (constant,) + (0.0,) * (len(op.inputs) - 1)
    return linear(Semantics("bond", lipschitz, f"gather along axis {dim}: entries may repeat, sqrt(n)",
                            tags=("layout",), label="gather"))
