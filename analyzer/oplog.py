"""The third tracing route: run the model once and log its torch-level calls into an fx graph.

When neither the shape-aware fx tracer nor `torch.export` gets through a model, modnorm runs the model's forward
under a `TorchFunctionMode` and records every torch function, tensor method and operator applied to a tensor
that descends from the inputs, the parameters or an earlier recorded op. Torch's own modules (nn.Linear,
nn.LayerNorm, ...) are recorded whole as `call_module` nodes, as the fx route records them, through global module
hooks; the hooks also keep the module stack, so every node knows its module path (`nn_module_stack`) and its
user source line (`stack_trace`). The graph reuses the fx route's spellings (`operator.add`, call_method
"view", `F.linear`), so the registry and the pattern matchers read it unchanged.

What this route gives up: the graph is the one path the example inputs took. On the CPU (small models, real
weights) that gets through data-dependent control flow (`if x.norm() > c:`), but the analysis then holds for the
branch those inputs took, which the route's attempt note says. On the meta device a data-dependent branch still
fails (a meta tensor has no value), and the module-only route takes over.
"""

from __future__ import annotations

import operator
import traceback
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from .result import RouteAttempt
from .tracing import ShapeTracer, TracedModel, autograd_functions_as_leaves, function_leaf, to_meta

__all__ = ["trace_oplog"]

# Tensor dunders as fx records them (`a + b` is operator.add); reflected ones swap their operands.
_OPERATORS = {
    "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul, "__truediv__": operator.truediv,
    "__matmul__": operator.matmul, "__pow__": operator.pow, "__neg__": operator.neg, "__getitem__": operator.getitem,
    "__floordiv__": operator.floordiv, "__mod__": operator.mod, "__and__": operator.and_, "__or__": operator.or_,
    "__lt__": operator.lt, "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
    "__eq__": operator.eq, "__ne__": operator.ne, "__invert__": operator.invert, "__abs__": operator.abs,
}
_REFLECTED = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
              "__rtruediv__": operator.truediv, "__rmatmul__": operator.matmul, "__rpow__": operator.pow}
_IGNORED = {"__get__", "__set__", "__repr__", "__format__", "__bool__", "__len__", "__iter__", "__hash__",
            "__setitem__", "size", "dim", "numel", "item", "tolist", "data_ptr", "is_floating_point",
            "requires_grad_", "__index__", "__int__", "__float__", "stride", "storage_offset", "element_size"}


