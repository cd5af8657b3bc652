"""Turn a model into an fx graph whose nodes carry meta-device values.

The tracer is a `torch.fx.Tracer` whose proxies shadow every node with the value it takes for the example
inputs, computed on the meta device (no memory, no FLOPs). Shape-dependent Python then resolves concretely:
`x.size()`, `x.shape`, `len(x)`, `assert t <= block_size`, iteration over `split` results. The graph is
specialised to the example shapes, keeps `call_module` nodes for torch.nn leaves and records the user's
source line of every node (`record_stack_traces`). Data-dependent control flow (`if x.sum() > 0`) cannot be
resolved without data and is reported with the user's line.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import inspect
import operator
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn

from .folding import fold_real_constants
from .ops_attention import is_packed_self_attention, multi_head_attention_ops
from .semantics import REGISTRY, lookup
from .errors import InputsDoNotFit, ModnormError, frame_of_exception
from .result import RouteAttempt

__all__ = ["TracedModel", "trace_fx", "to_meta"]

_MISSING = object()


def to_meta(value: Any) -> Any:
    """Move every tensor inside `value` to the meta device (free: no data is copied)."""
    if isinstance(value, torch.Tensor):
        return value if value.is_meta else value.detach().to("meta")
    if isinstance(value, (list, tuple)):
        moved = [to_meta(v) for v in value]
        return type(value)(moved) if not hasattr(value, "_fields") else type(value)(*moved)
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


class DataDependentError(RuntimeError):
    """Python control flow asked for the value of a tensor, which tracing on meta cannot know."""


_CONCRETE_ATTRIBUTES = {"is_nested", "is_sparse", "is_quantized", "is_mkldnn", "is_complex", "layout",
                        "requires_grad", "is_leaf", "is_meta", "names"}


class ValueProxy(fx.Proxy):
    """A proxy that answers shape questions from the node's meta value instead of recording them."""

    def __getattr__(self, name: str) -> Any:
        # Flags torch's own functional code branches on (`query.is_nested` in multi_head_attention_forward).
        if name in _CONCRETE_ATTRIBUTES:
            value = self.node.meta.get("value")
            if isinstance(value, torch.Tensor):
                return getattr(value, name)
        return super().__getattr__(name)

    @property
    def value(self) -> Any:
        value = self.node.meta.get("value", _MISSING)
        if value is _MISSING or value is None:
            raise DataDependentError(
                f"the value of `{self.node.format_node()}` could not be computed on the meta device")
        return value

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    def size(self, dim: int | None = None) -> Any:
        return self.value.size() if dim is None else self.value.size(dim)

    def dim(self) -> int:
        return self.value.dim()

    @property
    def ndim(self) -> int:
        return self.value.dim()

    def numel(self) -> int:
        return self.value.numel()

    def nelement(self) -> int:
        return self.value.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def device(self) -> torch.device:
        # Tensors the model makes from shapes alone (`torch.arange(T, device=x.device)`) are then real CPU
        # constants: the model's own checks on them (`(positions == 0).all()`) resolve, and the registry can read
        # their values. The traced values stay on meta.
        device = self.value.device
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def is_cuda(self) -> bool:
        return False

    def is_floating_point(self) -> bool:
        return self.value.is_floating_point()

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Iterator[fx.Proxy]:
        return (self[i] for i in range(len(self.value)))

    def __bool__(self) -> bool:
        value = self.value
        if isinstance(value, torch.Tensor):
            raise DataDependentError("Python control flow depends on the value of a tensor")
        return bool(value)

    def __index__(self) -> int:
        value = self.value
        if isinstance(value, int):
            return value
        raise DataDependentError("a tensor value is used as a Python index")

    def __int__(self) -> int:
        return self.__index__()

    def __setitem__(self, key: Any, value: Any) -> None:
        # `inv_perm[perm] = arange(...)` (transformers' grouped-mm experts): recorded as an operator.setitem node,
        # whose entry (ops_routing.py) accepts index bookkeeping and names a write of data as unknown, since later
        # reads of this tensor do not see the write in the graph.
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def keys(self) -> Any:
        return self.value.keys()


