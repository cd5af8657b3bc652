"""The last route: when no graph can be had, analyse the module hierarchy alone.

Each submodule that holds an atom (torch.nn's Linear, Conv, Embedding and normalization gains, or a custom module
with a `weight`) is traced alone by the shape-aware fx route, on a probe input whose shape its
parameters give, so its norm at init and its own sensitivity are real. Everything that needs
the graph is withheld: downstream sensitivities, targets, residual streams, the network's sensitivity and
sharpness. The analysis says so in `network.uncertified_reasons`, and modules that are neither atoms nor
containers and could not be traced alone are listed as unknown.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .result import Analysis, RouteAttempt
from .tracing import TracedModel, trace_fx

__all__ = ["trace_modules", "withhold_graph_quantities"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _probe_inputs(module: nn.Module) -> list[torch.Tensor]:
    """Inputs of the shapes the module's parameters fix (batch 1; spatial = kernel, enough for its norm)."""
    meta = {"device": "meta"}
    if isinstance(module, nn.Embedding):
        return [torch.zeros(1, dtype=torch.long, **meta)]
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return [torch.empty(1, *module.normalized_shape, **meta)] if module.elementwise_affine else []
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        spatial = {nn.BatchNorm1d: 0, nn.BatchNorm3d: 3}.get(type(module), 2)
        return [torch.empty(1, module.num_features, *[1] * spatial, **meta)] if module.affine else []
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        return []
    if weight.dim() == 1:  # a gain (a custom RMSNorm)
        return [torch.empty(1, weight.shape[0], **meta)]
    fan_in = weight.shape[1] * getattr(module, "groups", 1)
    kernel = tuple(weight.shape[2:])
    # A custom atom declares no input shape: try features last, then a lookup of token ids.
    return [torch.empty(1, fan_in, *kernel, **meta), torch.zeros(1, dtype=torch.long, **meta)]


def _identifier(text: str) -> str:
    """A Python identifier for fx's generated code: `nn.Sequential` children are named "0", "1", ..."""
    cleaned = re.sub(r"\W", "_", text)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"m_{cleaned}"


def _splice(graph: fx.Graph, path: str, sub: fx.Graph) -> Any:
    """Copy a submodule's graph into `graph`, its attribute and module targets prefixed with the module path."""
    values: dict[fx.Node, Any] = {}
    for node in sub.nodes:
        if node.op == "placeholder":
            values[node] = graph.placeholder(_identifier(f"{path}_{node.name}"))
            values[node].meta = dict(node.meta)
    before = set(graph.nodes)
    output = graph.graph_copy(sub, values)
    for node in graph.nodes:
        if node not in before and node.op in ("get_attr", "call_module"):
            node.target = f"{path}.{node.target}"
    return output


def trace_modules(model: nn.Module, why: str, attempts: list[RouteAttempt]) -> Any:
    """Each atom-bearing submodule traced alone on a probe input (the shape-aware fx route), all gathered."""
    from .errors import ModnormError

    graph = fx.Graph()
    outputs: list[Any] = []
    skipped: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if not name.isprintable() or '"' in name or "\\" in name:  # fx would write it into generated code
                skipped.append(f"{path!r} ({type(child).__name__}; its name cannot be written in generated code)")
                continue
            for probe in [] if isinstance(child, _CONTAINERS) else _probe_inputs(child):
                try:
                    sub = trace_fx(child, (probe,)).graph_module.graph
                except (ModnormError, RuntimeError, TypeError, ValueError, IndexError):
                    continue
                outputs.append(_splice(graph, path, sub))
                break
            else:
                if any(True for _ in child.children()):
                    visit(f"{path}.", child)
                elif any(True for _ in child.parameters(recurse=False)):
                    skipped.append(f"{path} ({type(child).__name__})")

    visit("", model)
    graph.output(tuple(outputs))
    graph_module = fx.GraphModule(model, graph, type(model).__name__)
    return TracedModel(graph_module, model, "modules", [*attempts, RouteAttempt("modules", True, why)],
                       [n.name for n in graph.nodes if n.op == "placeholder"], skipped)


def withhold_graph_quantities(analysis: Analysis, skipped: list[str]) -> Analysis:
    """Blank what the disconnected graph cannot know and say why."""
    reason = ("module hierarchy only (no route could trace the model): downstream sensitivities, targets, "
              "residual streams, network sensitivity and sharpness need the graph and are not computed")
    layers = tuple(replace(layer, role="unknown", downstream_sensitivity=math.inf,
                           design_downstream_sensitivity=math.nan, target_norm=math.nan,
                           log10_downstream_sensitivity=math.inf, log10_design_downstream_sensitivity=math.nan,
                           file=layer.file or (layer.defined_at or (None, None))[0],
                           line=layer.line or (layer.defined_at or (None, None))[1]) for layer in analysis.layers)
    # The atoms themselves are analysed soundly; what is missing is the graph, which MN904 reports once.
    ops = tuple(replace(op, downstream_sensitivity=math.inf) for op in analysis.ops if op.kind == "atom")
    unknown = tuple(f"{s}: between the atoms; not modelled" for s in skipped)
    network = replace(analysis.network, sensitivity=math.inf, design_sensitivity=math.inf, certified=False,
                      log10_sensitivity=math.inf, log10_design_sensitivity=math.inf,
                      uncertified_reasons=(reason,), unknown_ops=unknown, input_sensitivities={},
                      modular_norm_at_init=math.nan, sharpness=None, loss=None, block_sharpness=(),
                      mass_groups=())
    return replace(analysis, layers=layers, ops=ops, merges=(), streams=(), network=network)
