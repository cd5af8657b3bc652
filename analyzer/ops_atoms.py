"""Atom ops of the registry: Linear (and GPT-2's addmm Conv1D), matmul by a weight, Conv, Embedding.

The natural norm of each kind is modnorm.atoms'; these entries find the weight in the graph and read its norm."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import atoms
from .registry import AtomSpec, INF, OpView, Semantics, is_number, linear, register, sup_bound
from .ops_arithmetic import CASTS
from .ops_shape import first_fdim


# ----------------------------------------------------------------------------------------------------- atoms
def _linear_atom(op: OpView, weight: str, bias: str | None, transposed: bool = False) -> Semantics:
    spectral, origin = op.weights.spectral(weight, transpose=transposed)
    shape = tuple(op.weights.shape(weight))
    geometry = atoms.Linear(shape, op.scale, transposed=transposed)
    scale = abs(op.scale)
    norm = geometry.factor * spectral
    bias_rms = op.weights.rms(bias)[0] * scale if bias else 0.0
    atom = AtomSpec(geometry.kind, weight, shape, norm, origin, op.scale, tuple(p for p in (weight, bias) if p),
                    bias_rms, factor=geometry.factor)
    fdim = first_fdim(op)
    if fdim != len(op.in_shape(0)) - 1:  # mixes positions (token mixing): a TokenMixing atom, ||W||_inf->inf
        row_l1, origin = op.weights.max_row_l1(weight) if not transposed else _max_column_l1(op, weight)
        mixing = atoms.TokenMixing(shape, op.scale, transposed=transposed)
        constant = mixing.factor * row_l1
        atom = AtomSpec(mixing.kind, weight, shape, constant, origin, op.scale, tuple(p for p in (weight, bias) if p),
                        bias_rms, factor=mixing.factor)
        return linear(Semantics("atom", (constant,), "Linear over a position axis: |c| ||W||_inf->inf (max row l1)",
                                atom=atom, fdim=fdim, upper=constant * op.bounds[0].upper + bias_rms,
                                label="TokenMixing"))
    return linear(Semantics("atom", (norm,), "Linear: |c| sqrt(in/out) ||W||_*", atom=atom,
                     upper=norm * op.bounds[0].upper + bias_rms if op.bounds else None, label="Linear"))


@register(nn.Linear, F.linear)
def _linear(op: OpView) -> Semantics:
    if op.module is not None:
        prefix = op.node.target
        bias = f"{prefix}.bias" if op.module.bias is not None else None
        return _linear_atom(op, f"{prefix}.weight", bias)
    weight = op.param_name(1, "weight")
    if weight is None:
        return unknown_weight(op, "F.linear with a weight that is not a parameter")
    return _linear_atom(op, weight, op.param_name(2, "bias"))


@register(torch.addmm)
def _addmm(op: OpView) -> Semantics:
    # GPT-2's Conv1D: addmm(bias, x, W) with W stored (in, out).
    weight = op.param_name(2, "mat2")
    if weight is None:
        return unknown_weight(op, "addmm without a parameter weight")
    return _linear_atom(op, weight, op.param_name(0, "input"), transposed=True)


def _max_column_l1(op: OpView, weight: str) -> tuple[float, str]:
    """max row l1 of Wᵀ for a weight stored (in, out) (x @ W over positions)."""
    w = op.weights.tensor(weight) if hasattr(op.weights, "tensor") else None
    if isinstance(w, torch.Tensor) and not w.is_meta:
        return float(w.detach().abs().sum(0, dtype=torch.float64).max()), "measured"
    return INF, "not predicted on meta for a transposed weight"


def _left_linear_atom(op: OpView, weight: str) -> Semantics:
    """`W @ x` with W a 2-D parameter stored (out, in) (Mamba's `dt_proj.weight @ dt.transpose(1, 2)`): W acts on
    axis -2 of x. When that is x's feature axis it is a Linear whose output features are on axis -2; when it is a
    position axis, a TokenMixing atom."""
    in_ndim, fdim = len(op.in_shape(0)), first_fdim(op)
    shape = tuple(op.weights.shape(weight))
    if in_ndim < 2 or fdim % in_ndim != in_ndim - 2:  # axis -2 is a position axis: a TokenMixing atom
        row_l1, origin = op.weights.max_row_l1(weight)
        mixing = atoms.TokenMixing(shape, op.scale)
        constant = mixing.factor * row_l1
        atom = AtomSpec(mixing.kind, weight, shape, constant, origin, op.scale, (weight,), factor=mixing.factor)
        return linear(Semantics("atom", (constant,), "W @ x over a position axis: |c| ||W||_inf->inf", atom=atom,
                                fdim=fdim, upper=constant * op.bounds[0].upper, label="TokenMixing"))
    spectral, origin = op.weights.spectral(weight)
    geometry = atoms.Linear(shape, op.scale)
    norm = geometry.factor * spectral
    atom = AtomSpec(geometry.kind, weight, shape, norm, origin, op.scale, (weight,), factor=geometry.factor)
    return linear(Semantics("atom", (norm,), "Linear W @ x on axis -2: |c| sqrt(in/out) ||W||_*", atom=atom,
                            fdim=len(op.out_shape()) - 2, upper=norm * op.bounds[0].upper, label="Linear"))


@register(operator.matmul, torch.matmul, "matmul", torch.mm, "mm", torch.bmm, "bmm")
def _matmul(op: OpView) -> Semantics:
    if len(op.inputs) == 1 and op.arg(1, "other") is op.inputs[0]:
        weight = op.param_name(0, "input")
        if weight is not None and len(op.weights.shape(weight)) == 2:
            return _left_linear_atom(op, weight)
        return unknown_weight(op, "matmul with a constant on the left (only a 2-D parameter W @ x is modelled)")
    if len(op.inputs) == 1:
        weight = op.param_name(1, "other")
        if weight is not None and len(op.weights.shape(weight)) == 2:
            return _linear_atom(op, weight, None, transposed=True)
        weight = _transposed_parameter(op, op.arg(1, "other"))
        if weight is not None:  # `x @ W.T`: FalconLinear, or LoRA with raw parameters (W stored (out, in))
            return _linear_atom(op, weight, None)
        value = op.constant_value(1, "other")
        if value is not None and value.dim() == 2:
            norm = float(torch.linalg.matrix_norm(value.double(), ord=2))
            fan_in, fan_out = value.shape
            return linear(Semantics("bond", (norm * math.sqrt(fan_in / fan_out),), "constant matrix: ||M||_RMS->RMS"))
        return unknown_weight(op, "matmul with a constant of unknown value")
    # Two activations: |(AB)_i| <= k ||A_i||_RMS max_l ||B_l||_RMS (docs/theory/constants.md#products), where A_i
    # and B_l are rows (last axis). A row is a feature vector only when the operand's feature axis is last; else
    # (x.transpose(1, 2) @ x) a row mixes positions and its RMS is bounded by the operand's sup, <= sqrt(F) ||.||.
    k = op.in_shape(0)[-1]
    row_a, factor_a = _row_bound(op, 0)
    row_b, factor_b = _row_bound(op, 1)
    out_ndim = len(op.out_shape()) if op.out_shape() else 0
    return Semantics("bond", (k * row_b * factor_a, k * row_a * factor_b),
                     "matmul of activations: k ||B rows||, k ||A rows||", upper=k * row_a * row_b,
                     tags=("product",), label="A @ B", fdim=max(out_ndim - 1, 0) if out_ndim else -1,
                     reason="product of two activations: certified through their RMS upper bounds")


@register(torch.baddbmm, "baddbmm")
def _baddbmm(op: OpView) -> Semantics:
    """beta * input + alpha * (batch1 @ batch2): BLOOM's attention scores (ALiBi bias as `input`). Per data input:
    |beta| for `input`, and the activation-product constants of `_matmul` scaled by |alpha| for the two batches."""
    roles = {"input": op.arg(0, "input"), "batch1": op.arg(1, "batch1"), "batch2": op.arg(2, "batch2")}
    beta, alpha = op.arg(3, "beta", 1), op.arg(4, "alpha", 1)
    if not (is_number(beta) and is_number(alpha)):
        return unknown_weight(op, "baddbmm with tensor-valued beta or alpha")
    where = {role: next((i for i, n in enumerate(op.inputs) if n is node), None) for role, node in roles.items()}
    if where["batch1"] is None or where["batch2"] is None:
        return unknown_weight(op, "baddbmm with a constant batch (only activation @ activation is modelled)")
    k = op.in_shape(where["batch1"])[-1]
    row_a, factor_a = _row_bound(op, where["batch1"])
    row_b, factor_b = _row_bound(op, where["batch2"])
    constants = [0.0] * len(op.inputs)
    constants[where["batch1"]] += abs(alpha) * k * row_b * factor_a
    constants[where["batch2"]] += abs(alpha) * k * row_a * factor_b
    shift = 0.0
    if where["input"] is not None:
        constants[where["input"]] += abs(beta)
        shift = abs(beta) * op.bounds[where["input"]].upper
    elif beta:
        bias = op.constant_value(0, "input")
        shift = abs(beta) * float(bias.abs().max()) if bias is not None and bias.numel() else (0.0 if bias is not None else INF)
    return Semantics("bond", tuple(constants), "baddbmm: |beta| on input, |alpha| k ||rows|| on the batches",
                     upper=abs(alpha) * k * row_a * row_b + shift, tags=("product",), label="baddbmm",
                     fdim=max(len(op.out_shape()) - 1, 0) if op.out_shape() else -1,
                     reason="product of two activations: certified through their RMS upper bounds")


def _row_bound(op: OpView, index: int) -> tuple[float, float]:
    """(bound on the RMS of a last-axis row of operand `index`, factor from its norm to a row's RMS): the operand's
    RMS bound and 1 when its feature axis is last; its sup bound and sqrt(F) otherwise."""
    bound, shape = op.bounds[index], op.in_shape(index)
    if not shape or bound.fdim is None or bound.fdim % len(shape) == len(shape) - 1:
        return bound.upper, 1.0
    width = shape[bound.fdim % len(shape)]
    return sup_bound(bound, width), math.sqrt(width)


def _transposed_parameter(op: OpView, node: Any) -> str | None:
    """The name of a 2-D parameter P read as `P.t()`, `P.T`, `P.mT` or `P.transpose(0, 1)`; None otherwise."""
    if not isinstance(node, fx.Node) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    if not (source.op == "get_attr" and source.target in op.ctx.parameter_names):
        return None
    if len(op.weights.shape(source.target)) != 2:
        return None
    swaps = ((node.op == "call_method" and node.target == "t")
             or (node.op == "call_function" and node.target is getattr and node.args[1:2] in (("T",), ("mT",)))
             or (node.op in ("call_method", "call_function") and getattr(node.target, "__name__", node.target)
                 == "transpose" and len(node.args) == 3 and {d % 2 for d in node.args[1:3] if isinstance(d, int)}
                 == {0, 1}))
    return source.target if swaps else None


def unknown_weight(op: OpView, why: str) -> Semantics:
    return Semantics("unknown", (INF,) * max(1, len(op.inputs)), why, certified=False, reason=why)


def _conv_atom(op: OpView, weight: str, bias: str | None, groups: int) -> Semantics:
    shape = tuple(op.weights.shape(weight))
    slice_norm, origin = op.weights.conv(weight, groups)
    geometry = atoms.Conv(shape, op.scale, groups)
    norm = geometry.factor * slice_norm
    bias_rms = op.weights.rms(bias)[0] * abs(op.scale) if bias else 0.0
    kind = atoms.Conv.kind_of(shape)
    atom = AtomSpec(kind, weight, shape, norm, origin, op.scale, tuple(p for p in (weight, bias) if p), bias_rms,
                    factor=geometry.factor, groups=groups)
    spread, radius = _channel_view(op)
    info = {"input_radius": radius} if spread != 1.0 else {}
    return linear(Semantics("atom", (norm * spread,), "Conv: |c| k^2 sqrt(in/out) max_ij ||W_ij||_*", atom=atom,
                            fdim=1, upper=norm * radius + bias_rms, label=kind, info=info))


def _channel_view(op: OpView) -> tuple[float, float]:
    """(factor, RMS bound) of the conv input in channel units (axis 1). A convolution's norm is stated for inputs
    measured over their channels; an input whose feature axis is another one (a 3-D network input, whose convention
    is features last) bounds a channel vector only through its largest entry: sqrt(F) x its RMS for a
    perturbation, its sup bound for the value."""
    shape, bound = op.in_shape(0), op.bounds[0]
    if not shape or bound.fdim is None or bound.fdim % len(shape) == 1:
        return 1.0, bound.upper
    width = shape[bound.fdim % len(shape)]
    return math.sqrt(width), sup_bound(bound, width)


@register(nn.Conv1d, nn.Conv2d)
def _conv_module(op: OpView) -> Semantics:
    prefix = op.node.target
    bias = f"{prefix}.bias" if op.module.bias is not None else None
    return _conv_atom(op, f"{prefix}.weight", bias, op.module.groups)


def parameter_through_reshapes(op: OpView, index: int, name: str) -> str | None:
    """The parameter behind an argument reshaped back to the parameter's own shape (Mamba passes its depthwise
    kernel as `self.conv1d.weight.squeeze(1)` and the kernel function `weight.unsqueeze(1)`)."""
    arg = op.arg(index, name)
    value = arg.meta.get("value") if isinstance(arg, fx.Node) else None
    node = arg
    while isinstance(node, fx.Node) and node.op in ("call_method", "call_function") and node.args:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if target not in ("squeeze", "unsqueeze", "view", "reshape", "contiguous", "to", "float", "type_as"):
            return None
        node = node.args[0]
    names = getattr(getattr(op, "ctx", None), "parameter_names", ())
    if not (isinstance(node, fx.Node) and node.op == "get_attr" and node.target in names):
        return None
    return node.target if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(
        op.weights.shape(node.target)) else None


@register(F.conv1d, F.conv2d, torch.conv1d, torch.conv2d)
def _conv_function(op: OpView) -> Semantics:
    weight = op.param_name(1, "weight") or parameter_through_reshapes(op, 1, "weight")
    if weight is None:
        return unknown_weight(op, "convolution with a weight that is not a parameter")
    return _conv_atom(op, weight, op.param_name(2, "bias"), op.arg(6, "groups", 1) or 1)


_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)


def input_feature_axis(node: fx.Node, value: torch.Tensor, root: nn.Module) -> int:
    """The feature axis of a continuous network input: channels (axis 1) when a convolution reads it (Whisper's
    (B, 80, 3000) mel frames into a Conv1d, an image into a Conv2d) or it is 4-D (NCHW); otherwise the last axis.
    A convolution's norm is stated over its input channels, so an input it reads is measured over them too."""
    if value.dim() == 4 or _convolved(node, root):
        return 1
    return value.dim() - 1


def _convolved(node: fx.Node, root: nn.Module) -> bool:
    """Whether a convolution reads `node` as its input, directly or through casts (`x.to(dtype)`)."""
    for user in node.users:
        if not user.args or user.args[0] is not node:
            continue
        if user.op == "call_method" and user.target in (*CASTS, "type"):
            if _convolved(user, root):
                return True
        elif _convolves(user, root):
            return True
    return False


def _convolves(user: fx.Node, root: nn.Module) -> bool:
    if user.op == "call_function":
        return user.target in _CONV_FUNCTIONS
    if user.op == "call_module":
        try:
            return isinstance(root.get_submodule(str(user.target)), _CONV_MODULES)
        except AttributeError:
            return False
    return False


def embedding_rows(node: fx.Node, root: nn.Module) -> str | None:
    """`emb.weight[positions]` (Whisper's positional embedding): rows of an nn.Embedding's table read by index,
    an embedding lookup; the weight's name, else None."""
    if not (node.op == "call_function" and node.target is operator.getitem and node.args
            and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr"):
        return None
    owner, _, leaf = str(node.args[0].target).rpartition(".")
    try:
        return node.args[0].target if leaf == "weight" and isinstance(root.get_submodule(owner), nn.Embedding) else None
    except AttributeError:
        return None


def embedding_atom(op: OpView, weight: str) -> Semantics:
    largest, smallest, origin = op.weights.row_rms(weight)
    scale = abs(op.scale)
    shape = tuple(op.weights.shape(weight))
    geometry = atoms.Embedding(shape, op.scale)
    atom = AtomSpec(geometry.kind, weight, shape, geometry.factor * largest, origin, op.scale, (weight,),
                    factor=geometry.factor)
    return linear(Semantics("atom", (scale * largest,), "Embedding: |c| max row RMS (l1 -> RMS)", atom=atom,
                     upper=scale * largest, lower=scale * smallest, fdim=len(op.out_shape()) - 1, label="Embedding"))


@register(nn.Embedding)
def _embedding_module(op: OpView) -> Semantics:
    return embedding_atom(op, f"{op.node.target}.weight")


@register("embedding_rows")
def _embedding_rows(op: OpView) -> Semantics:
    """`emb.weight[positions]` (Whisper's decoder positions): rows of an nn.Embedding's table by index."""
    return embedding_atom(op, embedding_rows(op.node, op.ctx.root))


@register(F.embedding)
def _embedding_function(op: OpView) -> Semantics:
    weight = op.param_name(1, "weight")
    if weight is None:
        return unknown_weight(op, "embedding lookup in a tensor that is not a parameter")
    return embedding_atom(op, weight)