class ShapeTracer(fx.Tracer):
    """fx tracer whose proxies carry meta values (see the module docstring)."""

    def __init__(self, example_inputs: tuple[Any, ...], leaf_types: tuple[type, ...] = ()) -> None:
        super().__init__()
        # The user's source line of every node, recorded by create_node below: fx's own recording (CapturedTraceback's
        # symbolizer) imports torch._inductor and torch._dynamo, ~1.7 s of a small model's check.
        self.record_stack_traces = False
        # Buffers become get_attr nodes with meta shadows, so `.to(x.device)` on a meta buffer is traced, not run.
        self.proxy_buffer_attributes = True
        self._inputs = list(to_meta(example_inputs))
        self._leaf_types = leaf_types
        self._computing = False  # True while a leaf runs on meta: fx's patches must stand aside
        # Real values (see _RealValues): the CPU computes what meta would, when weights and inputs are real.
        self._real = _RealValues.of(example_inputs)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if self._real is not None and not (isinstance(root, nn.Module) and self._real.protect(root)):
            self._real = None
        if isinstance(root, nn.Module):  # torch.compile'd functions the model calls become leaves, as fx.wrap does
            for module in root.modules():
                scope = getattr(type(module).forward, "__globals__", {})
                self._autowrap_function_ids.update(id(v) for v in scope.values() if is_compiled(v))
        with autograd_functions_as_leaves(self._function_leaf):
            return super().trace(root, concrete_args)

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list]:
        """One placeholder per example input, the rest of forward's parameters left to their defaults. fx's own
        version rewrites the code object of a forward with **kwargs, which fails ("co_varnames is too small")
        when the forward is wrapped by a decorator, as every Hugging Face forward is."""
        if not is_module:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        parameters = list(inspect.signature(inspect.unwrap(root_fn)).parameters.values())[1:]
        names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        count = len(self._inputs)
        names += [f"input_{i}" for i in range(len(names), count)]
        placeholders = [self.create_proxy("placeholder", name, (), {}) for name in names[:count]]

        def forward(module: nn.Module, *args: Any) -> Any:
            return root_fn(module, *args)

        return forward, [self.root, *placeholders]

    def _function_leaf(self, function: type, args: tuple, kwargs: dict) -> Any:
        if self._computing or not _has_proxy((args, kwargs)):
            return None
        return self.create_proxy("call_function", function_leaf(function), args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        if isinstance(m, nn.MultiheadAttention) and is_packed_self_attention(m, args, kwargs):
            # fx would record F.multi_head_attention_forward as one opaque call; spell it out instead, so its
            # projections are Linear atoms and its core is sdpa (or the explicit softmax when weights are asked).
            return super().call_module(m, functools.partial(multi_head_attention_ops, m), args, kwargs)
        if not self._installed(m):
            # A module instance that is not a submodule of the model (`ACT2FN["silu"](x)` or a module-level
            # `gelu = GELUActivation()` used in forward): fx cannot name it; with no parameters it is a function,
            # so its forward is read through and its torch ops are recorded.
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                raise NameError(f"`{type(m).__name__}` holds parameters or buffers but is not a submodule of the "
                                f"model (assign it to an attribute of a module so that fx can name its weights)")
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _installed(self, m: nn.Module) -> bool:
        if self.submodule_paths is not None:
            return m in self.submodule_paths
        return any(m is p for p in self.root.modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types) or is_compiled(m):
            return True
        if REGISTRY.names_class(type(m)):  # registered by name (also after import): its entry describes it whole
            return True
        if isinstance(m, nn.MultiheadAttention):  # traced through: its projections are atoms, its core is sdpa
            return False
        if any(True for _ in m.children()) and lookup(type(m)) is None:  # nn.TransformerEncoderLayer & co:
            return False  # composites of registered modules, read through rather than left unknown
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ValueProxy(node, self)

    def _filter_traceback_frames(self, user_stack_summary: traceback.StackSummary) -> traceback.StackSummary:
        """fx's filter without its `uninteresting_files()`, which imports torch._dynamo (~1 s) for a list of torch
        files: the same frames are kept (tests/test_perf_tracing.py compares the two lists)."""
        if "torch._dynamo" in sys.modules or getattr(self, "_record_forward_stack_traces_only", False):
            return super()._filter_traceback_frames(user_stack_summary)
        frames = list(user_stack_summary)
        first = next((i for i, frame in enumerate(frames) if frame.name == "forward"), None)
        skip = _uninteresting_files()
        kept = [f for f in frames[first:] if f.filename not in skip] if first is not None else []
        return traceback.StackSummary.from_list(kept)

    def create_arg(self, a: Any) -> Any:
        # A KV cache (transformers' DynamicCache & co, returned by every model built with its default
        # use_cache=True) is state for the next call, not a function of this one: the graph returns None in its
        # place, so the model stays on the graph route. Any other object fx cannot represent still fails loudly.
        if _is_cache(a):
            return None
        return super().create_arg(a)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if self._real is not None and kind in ("call_function", "call_method", "call_module"):
            shadow = self._real.run(self, node, kind, target, args, kwargs)
            if shadow is not _MISSING:
                node.meta["value"] = shadow
                return proxy
        node.meta["value"] = self._value_of(kind, target, args, kwargs)
        if self._real is not None and kind == "placeholder":
            self._real.placeholder(node)
        return proxy

    def _value_of(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            return self._inputs.pop(0) if self._inputs else None
        if kind == "get_attr":
            return to_meta(self._fetch(target))
        if kind == "output":
            return None
        values = _on_meta_device(to_meta(fx.node.map_aggregate(args, _unwrap)))  # constants may live on the CPU
        kw = _on_meta_device(to_meta(fx.node.map_aggregate(kwargs, _unwrap)))
        if kind == "call_method" and target in ("cpu", "cuda") and values:
            return values[0]
        module = self.root.get_submodule(target) if kind == "call_module" else None
        try:
            _check_dtypes(module if module is not None else target, values)
            if kind == "call_function" and _is_grouped_mm(target):
                return _grouped_mm_shape(*values, **kw)
            if kind == "call_function":
                return getattr(target, "_modnorm_leaf_of", target)(*values, **kw)
            if kind == "call_method":
                return getattr(values[0], target)(*values[1:], **kw)
            if kind == "call_module":
                self._computing = True
                try:
                    return _run_on_meta(module, values, kw)
                finally:
                    self._computing = False
        except Exception as exc:  # noqa: BLE001 - an op meta cannot run leaves the value unknown...
            if _cannot_run_on_meta(exc, args, kwargs) or is_compiled(target) or is_compiled(module):
                return None
            raise _inputs_do_not_fit(kind, target, module, values, kw, exc) from exc  # ...one that rejects them
        return None

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if not node.stack_trace:  # as fx records it (proxy.py), from Python's frames
            frames = self._filter_traceback_frames(_stack_summary(sys._getframe(1)))
            if frames:
                node.stack_trace = "".join(frames.format()).strip()
        if kind == "get_attr":  # fx also emits constants straight through create_node
            value = self._fetch(target)
            node.meta["value"] = to_meta(value)
            if self._real is not None:
                self._real.keep(node, value)
        return node

    def _fetch(self, target: str) -> Any:
        computing, self._computing = self._computing, True  # plain attribute access, no proxies
        try:
            obj: Any = self.root
            for atom in target.split("."):
                obj = getattr(obj, atom, None)
            return obj
        finally:
            self._computing = computing


def _shadow(value: Any) -> Any:
    """The meta value standing for a real result: its shape, dtype and strides (a view's too, which `.to("meta")`
    would make contiguous), as meta kernels give them."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_meta:
            return to_meta(value)
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        moved = [_shadow(v) for v in value]
        return type(value)(moved) if not hasattr(value, "_fields") else type(value)(*moved)
    if isinstance(value, dict):
        return {k: _shadow(v) for k, v in value.items()}
    return value


_META_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _NoReal(Exception):
    """An argument has no real value (it was computed on meta): the op runs on meta too."""


# What real values may take while tracing (beyond the weights): past it the rest of the trace runs on meta.
REAL_VALUE_BYTES = 512 * 2**20

# Ops whose result the meta device cannot know (a shape or a Python number read from data) or that act on autograd
# or storage: they stay on meta even when the CPU could run them, so that the graph is the one meta gives.
_META_ONLY = frozenset({
    "item", "tolist", "numpy", "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
    "masked_scatter", "repeat_interleave", "bincount", "histc", "histogram", "equal", "allclose", "is_nonzero",
    "__bool__", "__int__", "__float__", "__index__", "__len__", "__iter__", "requires_grad_", "retain_grad",
    "backward", "register_hook", "data_ptr", "storage", "untyped_storage", "share_memory_", "pin_memory",
    "record_stream", "apply_", "map_", "set_", "resize_", "resize_as_", "as_strided_", "unsqueeze_", "squeeze_",
    "t_", "transpose_", "swapdims_", "swapaxes_", "cpu", "cuda", "to_sparse", "detach_", "setitem",
})
_INPLACE_OPERATORS = frozenset({operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                                operator.ifloordiv, operator.imod, operator.ipow, operator.imatmul, operator.iand,
                                operator.ior, operator.ixor, operator.ilshift, operator.irshift})


class _RealValues:
    """CPU values beside the meta shadows, for a model whose weights and example inputs are real CPU tensors.

    Running an op on meta in torch 2.13 imports torch._dynamo (~1 s: torch._refs wrappers go through
    torch._compile), a third of a small CNN's check; the same op on the CPU costs microseconds to milliseconds on
    the example inputs. So each op whose arguments all have CPU values runs on the CPU and its node's shadow is a
    meta tensor with the result's shape, dtype and strides. Ops meta cannot compute (`_META_ONLY`, boolean masks,
    sizes read from tensors), ops of user code (custom leaves, autograd Functions, compiled functions) and ops
    that fail on the CPU run on meta as before, and their results have no CPU value; so the graph and its shadows
    are the ones meta gives (shapes and dtypes; a CPU kernel may pick other strides than meta's, e.g. sdpa's
    output, and an op with no meta kernel now has a value). Convolutions run on meta (`_on_meta`) with zeros as
    their CPU value: CPU values are only read for the shapes of what follows, never as data."""

    def __init__(self, inputs: list[Any]) -> None:
        self.inputs = inputs
        self.values: dict[fx.Node, Any] = {}
        self.protected: set[int] = set()  # storages of the model's tensors: no op may write into them
        self.bytes = 0
        self._signatures: dict[Any, Any] = {}

    @classmethod
    def of(cls, example_inputs: tuple[Any, ...]) -> _RealValues | None:
        tensors: list[torch.Tensor] = []
        fx.node.map_aggregate(example_inputs, lambda a: tensors.append(a) if isinstance(a, torch.Tensor) else None)
        if not tensors or any(t.device.type != "cpu" or t.layout != torch.strided for t in tensors):
            return None
        return cls([fx.node.map_aggregate(x, lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a)
                    for x in example_inputs])

    def protect(self, root: nn.Module) -> bool:
        """False when a weight is not a real CPU tensor (the trace then runs on meta)."""
        for t in [*root.parameters(), *root.buffers()]:
            if t.device.type != "cpu" or t.layout != torch.strided:
                return False
            self.protected.add(t.untyped_storage().data_ptr())
        return True

    def placeholder(self, node: fx.Node) -> None:
        if self.inputs:
            self._keep(node, self.inputs.pop(0))

    def keep(self, node: fx.Node, value: Any) -> None:
        """A get_attr node's real value (a weight, buffer or constant of the model)."""
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu" or value.layout != torch.strided:
                return
            self.protected.add(value.untyped_storage().data_ptr())
        self.values[node] = value

    def _keep(self, node: fx.Node, value: Any) -> None:
        sizes: list[int] = []
        fx.node.map_aggregate(value, lambda a: sizes.append(a.nbytes) if isinstance(a, torch.Tensor) else None)
        self.bytes += sum(sizes)
        self.values[node] = value

    def _real(self, a: Any) -> Any:
        node = a.node if isinstance(a, fx.Proxy) else a if isinstance(a, fx.Node) else None
        if node is None:
            if isinstance(a, torch.Tensor) and (a.device.type != "cpu" or a.layout != torch.strided):
                raise _NoReal
            if isinstance(a, torch.device) and a.type == "cuda" or isinstance(a, str) and (
                    a == "cuda" or a.startswith("cuda:")):
                return torch.device("cpu") if isinstance(a, torch.device) else "cpu"
            return a
        value = self.values.get(node, _MISSING)
        if value is _MISSING:
            raise _NoReal
        return value

    def run(self, tracer: ShapeTracer, node: fx.Node, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        """The node's meta shadow computed from real values (and its real value kept), or _MISSING: run on meta."""
        name = target if kind == "call_method" else getattr(target, "__name__", "")
        module = tracer.root.get_submodule(target) if kind == "call_module" else None
        inplace = self._inplace(kind, target, name, module, args, kwargs)
        if not self._runs_on_cpu(kind, target, name, module):
            if inplace:  # meta writes into a shadow its real value would not follow: meta from here on
                tracer._real = None
            return _MISSING
        try:
            values = fx.node.map_aggregate(args, self._real)
            kw = fx.node.map_aggregate(kwargs, self._real)
        except _NoReal:
            if inplace:
                tracer._real = None
            return _MISSING
        tensors: list[torch.Tensor] = []
        fx.node.map_aggregate((values, kw), lambda a: tensors.append(a) if isinstance(a, torch.Tensor) else None)
        if any(t.dim() == 0 and not (t.is_floating_point() or t.is_complex()) for t in tensors) or (
                name in ("getitem", "__getitem__", "index", "index_put", "index_put_")
                and any(t.dtype == torch.bool for t in tensors[1:])) or (
                name == "where" and len(tensors) == 1) or (kind == "call_method" and not (
                    values and isinstance(values[0], torch.Tensor))):
            if inplace:
                tracer._real = None
            return _MISSING  # a value read as a size or index, a mask selecting by value: meta's unknown
        if inplace and tensors and tensors[0].untyped_storage().data_ptr() in self.protected:
            tracer._real = None  # would write into the model's weights
            return _MISSING
        state = torch.get_rng_state()
        try:
            _check_dtypes(module if module is not None else target, tuple(values))  # meta explains the refusal
            with torch.no_grad():
                if kind == "call_function":
                    result = target(*values, **kw)
                elif kind == "call_method":
                    result = getattr(values[0], target)(*values[1:], **kw)
                else:
                    tracer._computing = True
                    try:
                        if isinstance(module, _META_CONVOLUTIONS):
                            return self._on_meta(node, module, values, kw)
                        result = module.forward(*values, **kw)
                    finally:
                        tracer._computing = False
        except Exception:  # noqa: BLE001 - meta decides: it may compute what the CPU refuses, or explain it
            if inplace:
                tracer._real = None
            return _MISSING
        finally:
            torch.set_rng_state(state)
        self._keep(node, result)
        if self.bytes > REAL_VALUE_BYTES:
            tracer._real = None
        return _shadow(result)

    def _on_meta(self, node: fx.Node, module: nn.Module, values: Any, kw: Any) -> Any:
        """A convolution's shadow without its FLOPs (the CPU would spend most of the forward pass on it): by the
        output-size formula (_conv_shadow), else from the meta kernel; with zeros as its real value: no op run on
        the CPU here reads data (data-dependent ops stay on meta), so the values downstream need not be the
        model's."""
        shadow = _conv_shadow(module, values, kw)
        if shadow is None:
            shadow = _run_on_meta(module, to_meta(values), to_meta(kw))
        if not isinstance(shadow, torch.Tensor):
            raise TypeError("a convolution that does not return one tensor")
        # (not zeros_like: on a meta tensor it goes through torch._refs, which imports symbolic_shapes)
        self._keep(node, torch.empty_strided(shadow.size(), shadow.stride(), dtype=shadow.dtype).zero_())
        return shadow

    def _runs_on_cpu(self, kind: str, target: Any, name: str, module: nn.Module | None) -> bool:
        if name in _META_ONLY or target in (operator.setitem,):
            return False
        if kind == "call_module":
            return (type(module).__module__.startswith("torch.nn.modules.") and not is_compiled(module)
                    and not isinstance(module, nn.MultiheadAttention))
        if kind == "call_function":
            owner = getattr(target, "__module__", None) or ""
            return (target is getattr or owner in ("_operator", "operator") or owner.startswith("torch")
                    and not owner.startswith(("torch._dynamo", "torch._higher_order_ops"))) and not (
                hasattr(target, "_modnorm_leaf_of") or is_compiled(target) or _is_grouped_mm(target))
        return True

    def _inplace(self, kind: str, target: Any, name: str, module: nn.Module | None, args: tuple,
                 kwargs: dict) -> bool:
        """Writes into its first argument: `x.add_(y)`, `x += y`, `F.relu(x, inplace=True)`, `ReLU(inplace=True)`."""
        if kind == "call_module":
            return bool(getattr(module, "inplace", False))
        if target in _INPLACE_OPERATORS or "out" in kwargs:
            return True
        if name.endswith("_") and not name.startswith("__"):
            return True
        if kind == "call_function" and callable(target):
            signature = self._signatures.get(target, _MISSING)
            if signature is _MISSING:
                try:
                    signature = inspect.signature(target)
                except (TypeError, ValueError):
                    signature = None
                if signature is not None and "inplace" not in signature.parameters:
                    signature = None
                self._signatures[target] = signature
            if signature is not None:
                try:
                    return bool(signature.bind(*args, **kwargs).arguments.get("inplace", False))
                except TypeError:
                    return True
        return False


def _is_cache(value: Any) -> bool:
    """A key/value cache object (by class name along the MRO, so transformers need not be imported)."""
    return any(k.__name__ in ("Cache", "EncoderDecoderCache") and "cache" in k.__module__
               for k in type(value).__mro__)


# Meta kernels of these skip the dtype check their CPU kernels make ("mat1 and mat2 must have the same dtype").
_MATMUL_FUNCTIONS = (torch.nn.functional.linear, torch.matmul, torch.mm, torch.bmm, torch.nn.functional.conv1d,
                     torch.nn.functional.conv2d, torch.nn.functional.conv3d, operator.matmul)


def _check_dtypes(op: Any, values: tuple) -> None:
    """Integer inputs to a float matmul, which the meta device computes (as integers) instead of refusing."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if isinstance(op, nn.Module) and type(op).__module__.startswith("torch.nn."):  # a user's leaf may take ids
        weight = op._parameters.get("weight")  # not getattr: fx patches Module.__getattr__ to return a proxy
        if (isinstance(weight, torch.Tensor) and weight.is_floating_point() and tensors
                and not isinstance(op, (nn.Embedding, nn.EmbeddingBag)) and not tensors[0].is_floating_point()
                and not tensors[0].is_complex()):
            raise TypeError(f"expected a floating-point input like its weight ({weight.dtype}), got "
                            f"{tensors[0].dtype}")
        if isinstance(op, (nn.Embedding, nn.EmbeddingBag)) and tensors and tensors[0].is_floating_point():
            raise TypeError(f"expected integer token ids, got {tensors[0].dtype}")
    elif op is torch.nn.functional.embedding and tensors and tensors[0].is_floating_point():
        raise TypeError(f"expected integer token ids, got {tensors[0].dtype}")
    elif any(op is f for f in _MATMUL_FUNCTIONS) and len({t.is_floating_point() for t in tensors}) > 1:
        raise TypeError(f"expected inputs of one dtype, got {', '.join(str(t.dtype) for t in tensors)}")


def _is_grouped_mm(target: Any) -> bool:
    """torch's grouped matmul (mixture-of-experts experts, transformers' integrations/moe.py) in any spelling."""
    grouped = [getattr(torch, "_grouped_mm", None), getattr(torch.nn.functional, "grouped_mm", None)]
    return any(target is g for g in grouped if g is not None) or "grouped_mm" in str(getattr(target, "__name__", ""))


def _grouped_mm_shape(mat_a: torch.Tensor, mat_b: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The value of a grouped matmul of (S, in) rows by (E, in, out) experts: (S, out), in the input's dtype.
    torch's meta kernel accepts bf16 only (the CPU kernel takes float32), so the shape is computed here."""
    if mat_a.dim() != 2 or mat_b.dim() != 3 or mat_a.shape[-1] != mat_b.shape[-2]:
        raise RuntimeError(f"grouped_mm expects (S, in) and (E, in, out), got {tuple(mat_a.shape)} and "
                           f"{tuple(mat_b.shape)}")
    return torch.empty(mat_a.shape[0], mat_b.shape[-1], dtype=mat_a.dtype, device="meta")


def _cannot_run_on_meta(exc: BaseException, args: Any, kwargs: Any) -> bool:
    """The op failed for want of data (no meta kernel, a value only data has, an input already unknown), not
    because its inputs are wrong: the value stays unknown and tracing goes on, as before."""
    unknown: list[bool] = []
    fx.node.map_aggregate((args, kwargs), lambda a: unknown.append(
        isinstance(a, (fx.Proxy, fx.Node)) and _unwrap(a) is None))
    return (isinstance(exc, (NotImplementedError, DataDependentError)) or "meta" in str(exc).lower()
            or "data-dependent" in str(exc).lower() or any(unknown))


def _inputs_do_not_fit(kind: str, target: Any, module: Any, values: tuple, kwargs: dict,
                       exc: BaseException) -> InputsDoNotFit:
    """The op that rejected the example inputs, its input shapes and dtypes, and the user's line calling it."""
    what = (f"module `{target}` ({type(module).__name__})" if module is not None
            else f"`{getattr(target, '__name__', target)}`" if kind == "call_function" else f"method `.{target}`")
    shapes = ", ".join(f"{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for v in values
                       if isinstance(v, torch.Tensor)) or "no tensors"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return InputsDoNotFit(f"the example inputs do not fit the model: {what} rejects inputs of shape {shapes} "
                          f"({type(exc).__name__}: {first})",
                          "pass inputs the model accepts: fix example_inputs() in the model file, or --input-shape "
                          "and --input-dtype (long for token ids)")  # trace_fx adds the user's line


def _on_meta_device(value: Any) -> Any:
    """Device arguments (`.to(device=...)`, `torch.zeros(..., device=...)`) redirected to meta for the shadow value."""
    if isinstance(value, torch.device):
        return torch.device("meta")
    if isinstance(value, str) and value in ("cpu", "cuda") or isinstance(value, str) and value.startswith("cuda:"):
        return "meta"
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_on_meta_device(v) for v in value)
    if isinstance(value, dict):
        return {k: _on_meta_device(v) for k, v in value.items()}
    return value


