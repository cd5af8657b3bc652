"""aten spellings of the registry (the torch.export route): argument orders of aten ops mapped onto the entries."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import OpView, REGISTRY, Semantics, linear, register
from .ops_atoms import embedding_atom, unknown_weight
from .ops_normalization import normalization
from .ops_shape import first_fdim


# ------------------------------------------------------------------------------- aten spellings (torch.export)
@register("aten:linear")
def _aten_linear(op: OpView) -> Semantics:
    return REGISTRY[F.linear](op)


@register("aten:layer_norm")
def _aten_layer_norm(op: OpView) -> Semantics:  # (input, normalized_shape, weight, bias, eps, cudnn_enable)
    return normalization(op, op.param_name(2, "weight"), op.param_name(3, "bias"), op.arg(4, "eps", 1e-5), True,
                         "LayerNorm")


@register("aten:rms_norm")
def _aten_rms_norm(op: OpView) -> Semantics:  # (input, normalized_shape, weight, eps)
    eps = op.arg(3, "eps")
    return normalization(op, op.param_name(2, "weight"), None,
                         eps if eps is not None else torch.finfo(torch.float32).eps, False, "RMSNorm")


@register("aten:embedding")
def _aten_embedding(op: OpView) -> Semantics:  # aten.embedding(weight, indices): the weight comes first
    weight = op.param_name(0, "weight")
    if weight is None:
        return unknown_weight(op, "embedding lookup in a tensor that is not a parameter")
    return embedding_atom(op, weight)


@register("aten:slice")
def _aten_slice(op: OpView) -> Semantics:
    """aten.slice / aten.select: positions keep their feature vectors; a slice of the feature axis carries
    sqrt(F/f) (the same rules as indexing)."""
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    fdim = first_fdim(op)
    dim = op.arg(1, "dim", 0)
    dim = dim + len(in_shape) if isinstance(dim, int) and dim < 0 else dim
    if dim != fdim:
        new = fdim - (1 if len(out_shape) < len(in_shape) and dim < fdim else 0)
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=new,
                                tags=("layout",)))
    if len(out_shape) == len(in_shape):
        return linear(Semantics("bond", (math.sqrt(in_shape[fdim] / max(1, out_shape[fdim])),),
                                "slice of the feature axis: sqrt(F/f)", fdim=fdim, tags=("layout",)))
    return linear(Semantics("bond", (math.sqrt(in_shape[fdim]),), "selects one feature: sqrt(F)",
                            fdim=max(0, len(out_shape) - 1), tags=("layout",)))


@register("aten:batch_norm")
def _aten_batch_norm(op: OpView) -> Semantics:
    """aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn), eval."""
    weight = op.param_name(1, "weight") or op.param_name(4, "running_var")
    if weight is None:
        return unknown_weight(op, "batch norm whose statistics are not buffers")
    slope, origin = op.weights.batch_norm(weight.rsplit(".", 1)[0], op.arg(7, "eps", 1e-5))
    return linear(Semantics("bond", (slope,), "BatchNorm (eval): max_c |gamma_c| / sqrt(var_c + eps)",
                            fdim=1, label="BatchNorm", info={"origin": origin}))
