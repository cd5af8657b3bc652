"""Constant folding for the calculus: a bound on max |c| of a constant whose values are unknown (a meta tensor), from
the formula that made it (rotary tables are cos and sin of something: |c| <= 1, whatever the model was built on)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import buffers

__all__ = ["abs_bound", "sign_of", "scalar_value", "fold_real_constants"]


_BOUNDED = {"cos": 1.0, "sin": 1.0, "tanh": 1.0, "sigmoid": 1.0, "softmax": 1.0}
_PASSTHROUGH = {"getitem", "view", "reshape", "unsqueeze", "squeeze", "expand", "expand_as", "to", "float",
                "double", "half", "bfloat16", "type_as", "contiguous", "transpose", "permute", "repeat", "flatten",
                "clone", "detach", "narrow", "select", "slice", "alias", "_to_copy", "t", "unflatten",
                # selections and rearrangements: every entry of the result is an entry of the input
                "split", "chunk", "tensor_split", "unbind", "repeat_interleave", "index_select", "gather", "take",
                "movedim", "swapaxes", "roll", "flip", "tile", "mT"}


def abs_bound(arg: Any, weights: Any, depth: int = 0) -> float | None:
    """An upper bound on max |c| for a constant: its values when real, else from its formula (rotary tables are
    cos and sin of something: |c| <= 1, whatever the model was built on)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return abs(float(arg))
    if isinstance(arg, torch.Tensor):
        return None if arg.is_meta else float(arg.detach().float().abs().max()) if arg.numel() else 0.0
    if not isinstance(arg, fx.Node) or depth > 24:
        return None
    value = arg.meta.get("value")
    if isinstance(value, torch.Tensor) and not value.is_meta:
        return float(value.detach().float().abs().max()) if value.numel() else 0.0
    if arg.op == "get_attr":
        tensor = weights.tensor(arg.target)
        if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
            return float(tensor.float().abs().max())
        law = getattr(weights, "laws", {}).get(arg.target)  # a meta tensor whose init wrote a known constant
        if law is not None and law.kind == "constant":
            return abs(law.mean)
        root = getattr(weights, "root", None)
        value = buffers.recover_constant_parameter(root, arg.target) if root is not None else None
        if value is not None and value.numel():
            return float(value.abs().max())
        if isinstance(tensor, nn.Parameter) and hasattr(weights, "abs_max"):  # predicted from its init law on
            return weights.abs_max(arg.target)[0]  # meta, as every atom's norm is (WeightStore.abs_max)
        return None
    if arg.op not in ("call_function", "call_method"):
        return None
    target = arg.target
    name = target if isinstance(target, str) else (target.overloadpacket.__name__ if isinstance(
        target, torch._ops.OpOverload) else getattr(target, "__name__", ""))
    if name in _BOUNDED:
        return _BOUNDED[name]
    if name == "exp" and arg.args:  # exp is increasing: exp(c) <= exp(max |c|)
        inner = abs_bound(arg.args[0], weights, depth + 1)
        return math.exp(inner) if inner is not None and inner < 700 else None
    if name in _PASSTHROUGH and arg.args:
        return abs_bound(arg.args[0], weights, depth + 1)
    if name in ("cat", "stack") and arg.args and isinstance(arg.args[0], (list, tuple)):
        parts = [abs_bound(a, weights, depth + 1) for a in arg.args[0]]
        return None if any(p is None for p in parts) else max(parts, default=0.0)
    if name in ("mul", "neg") and arg.args:
        parts = [abs_bound(a, weights, depth + 1) for a in arg.args[:2]] if name == "mul" else [
            abs_bound(arg.args[0], weights, depth + 1)]
        return None if any(p is None for p in parts) else math.prod(parts)
    return None


def scalar_value(arg: Any, weights: Any, depth: int = 0) -> float | None:
    """The one value of a constant tensor whose entries are all equal (a 0-d buffer, `torch.tensor(c, dtype=...)`,
    a full tensor), as its dtype holds it: known on the CPU, recovered on meta (buffers.py) or written by a constant
    init law. None when unknown, when the entries differ (a per-channel gain), or for a parameter (trained: a gain
    atom, not a constant). `weights` is a WeightStore, or the bare model when no store exists yet (patterns.py)."""
    if isinstance(arg, bool):
        return None
    if isinstance(arg, (int, float)):
        return float(arg)
    if isinstance(arg, torch.Tensor):
        return None if arg.is_meta else _one_value(arg)
    if not isinstance(arg, fx.Node) or depth > 24:
        return None
    if arg.op == "get_attr":
        return _stored_scalar(str(arg.target), weights)
    value = arg.meta.get("value")
    if not isinstance(value, torch.Tensor) or arg.op not in ("call_function", "call_method"):
        return None
    if not value.is_meta:
        return _one_value(value)
    name = _op_name(arg)
    if name == "tensor" and arg.args and isinstance(arg.args[0], (int, float)) and not isinstance(arg.args[0], bool):
        return _rounded(float(arg.args[0]), value.dtype)  # `torch.tensor(d ** 0.5, dtype=x.dtype)`
    if name in _PASSTHROUGH and arg.args:  # every entry is an entry of the input, cast to this dtype
        inner = scalar_value(arg.args[0], weights, depth + 1)
        return None if inner is None else _rounded(inner, value.dtype)
    return None


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return getattr(target, "__name__", "")