def _has_proxy(value: Any) -> bool:
    found = []
    fx.node.map_aggregate(value, lambda a: found.append(a) if isinstance(a, fx.Proxy) else None)
    return bool(found)


def is_compiled(obj: Any) -> bool:
    """A torch.compile'd function or module (traced as a leaf and reported as not modelled)."""
    return callable(obj) and (hasattr(obj, "_torchdynamo_orig_callable") or (
        isinstance(obj, nn.Module) and type(obj).__name__ == "OptimizedModule" and hasattr(obj, "_orig_mod")))


@functools.lru_cache(maxsize=None)
def function_leaf(function: Any) -> Any:
    """The call_function target standing for a custom autograd.Function (one per class, so the registry and
    the user's @modnorm.register(MyFunction, ...) can key on the class): calls `function.apply`."""

    def apply(*args: Any, **kwargs: Any) -> Any:
        return function.apply(*args, **kwargs)

    apply.__name__ = apply.__qualname__ = f"{function.__name__}.apply"
    apply.__module__ = function.__module__
    apply._modnorm_leaf_of = function.apply  # what computes its value
    apply._modnorm_key = function  # what the registry looks up
    return apply


class autograd_functions_as_leaves:
    """While active, `MyFunction.apply(...)` calls `on_call(MyFunction, args, kwargs)` first; a non-None result
    replaces the call (a graph node), else the Function runs as usual. Its forward is not what the backward
    differentiates, so the calculus must not look inside (semantics: unknown unless the user registers it)."""

    def __init__(self, on_call: Any) -> None:
        self.on_call = on_call

    def __enter__(self) -> None:
        original = self.original = torch.autograd.Function.__dict__["apply"]
        on_call = self.on_call

        def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
            replaced = on_call(cls, args, kwargs)
            return replaced if replaced is not None else original.__func__(cls, *args, **kwargs)

        torch.autograd.Function.apply = classmethod(apply)

    def __exit__(self, *exc: Any) -> None:
        torch.autograd.Function.apply = self.original