class _Builder:
    """Grows the fx graph while the model runs: tensors are matched to nodes by identity."""

    def __init__(self, model: nn.Module, leaf_types: tuple[type, ...], user_file: str | None) -> None:
        self.model, self.user_file = model, user_file
        self.graph = fx.Graph()
        self.nodes: dict[int, fx.Node] = {}
        self.alive: list[Any] = []  # keep recorded tensors alive so their ids stay unique
        self.names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        self.attributes = {id(t): name for name, t in [*model.named_parameters(remove_duplicate=False),
                                                       *model.named_buffers(remove_duplicate=False)]}
        self.buffers = {id(t) for _, t in model.named_buffers(remove_duplicate=False)}
        self.constants: dict[str, torch.Tensor] = {}
        self.stack: list[nn.Module] = []
        self.leaf_depth = 0  # > 0 while a recorded leaf module runs: its inner calls are not logged
        self.is_leaf = ShapeTracer((), leaf_types).is_leaf_module
        self.real: set[fx.Node] = set()  # nodes whose values do not depend on inputs or parameters

    # -------------------------------------------------------------- graph building
    def placeholder(self, name: str, value: torch.Tensor) -> None:
        node = self.graph.placeholder(name)
        node.meta["value"] = to_meta(value)
        self._bind(value, node)

    def _bind(self, value: Any, node: fx.Node) -> None:
        if isinstance(value, torch.Tensor):
            self.nodes[id(value)] = node
            self.alive.append(value)

    def _arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            node = self.nodes.get(id(value))
            if node is not None:
                return node
            name = self.attributes.get(id(value))
            if name is None:  # a tensor made outside the log (a plain attribute): a constant of the graph
                name = f"_modnorm_constant_{len(self.constants)}"
                self.constants[name] = value.detach()
            node = self.graph.get_attr(name)
            node.meta["value"] = to_meta(value)
            if not value.is_meta and (name.startswith("_modnorm_constant_") or id(value) in self.buffers):
                node.meta["value"] = value.detach()
                self.real.add(node)
            self._bind(value, node)
            return node
        if isinstance(value, (list, tuple)):
            mapped = [self._arg(v) for v in value]
            return type(value)(mapped) if not hasattr(value, "_fields") else type(value)(*mapped)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format, torch.Size, int,
                              float, bool, str, slice, type(None), type(Ellipsis), complex)):
            return value
        return value

    def record(self, kind: str, target: Any, args: tuple, kwargs: dict, output: Any) -> None:
        mapped_args, mapped_kwargs = self._arg(args), self._arg(kwargs)
        node = self.graph.create_node(kind, target, mapped_args, mapped_kwargs)
        node.meta["nn_module_stack"] = {self.names.get(id(m), ""): (self.names.get(id(m), ""), type(m))
                                        for m in self.stack if self.names.get(id(m))}
        node.stack_trace = "".join(traceback.format_list(traceback.extract_stack()[:-2]))
        # Values computed from constants alone (arange positions, rotary tables) keep their real values, so the
        # registry can read them as it reads folded constants on the export route.
        constant = (kind != "call_module" and isinstance(output, torch.Tensor) and not output.is_meta
                    and all(n in self.real for n in node.all_input_nodes))
        node.meta["value"] = output.detach() if constant else to_meta(output)
        if constant:
            self.real.add(node)
        self._bind(output, node)
        if isinstance(output, (tuple, list)):  # split/chunk results are read with getitem, as fx records them
            for i, part in enumerate(output):
                if isinstance(part, torch.Tensor):
                    item = self.graph.create_node("call_function", operator.getitem, (node, i))
                    item.meta["value"] = to_meta(part)
                    item.meta["nn_module_stack"] = node.meta["nn_module_stack"]
                    item.stack_trace = node.stack_trace
                    self._bind(part, item)

    def known(self, value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return id(value) in self.nodes or id(value) in self.attributes
        if isinstance(value, (list, tuple)):
            return any(self.known(v) for v in value)
        if isinstance(value, dict):
            return any(self.known(v) for v in value.values())
        return False

    def finish(self, output: Any) -> fx.GraphModule:
        self.graph.output(self._arg(output))
        root = self.model
        for name, tensor in self.constants.items():
            root.register_buffer(name, tensor, persistent=False)
        graph_module = fx.GraphModule(root, self.graph, type(self.model).__name__)
        graph_module.graph.eliminate_dead_code()  # e.g. the reduction an `if` looked at: it does not reach the output
        for name in self.constants:  # the caller's model stays as it was
            delattr(root, name)
        return graph_module


class _Recorder(TorchFunctionMode):
    def __init__(self, builder: _Builder) -> None:
        super().__init__()
        self.builder = builder

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        builder = self.builder
        name = getattr(func, "__name__", "")
        if builder.leaf_depth or name in _IGNORED or not (builder.known(args) or builder.known(kwargs) or
                                                          _creates_tensor(func, output)):
            return output
        if not isinstance(output, (torch.Tensor, tuple, list)) or (
                isinstance(output, (tuple, list)) and not any(isinstance(o, torch.Tensor) for o in output)):
            return output  # sizes, dtypes and Python numbers are concrete: the graph is specialised to them
        if name in _OPERATORS:
            builder.record("call_function", _OPERATORS[name], args, kwargs, output)
        elif name in _REFLECTED:
            builder.record("call_function", _REFLECTED[name], (args[1], args[0], *args[2:]), kwargs, output)
        elif _is_method(func):
            builder.record("call_method", name, args, kwargs, output)
        else:
            builder.record("call_function", func, args, kwargs, output)
        return output


def _is_method(func: Any) -> bool:
    return getattr(func, "__objclass__", None) is torch._C.TensorBase or getattr(
        func, "__qualname__", "").startswith(("Tensor.", "TensorBase."))


def _creates_tensor(func: Any, output: Any) -> bool:
    """Factories (torch.arange, torch.ones, ...) make constants that later ops combine with the data."""
    return isinstance(output, torch.Tensor) and not _is_method(func)


def trace_oplog(model: nn.Module, example_inputs: tuple[Any, ...], user_file: str | None = None,
                leaf_types: tuple[type, ...] = (), attempts: list[RouteAttempt] | None = None) -> Any:
    """Run `model` on its example inputs (on the device its weights live on) and return the logged graph as a
    TracedModel with tracer "oplog"."""


    builder = _Builder(model, leaf_types, user_file)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example_inputs)
    for i, value in enumerate(inputs):
        builder.placeholder(f"input_{i}", value)

    def before(module: nn.Module, args: tuple) -> None:
        if builder.leaf_depth or (module is not model and builder.is_leaf(module, builder.names.get(id(module), ""))):
            builder.leaf_depth += 1
        builder.stack.append(module)

    def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        builder.stack.pop()
        if builder.leaf_depth:
            builder.leaf_depth -= 1
            if not builder.leaf_depth:
                builder.stack.append(module)  # the node belongs to the leaf's own path
                builder.record("call_module", builder.names.get(id(module), ""), args, kwargs, output)
                builder.stack.pop()

    def function_call(function: type, args: tuple, kwargs: dict) -> Any:
        if builder.leaf_depth or not (builder.known(args) or builder.known(kwargs)):
            return None
        builder.leaf_depth += 1  # the Function's own forward is not what its backward differentiates
        try:
            output = function.apply(*args, **kwargs)
        finally:
            builder.leaf_depth -= 1
        builder.record("call_function", function_leaf(function), args, kwargs, output)
        return output

    hooks = [nn.modules.module.register_module_forward_pre_hook(before),
             nn.modules.module.register_module_forward_hook(after, with_kwargs=True)]
    try:
        with torch.no_grad(), autograd_functions_as_leaves(function_call), _Recorder(builder):
            output = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    graph_module = builder.finish(output)
    names = [n.name for n in graph_module.graph.nodes if n.op == "placeholder"]
    note = RouteAttempt("oplog", True, "on the CPU: the graph is the path these example inputs took"
                        if device.type != "meta" else "")
    return TracedModel(graph_module, model, "oplog", [*(attempts or []), note], names)
