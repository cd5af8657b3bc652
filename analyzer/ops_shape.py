"""Shape ops of the registry: reshape, permute, expand, indexing, split, cat (where the feature axis goes), pooling."""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import INF, OpView, Semantics, linear, register


# ------------------------------------------------------------------------------------------------------- layouts
def layout_lipschitz(in_shape: Sequence[int], fdim: int, out_shape: Sequence[int]) -> tuple[float, int, str]:
    """Constant and new feature axis of a reshape, from shapes alone (see the module docstring).

    Merging whole feature vectors into a bigger group keeps the max-position RMS (a mean of squares is at most
    the max); splitting a feature axis of size F into pieces of size f lets one piece carry all the energy:
    sqrt(F/f). Anything else falls back to sqrt(F), which bounds any map that only selects or copies entries.
    """
    in_shape, out_shape = list(in_shape), list(out_shape)
    if in_shape == out_shape:
        return 1.0, fdim, "same shape"
    width = in_shape[fdim] if in_shape else 1
    groups = _reshape_groups(in_shape, out_shape)
    for in_dims, out_dims in groups:
        if fdim not in in_dims:
            continue
        real_in = [d for d in in_dims if in_shape[d] != 1]
        real_out = [d for d in out_dims if out_shape[d] != 1] or out_dims[-1:]
        if real_in == [fdim] and len(real_out) == 1:
            return 1.0, real_out[0], "feature axis unchanged"
        if real_in == [fdim]:
            new = real_out[-1]
            return math.sqrt(width / out_shape[new]), new, "feature axis split"
        if len(real_out) == 1 and real_in and real_in[-1] == fdim:
            return 1.0, real_out[0], "whole feature vectors merged"
        if len(real_out) == 1:
            return 1.0, real_out[0], "feature axis merged with positions"
        break
    return math.sqrt(width), len(out_shape) - 1, "layout change not understood: sqrt(F) bound"


def _reshape_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = [], []
        pa = pb = 1
        if i < len(a):
            gi.append(i); pa *= a[i]; i += 1
        if j < len(b):
            gj.append(j); pb *= b[j]; j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i); pa *= a[i]; i += 1
            elif j < len(b):
                gj.append(j); pb *= b[j]; j += 1
            else:
                break
        while i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            gi.append(i); i += 1
        while j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            gj.append(j); j += 1
        groups.append((gi, gj))
    return groups


def first_fdim(op: OpView) -> int:
    bound = op.bounds[0] if op.bounds else None
    shape = op.in_shape(0)
    if bound is None or bound.fdim is None:
        return len(shape) - 1
    return bound.fdim % max(1, len(shape))


@register("view", "reshape", torch.reshape, "flatten", torch.flatten, "unflatten", torch.unflatten, "squeeze",
          torch.squeeze, "unsqueeze", torch.unsqueeze, nn.Flatten, nn.Unflatten, "view_as", "reshape_as")
def _reshape(op: OpView) -> Semantics:
    constant, fdim, why = layout_lipschitz(op.in_shape(0), first_fdim(op), op.out_shape())
    if op.profile == "modula":
        constant = 1.0
    return linear(Semantics("bond", _with_shape_operands(op, constant), f"layout: {why}", fdim=fdim,
                            tags=("layout",), label="reshape"))


def _with_shape_operands(op: OpView, constant: float) -> tuple[float, ...]:
    """`view_as(y)`, `reshape_as(y)`, `expand_as(y)` read only y's shape: the output does not move with y's
    values, so y's Lipschitz constant is 0 (not unknown)."""
    return (constant,) + (0.0,) * (len(op.inputs) - 1)


@register("transpose", torch.transpose, "permute", torch.permute, "movedim", torch.movedim, "t", "swapaxes")
def _permute(op: OpView) -> Semantics:
    ndim = len(op.in_shape(0))
    order = _permutation(op, ndim)
    fdim = first_fdim(op)
    new = order.index(fdim) if order is not None else ndim - 1
    constant = 1.0 if order is not None or op.profile == "modula" else math.sqrt(op.in_shape(0)[fdim])
    return linear(Semantics("bond", (constant,), "layout: axes permuted, feature vectors unchanged", fdim=new,
                     tags=("layout",), label="permute"))


def _permutation(op: OpView, ndim: int) -> list[int] | None:
    target = op.node.target
    if isinstance(target, torch._ops.OpOverload):  # aten.transpose.int (torch.export fallback)
        target = target.overloadpacket
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    order = list(range(ndim))
    if name in ("transpose", "swapaxes"):
        a, b = op.arg(1, "dim0"), op.arg(2, "dim1")
        a, b = a % ndim, b % ndim
        order[a], order[b] = order[b], order[a]
        return order
    if name == "t":
        return order[::-1]
    if name == "permute":
        dims = [op.arg(i, "dims") for i in range(1, len(op.node.args))]
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
        return [d % ndim for d in dims] if len(dims) == ndim else None
    return None