def _unwrap(a: Any) -> Any:
    if isinstance(a, fx.Proxy):
        return a.node.meta.get("value")
    if isinstance(a, fx.Node):
        return a.meta.get("value")
    return a


def _conv_shadow(conv: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The meta tensor conv(x) returns, by the output-size formula, or None where the meta kernel must decide. The
    kernel's first `torch._check` imports torch.fx.experimental.symbolic_shapes: 0.66 s of a 2.8 s ConvNeXt check
    (profiled). Only the plain case: a batched input and a weight both in the default layout (a channels-last
    operand makes a channels-last output), matching dtypes and channels; the rest (errors included) goes to meta.
    tests/test_perf_tracing.py compares the two on a grid of convolutions."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x, weight, bias = args[0], conv.weight, conv.bias
    spatial = weight.dim() - 2
    if (x.dim() != spatial + 2 or x.shape[1] != conv.in_channels or x.dtype != weight.dtype
            or bias is not None and bias.dtype != x.dtype or not all(map(_plainly_contiguous, (x, weight)))):
        return None
    if conv.padding == "valid":
        padding = (0,) * spatial
    elif conv.padding == "same":
        return x.new_empty((x.shape[0], conv.out_channels, *x.shape[2:]), device="meta")
    else:
        padding = conv.padding
    sizes = tuple((length + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                  for length, pad, dilation, kernel, stride
                  in zip(x.shape[2:], padding, conv.dilation, conv.kernel_size, conv.stride))
    if min(sizes, default=1) < 1 or min(x.shape[2:], default=1) < 1:
        return None
    return x.new_empty((x.shape[0], conv.out_channels, *sizes), device="meta")


def _plainly_contiguous(t: torch.Tensor) -> bool:
    """Strides exactly the default layout's (the meta kernel reads the strides, size-1 dimensions included, to
    choose the output's layout: these give the default layout, checked in tests/test_perf_tracing.py)."""
    expected, stride = [], 1
    for size in reversed(t.shape):
        expected.append(stride)
        stride *= max(size, 1)
    return tuple(reversed(expected)) == t.stride()


def _run_on_meta(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    if is_compiled(module):
        module = module._orig_mod
    tensors = dict(module.named_parameters(recurse=True))
    tensors.update(module.named_buffers(recurse=True))
    # Call forward directly: module.__call__ is patched by the tracer while it traces.
    if all(t.is_meta for t in tensors.values()):
        return module.forward(*args, **kwargs)
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(module, to_meta(tensors)):
        return module.forward(*args, **kwargs)


def _stack_summary(frame: Any) -> traceback.StackSummary:
    """The stack from `frame` outwards, outermost first, as torch's CapturedTraceback gives it to fx (file, line and
    function of each frame; the source line read when formatted)."""
    frames = []
    while frame is not None:
        frames.append(traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    frames.reverse()
    return traceback.StackSummary.from_list(frames)


@functools.lru_cache(maxsize=1)
def _uninteresting_files() -> frozenset[str]:
    """torch.fx.experimental.symbolic_shapes.uninteresting_files(), from torch's directory instead of imports (the
    torch._dynamo modules it names are not loaded unless something else loads them)."""
    base = os.path.dirname(torch.__file__)
    names = ["fx/experimental/symbolic_shapes.py", "export/_trace.py", "fx/experimental/recording.py",
             "fx/experimental/sym_node.py", "fx/interpreter.py", "fx/_symbolic_trace.py", "__init__.py",
             "_compile.py", "_dynamo/eval_frame.py", "_inductor/sizevars.py", "_library/custom_ops.py",
             "_library/fake_impl.py", "_subclasses/meta_utils.py", "_subclasses/fake_tensor.py",
             "_logging/_internal.py", "_logging/structured.py", "_dynamo/external_utils.py",
             "_dynamo/polyfills/__init__.py"]
    files = {os.path.join(base, *n.split("/")) for n in names}
    files.update(glob.glob(os.path.join(base, "_higher_order_ops", "*.py")))
    files.update(f for f in glob.glob(os.path.join(base, "_dynamo", "polyfills", "*.py"))
                 if os.path.basename(f) != "loader.py")
    return frozenset(files | {"<string>"})


@dataclass
class TracedModel:
    """The traced graph with its root module and how it was obtained."""

    graph_module: fx.GraphModule
    root: nn.Module
    tracer: str
    attempts: list[RouteAttempt] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # modules the module-only route could not place

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph


def _concrete_args(model: nn.Module, n_inputs: int) -> dict[str, Any] | None:
    """Bind parameters beyond the example inputs to their defaults (e.g. `targets=None`)."""
    signature = inspect.signature(model.forward)
    params = list(signature.parameters.values())
    concrete = {}
    for param in params[n_inputs:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is param.empty:
            raise ModnormError(
                f"`{type(model).__name__}.forward` takes a required argument `{param.name}` that the example "
                f"inputs do not provide",
                "return one tensor per required argument from example_inputs(), or give defaults")
        concrete[param.name] = param.default
    return concrete or None


def _route_failure(exc: BaseException, what: str, user_file: str | None, remedy: str) -> ModnormError:
    """One paragraph for a route that raised: the user's construct, file and line, the error's first line."""
    frame = frame_of_exception(exc, user_file)
    file, line, source = frame if frame else (user_file, None, "")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    construct = f'"{source}"' if source else "the model"
    return ModnormError(f"{what} {construct}: {type(exc).__name__}: {first[:300]}", remedy, file, line)


@contextlib.contextmanager
def _wrapped_functions_read_through() -> Iterator[None]:
    """Functions marked `torch.fx.wrap` (torchvision's `shifted_window_attention` and `stochastic_depth`) would be
    one opaque call: their Linears (qkv and proj weights passed as arguments) would be missing and the call an
    unknown op. Unless modnorm's registry knows the function, it is read through; if that fails, fx's way is
    taken (trace_fx retries with the wraps in place)."""
    from torch.fx import _symbolic_trace as symbolic

    table = symbolic._wrapped_fns_to_patch
    saved = dict(table)
    for key, frame in saved.items():
        function = frame.get(key[1])
        if function is not None and lookup(function) is None:
            del table[key]
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


@contextlib.contextmanager
def _static_address_marks_ignored() -> Iterator[None]:
    """transformers' caches tag their state tensors for torch.compile (`torch._dynamo.mark_static_address`), which
    rejects a proxy; the tag means nothing to the analysis, so it is skipped for proxies while fx traces."""
    if "torch._dynamo" not in sys.modules:  # importing it costs ~1 s; a transformers build has imported it
        yield
        return
    import torch._dynamo as dynamo

    original = dynamo.mark_static_address

    def mark(tensor: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            original(tensor, *args, **kwargs)

    dynamo.mark_static_address = mark
    try:
        yield
    finally:
        dynamo.mark_static_address = original


def _traced_graph(model: nn.Module, example_inputs: tuple[Any, ...],
                  leaf_types: tuple[type, ...]) -> tuple[ShapeTracer, fx.Graph]:
    tracer = ShapeTracer(example_inputs, leaf_types)
    try:
        with _wrapped_functions_read_through():
            return tracer, tracer.trace(model, concrete_args=_concrete_args(model, len(example_inputs)))
    except Exception:  # noqa: BLE001 - a wrapped function that does not trace: keep it whole, as fx does
        tracer = ShapeTracer(example_inputs, leaf_types)
        return tracer, tracer.trace(model, concrete_args=_concrete_args(model, len(example_inputs)))


def _raised_in(exc: BaseException, function: str) -> bool:
    """Whether `function` is on the traceback of `exc` or of an exception it was raised from."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(frame.name == function for frame in traceback.extract_tb(exc.__traceback__)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def trace_fx(model: nn.Module, example_inputs: tuple[Any, ...], user_file: str | None = None,
             leaf_types: tuple[type, ...] = ()) -> TracedModel:
    """The shape-aware fx tracer (first route)."""
    try:
        try:
            with _static_address_marks_ignored():
                tracer, graph = _traced_graph(model, example_inputs, leaf_types)
        except Exception as exc:  # noqa: BLE001 - torch._dynamo imported by the model itself, which then marked a
            if not _raised_in(exc, "mark_static_address"):  # proxy as a static address: skip the marks, as above
                raise
            with _static_address_marks_ignored():
                tracer, graph = _traced_graph(model, example_inputs, leaf_types)
    except InputsDoNotFit as exc:  # name the user's line that called the op, else the model file
        frame = frame_of_exception(exc, user_file)
        raise InputsDoNotFit(exc.problem, exc.remedy, frame[0] if frame else user_file,
                             frame[1] if frame else None) from exc.__cause__
    except ModnormError:
        raise
    except Exception as exc:  # noqa: BLE001 - every trace failure becomes a user-facing explanation
        raise _explain_trace_failure(exc, model, user_file) from exc
    name = type(model).__name__
    graph_module = fx.GraphModule(tracer.root, graph, name)
    for node, original in zip(graph_module.graph.nodes, graph.nodes):
        node.meta = original.meta
    fold_real_constants(graph_module)  # what depends only on real buffers (rotary tables of a CPU model)
    inputs = [n.name for n in graph_module.graph.nodes if n.op == "placeholder"]
    return TracedModel(graph_module, model, "fx_values", [RouteAttempt("fx_values", True)], inputs)


def _explain_trace_failure(exc: BaseException, model: nn.Module, user_file: str | None) -> ModnormError:
    frame = frame_of_exception(exc, user_file)
    file, line, source = frame if frame else (user_file, None, "")
    construct = f'"{source}"' if source else "the model's forward"
    if isinstance(exc, DataDependentError):
        what = ("data-dependent control flow; the branch taken depends on tensor values" if "control flow" in
                str(exc) else "a tensor's value used as a Python number, e.g. an index or a size computed from data")
        problem = (f"torch.fx cannot trace {construct}: {exc} ({what}, which a static analysis on the meta device "
                   f"does not have)")
        remedy = ("Make the branch depend on shapes or on module attributes, or mark the enclosing module as a "
                  "leaf with --leaf CLASSNAME and register its semantics")
    else:
        problem = f"torch.fx cannot trace {construct}: {type(exc).__name__}: {exc}"
        remedy = ("Mark the enclosing module as a leaf with --leaf CLASSNAME, or rewrite the construct with "
                  "torch operations")
    return ModnormError(problem, remedy, file, line)
