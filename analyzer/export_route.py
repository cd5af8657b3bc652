"""The export route: torch.export.export(strict=False) when the fx tracer cannot read the model (routes.py tries
it second). Its aten-level graph keeps module paths and source lines; the registry reads aten ops via aliases."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .folding import fold_real_constants
from .result import RouteAttempt
from .tracing import TracedModel, _route_failure, to_meta

__all__ = ["trace_export"]


def trace_export(model: nn.Module, example_inputs: tuple[Any, ...], user_file: str | None = None,
                 attempts: list[RouteAttempt] | None = None) -> TracedModel:
    """The slower fallback: torch.export.export(strict=False) gives an aten-level graph whose nodes keep their
    module path (nn_module_stack) and source line (stack_trace); the registry reads aten ops via aliases."""
    import contextlib
    import io
    import logging

    disabled = logging.root.manager.disable  # the caller's level, restored below
    try:  # export logs graph dumps on failure: the user gets one paragraph instead
        logging.disable(logging.CRITICAL)
        with contextlib.redirect_stderr(io.StringIO()):
            on_meta = any(p.is_meta for p in model.parameters())
            inputs = tuple(to_meta(example_inputs)) if on_meta else tuple(example_inputs)
            exported = torch.export.export(model, inputs, strict=False)
    except Exception as exc:  # noqa: BLE001 - explained to the user
        raise _route_failure(exc, "torch.export cannot trace", user_file,
                             "rewrite the construct with torch operations or mark its module as a leaf") from exc
    finally:
        logging.disable(disabled)
    graph_module = exported.module()
    for node in list(graph_module.graph.nodes):  # export's input-guard call carries no data
        if node.op == "call_module" and str(node.target).startswith("_guards") and not node.users:
            graph_module.graph.erase_node(node)
    for node in graph_module.graph.nodes:
        if "val" in node.meta:
            node.meta["value"] = _as_meta(node.meta["val"])
    fold_real_constants(graph_module)
    inputs = [n.name for n in graph_module.graph.nodes if n.op == "placeholder"]
    return TracedModel(graph_module, model, "export", [*(attempts or []), RouteAttempt("export", True)], inputs)


def _as_meta(value: Any) -> Any:
    """FakeTensors and symbolic sizes of an export graph as plain meta tensors and ints."""
    if isinstance(value, torch.Tensor):
        return torch.empty(tuple(int(d) for d in value.shape), dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_as_meta(v) for v in value)
    if isinstance(value, torch.SymInt):
        return int(value)
    return value