@register("expand", "expand_as", "repeat", torch.broadcast_to, "broadcast_to")
def _expand(op: OpView) -> Semantics:
    shift = len(op.out_shape()) - len(op.in_shape(0))
    same_width = op.out_shape()[first_fdim(op) + shift] == op.in_shape(0)[first_fdim(op)]
    constant = 1.0 if same_width else math.sqrt(op.in_shape(0)[first_fdim(op)] or 1)
    return linear(Semantics("bond", _with_shape_operands(op, constant), "broadcast copies positions", fdim=first_fdim(op) + shift,
                     tags=("layout",)))


@register("repeat_interleave", torch.repeat_interleave)
def _repeat_interleave(op: OpView) -> Semantics:
    """`k.repeat_interleave(r, dim)` (grouped-query attention in Meta's Llama code): with a whole-number r every
    entry appears exactly r times, so along a position axis each feature vector is copied whole (RMS kept) and along
    the feature axis every entry's square is counted r times in a vector r times as wide (RMS kept): constant 1.
    Per-entry repeat counts (a tensor) or a flattened input (no `dim`) may repeat one entry more than the others:
    bounded like any selection, by sqrt(n) of the axis read."""
    shape, fdim = op.in_shape(0), first_fdim(op)
    repeats, dim = op.arg(1, "repeats"), op.arg(2, "dim")
    uniform = isinstance(repeats, int) and not isinstance(repeats, bool) and isinstance(dim, int)
    if uniform:
        constant, new = 1.0, fdim
        why = "repeat_interleave copies whole entries r times: RMS kept"
    else:
        axis = dim % max(1, len(shape)) if isinstance(dim, int) else fdim
        constant, new = math.sqrt(math.prod(shape) if dim is None else shape[axis] or 1), len(op.out_shape()) - 1
        why = "repeat_interleave with per-entry counts: entries may repeat unevenly, sqrt(n)"
    lipschitz = (constant,) + (0.0,) * (len(op.inputs) - 1)
    return linear(Semantics("bond", lipschitz, why, fdim=new, tags=("layout",), label="repeat_interleave"))


@register(operator.getitem)
def _getitem(op: OpView) -> Semantics:
    source = op.inputs[0].meta.get("value") if op.inputs else None
    if isinstance(source, (tuple, list)):
        return linear(Semantics("bond", (1.0,), "element of a tuple (pieces bounded at the split)", tags=("layout",)))
    in_shape, out_shape = op.in_shape(0), op.out_shape()
    fdim = first_fdim(op)
    if fdim == len(in_shape) - 1 and out_shape and out_shape[-1] == in_shape[-1] and not _indexes_last(op):
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=len(out_shape) - 1,
                         tags=("layout",)))
    if fdim == len(in_shape) - 1 and out_shape and out_shape[-1] < in_shape[-1] and len(out_shape) == len(in_shape):
        return linear(Semantics("bond", (math.sqrt(in_shape[-1] / max(1, out_shape[-1])),),
                         "slice of the feature axis: sqrt(F/f)", fdim=len(out_shape) - 1, tags=("layout",)))
    if fdim != len(in_shape) - 1 and len(out_shape) == len(in_shape) and out_shape[fdim] == in_shape[fdim]:
        return linear(Semantics("bond", (1.0,), "selects positions, feature vectors unchanged", fdim=fdim,
                         tags=("layout",)))
    width = in_shape[fdim] if in_shape else 1
    return linear(Semantics("bond", (math.sqrt(width),), "indexing not understood: sqrt(F) bound",
                     fdim=max(0, len(out_shape) - 1), tags=("layout",)))


def _indexes_last(op: OpView) -> bool:
    index = op.node.args[1]
    if not isinstance(index, tuple):
        return False
    if Ellipsis in index:
        after = index[index.index(Ellipsis) + 1:]
        return any(not (isinstance(i, slice) and i == slice(None)) for i in after)
    return len(index) >= len(op.in_shape(0)) and not (isinstance(index[-1], slice) and index[-1] == slice(None))