def _stored_scalar(name: str, weights: Any) -> float | None:
    root = weights if isinstance(weights, nn.Module) else getattr(weights, "root", None)
    if root is None or _is_parameter(root, name):
        return None
    tensor = _stored(weights, name)
    if not isinstance(tensor, torch.Tensor) or not tensor.numel():
        return None
    if not tensor.is_meta:
        return _one_value(tensor)
    laws = {} if isinstance(weights, nn.Module) else getattr(weights, "laws", {})
    law = laws.get(name)  # `torch.tensor(c)`, `fill_(c)` recorded while the model was built on meta
    return _rounded(law.mean, tensor.dtype) if law is not None and law.kind == "constant" else None


def _stored(weights: Any, name: str) -> Any:
    """The tensor `name` through the store, or read off the bare model (a meta buffer recovered from its init)."""
    if not isinstance(weights, nn.Module):
        return weights.tensor(name)
    owner, _, attr = name.rpartition(".")
    try:
        tensor = getattr(weights.get_submodule(owner), attr, None)
    except AttributeError:
        return None
    if isinstance(tensor, torch.Tensor) and tensor.is_meta:
        return buffers.recover(weights, name)
    return tensor


def _is_parameter(root: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    try:
        return attr in root.get_submodule(owner)._parameters
    except AttributeError:
        return False


def _one_value(tensor: torch.Tensor) -> float | None:
    if not tensor.numel() or tensor.is_complex():
        return None
    flat = tensor.detach().reshape(-1)
    return float(flat[0]) if bool((flat == flat[0]).all()) else None  # NaN differs from itself: None


def _rounded(value: float, dtype: torch.dtype) -> float:
    """value as a tensor of dtype holds it (bfloat16 holds 1/3 as 0.33398): the factor the product really applies,
    which can be a hair above the number written, so the scale stays an upper bound."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


_POSITIVE = {"exp", "sigmoid", "softmax", "relu", "softplus", "abs", "square"}


def sign_of(arg: Any, weights: Any, depth: int = 0) -> int:
    """1 if every entry of a constant is >= 0, -1 if every entry is <= 0, 0 if not known (Mamba's
    `A = -exp(A_log)` is <= 0 whatever A_log is)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return 1 if arg >= 0 else -1
    value = arg if isinstance(arg, torch.Tensor) else arg.meta.get("value") if isinstance(arg, fx.Node) else None
    if isinstance(value, torch.Tensor) and not value.is_meta and value.numel():
        return 1 if bool((value >= 0).all()) else -1 if bool((value <= 0).all()) else 0
    if not isinstance(arg, fx.Node) or depth > 24:
        return 0
    if arg.op == "get_attr":
        tensor = weights.tensor(arg.target)
        if (not isinstance(tensor, torch.Tensor) or tensor.is_meta) and getattr(weights, "root", None) is not None:
            tensor = buffers.recover_constant_parameter(weights.root, arg.target)
        return sign_of(tensor, weights, depth + 1) if isinstance(tensor, torch.Tensor) else 0
    if arg.op not in ("call_function", "call_method"):
        return 0
    target = arg.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name in _POSITIVE:
        return 1
    if name == "neg" and arg.args:
        return -sign_of(arg.args[0], weights, depth + 1)
    if name in _PASSTHROUGH and arg.args:
        return sign_of(arg.args[0], weights, depth + 1)
    return 0


def fold_real_constants(graph_module: fx.GraphModule) -> None:
    """Evaluate what depends only on real (non-meta) buffers, e.g. `self.cos[:T]`, so the registry can read the
    constant's values as it does on the fx route (where the tracer computes them)."""
    real: dict[fx.Node, Any] = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            value = graph_module
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor) and not value.is_meta:
                real[node] = value.detach()
        elif node.op == "call_function" and node.all_input_nodes and all(n in real for n in node.all_input_nodes):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: real[n])
            try:
                with torch.no_grad():
                    real[node] = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - folding is an optimisation; the op stays symbolic
                continue
            node.meta["value"] = real[node]