@register(torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split", torch.unbind, "unbind")
def _split(op: OpView) -> Semantics:
    pieces = op.value if isinstance(op.value, (tuple, list)) else ()
    fdim = first_fdim(op)
    in_shape = op.in_shape(0)
    widths = [p.shape[fdim] for p in pieces if isinstance(p, torch.Tensor) and p.dim() == len(in_shape)]
    if widths and min(widths) < in_shape[fdim] and op.profile != "modula":
        constant = math.sqrt(in_shape[fdim] / min(widths))
        return linear(Semantics("bond", (constant,), "split of the feature axis: a piece carries sqrt(F/f)",
                         fdim=fdim, tags=("layout",)))
    drop = 1 if widths == [] and pieces else 0  # unbind removes the axis
    dim = op.arg(1, "dim", 0)
    if drop and isinstance(dim, int) and in_shape and dim % len(in_shape) == fdim % len(in_shape):
        # Unbinding the feature axis: a piece holds one feature at every position, and its new last axis runs
        # over positions. Its RMS over that axis is at most max_t |x_t,j| <= sqrt(F) max_t ||x_t||_RMS.
        width = in_shape[fdim]
        constant = 1.0 if op.profile == "modula" else math.sqrt(width)
        return linear(Semantics("bond", (constant,), f"unbind of the feature axis: one feature across positions, "
                                f"sqrt(F = {width})", nominal=(1.0,), fdim=max(0, len(in_shape) - 2),
                                tags=("layout",)))
    return linear(Semantics("bond", (1.0,), "split into positions", fdim=fdim - drop if fdim > 0 else fdim,
                     tags=("layout",)))


@register(torch.cat, torch.concat, torch.concatenate)
def _cat(op: OpView) -> Semantics:
    return linear(Semantics("bond", (1.0,) * len(op.inputs), "cat: RMS of the union <= max of the parts",
                     tags=("layout",), label="cat"))


@register(torch.stack)
def _stack(op: OpView) -> Semantics:
    """stack(xs, dim): a new axis of positions; every feature vector is kept whole, so the RMS-max norm of the result
    is the max of the parts' (constant 1 each). The feature axis moves up by one when the new axis is inserted at or
    before it (stack(dim=0) of (B, T, D) tensors has its features on axis 3, not 2)."""
    out_shape = op.out_shape()
    fdim, dim = first_fdim(op), op.arg(1, "dim", 0)
    if out_shape and isinstance(dim, int):
        fdim = fdim + 1 if dim % len(out_shape) <= fdim else fdim
    return linear(Semantics("bond", (1.0,) * len(op.inputs), "stack: a new axis of positions, feature vectors kept",
                            fdim=fdim, tags=("layout",), label="stack"))


# ----------------------------------------------------------------------------------------------------- pooling
@register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, F.adaptive_avg_pool1d,
          F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d)
def _avg_pool(op: OpView) -> Semantics:
    return linear(Semantics("bond", (1.0,), "average pooling: a mean over pixels", fdim=1, label="avgpool"))


@register(nn.MaxPool1d, nn.MaxPool2d, F.max_pool1d, F.max_pool2d, nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d)
def _max_pool(op: OpView) -> Semantics:
    window = _window(op)
    constant = 1.0 if op.profile == "modula" else math.sqrt(window)
    return Semantics("bond", (constant,), f"max pooling: each channel may take its max at a different pixel: "
                     f"sqrt(window = {window})", smooth=False, fdim=1, nominal=(1.0,), label="maxpool")


def _window(op: OpView) -> int:
    kernel = op.module.kernel_size if op.module is not None and hasattr(op.module, "kernel_size") else \
        op.arg(1, "kernel_size")
    if kernel is None:  # adaptive: the window is the ratio of sizes
        return max(1, math.prod(op.in_shape(0)[2:]) // max(1, math.prod(op.out_shape()[2:])))
    kernel = kernel if isinstance(kernel, (tuple, list)) else (kernel,) * (len(op.in_shape(0)) - 2)
    return int(math.prod(kernel))


@register("copy_", torch.Tensor.copy_)
def _copy(op: OpView) -> Semantics:
    """`dst.copy_(src)` (a cache keeping its state tensor's address): the result holds src's values, so 1 with
    respect to src and 0 with respect to what dst held; src must have dst's shape (broadcasting could repeat a
    feature vector's entries)."""
    src, dst = op.arg(1, "src"), op.arg(0, "self")
    same = [i for i, n in enumerate(op.inputs) if n is src]
    src_shape = op.in_shape(same[0]) if same else ()
    if same and src_shape and src_shape != op.out_shape():
        return Semantics("unknown", (INF,) * len(op.inputs), "copy_ with broadcasting", certified=False,
                         reason="copy_ broadcasting its source into a larger tensor is not modelled")
    lipschitz = tuple(1.0 if n is src else 0.0 for n in op.inputs)
    return linear(Semantics("bond", lipschitz, "copy_: the result holds src's values", tags=("layout",),
                            label="copy_"))
