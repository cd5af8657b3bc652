"""The modular-norm calculus on an fx graph: a forward pass of semantics and RMS bounds, then a backward pass
of downstream sensitivities, masses, targets and residual structure (docs/theory/dag.md#path-sum).

Forward (topological order): every node gets its semantics from the registry (or from a recognised pattern),
the Lipschitz constant w.r.t. each data input, and upper/lower bounds on its output RMS. Backward: for every
tensor v, S_down(v) = Σ_{consumers c} S_down(c) · L_c(v) — the sum over paths of products of sensitivities,
which equals Modula's tree recursion for trees. Atoms then get masses (by role or uniform), targets
t_i = (m_i / M) / S_down(i) and their term in the modular norm ||w||_M = max_i ||w_i|| / t_i (layers.py); merges
and streams are read off the records (merges.py); sharpness is a third pass over the same records (sharpness.py).
Each node's result (`result.Op`, frozen) is written under `node.meta["modnorm"]`, as ShapeProp writes
`tensor_meta`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import floors, semantics, sharpness
from .combinators import log_of, log_parallel, log_series, parallel, series
from .errors import ModnormError
from .folding import abs_bound, sign_of
from .layers import layers_of
from .merges import merges_of
from .ops_atoms import embedding_rows, input_feature_axis
from .patterns import Fused, find_patterns, scaled_atom_scale
from .records import Context, Options, Record
from .result import Analysis, ModelInfo
from .semantics import INF, Bounds, Semantics, linear
from .tracing import TracedModel, is_compiled
from .weightstore import WeightStore
from .summary import (block_sharpness_of, mass_groups, network_of, op_of, records_named, sharpness_of,
                      tied_weights)

__all__ = ["Options", "analyze_traced", "series", "parallel", "WeightStore"]


# --------------------------------------------------------------------------------------------- op views
class _View:
    """The OpView handed to registry entries (see semantics.OpView)."""

    def __init__(self, node: fx.Node, output: fx.Node, inputs: list[fx.Node], bounds: list[Bounds],
                 ctx: "Context", scale: float = 1.0, sources: list[Record] | None = None) -> None:
        self.node, self.output, self.inputs, self.bounds = node, output, inputs, bounds
        self.sources = sources or []
        self.ctx, self.scale = ctx, scale
        self.profile = ctx.options.profile
        self.weights = ctx.weights
        self.norm_input_rms = ctx.options.norm_input_rms
        self.module = ctx.root.get_submodule(node.target) if node.op == "call_module" else None

    def input_floor(self, centred: bool) -> floors.Floor | None:
        """The `assumed` profile's floor on the (centred) RMS of data input 0 (floors.py), or None."""
        if self.profile != "assumed" or not self.sources:
            return None
        return floors.floor_of(self.ctx.measured, self.sources[0], centred)

    def input_value(self, index: int) -> torch.Tensor | None:
        """The value of data input `index` when the graph ran on the example inputs with real weights (the
        `assumed` profile on the CPU; floors.Measured), else None."""
        if self.profile != "assumed" or index >= len(self.sources) or not self.ctx.measured:
            return None
        value = getattr(self.ctx.measured, "value", None)
        return value(self.sources[index].node.name) if value is not None else None

    def input_rms_at_init(self, index: int) -> float | None:
        """The RMS of data input `index` at init: measured when the graph ran (the `assumed` profile on the CPU),
        else predicted from the init laws (floors.typical), else None."""
        if index >= len(self.sources):
            return None
        stats = self.ctx.measured.get(self.sources[index].node.name) if self.ctx.measured else None
        return stats[0] if stats is not None else self.sources[index].typical

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if name in self.node.kwargs:
            return self.node.kwargs[name]
        offset = 0
        if len(self.node.args) > index + offset:
            return self.node.args[index + offset]
        return default

    def param_name(self, index: int, name: str) -> str | None:
        arg = self.arg(index, name)
        if isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target in self.ctx.parameter_names:
            return arg.target
        return None

    def constant_value(self, index: int, name: str) -> Any:
        arg = self.arg(index, name)
        if isinstance(arg, torch.Tensor):
            return None if arg.is_meta else arg
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = self.weights.tensor(arg.target)
            return None if not isinstance(value, torch.Tensor) or value.is_meta else value.detach()
        if isinstance(arg, fx.Node) and arg not in self.inputs:  # a folded constant (torch.export route)
            value = arg.meta.get("value")
            return value.detach() if isinstance(value, torch.Tensor) and not value.is_meta else None
        return None

    def constant_sign(self, arg: Any) -> int:
        """1 / -1 when every entry of a constant argument is >= 0 / <= 0 (folding.sign_of), else 0."""
        return sign_of(arg, self.weights)

    def constant_abs_bound(self, index: int, name: str) -> float | None:
        """max |c| of a constant argument whose values are unknown (meta), from the formula that made it."""
        return abs_bound(self.arg(index, name), self.weights)

    @property
    def value(self) -> Any:
        return self.output.meta.get("value")

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        value = self.inputs[i].meta.get("value") if i < len(self.inputs) else None
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            value = value[0]
        return tuple(value.shape) if isinstance(value, torch.Tensor) else ()

    def out_shape(self) -> tuple[int, ...]:
        value = self.value
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            value = value[0]
        return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


# --------------------------------------------------------------------------------------------- the pass
def _readable_target(node: fx.Node, root: nn.Module, fused: Fused | None) -> str:
    if fused is not None and fused.kind != "scaled_atom":
        return f"{fused.kind} (pattern)"
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"method {node.target}"
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)  # aten.linear.default (torch.export fallback)
    if node.op == "call_function" and hasattr(node.target, "_modnorm_key"):
        return node.target.__name__  # MyFunction.apply
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        if module.startswith("_modnorm_model_"):  # the user's model file, imported under a private name
            return getattr(node.target, "__name__", str(node.target))
        return f"{module}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    return node.op


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _data_inputs(node: fx.Node, depends: dict[fx.Node, bool]) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if depends.get(n) else None)
    return found


def _registry_key(node: fx.Node, root: nn.Module) -> Any:
    if node.op == "call_module":
        return type(root.get_submodule(node.target))
    if embedding_rows(node, root) is not None:
        return "embedding_rows"  # `emb.weight[positions]`: a lookup, not a getitem of an activation
    return getattr(node.target, "_modnorm_key", node.target)  # a custom autograd.Function: its class


def _unknown_reason(node: fx.Node, root: nn.Module) -> str:
    """Why an op has no semantics, and what the user can do about it."""
    name = _readable_target(node, root, None)
    key = _registry_key(node, root)
    if isinstance(key, type) and issubclass(key, torch.autograd.Function):
        return (f"custom autograd.Function `{key.__name__}` is a leaf and not modelled: its backward is "
                f"user-defined, so its forward says nothing certain about its gradients; register its semantics "
                f"with @modnorm.register({key.__name__})")
    if is_compiled(key) or (node.op == "call_module" and is_compiled(root.get_submodule(node.target))):
        return (f"`{name}` is wrapped by torch.compile: a leaf, not modelled (register its semantics with "
                f"@modnorm.register, or analyse the uncompiled function)")
    return f"op `{name}` is not in modnorm's registry{_unmodelled_parameters(node, root)}"


def _unmodelled_info(node: fx.Node, root: nn.Module) -> dict[str, Any]:
    """`unmodelled_parameters` (count) and `unmodelled_share` (of the model's parameters) of an unknown module."""
    if node.op != "call_module":
        return {}
    count = sum(p.numel() for p in root.get_submodule(node.target).parameters())
    total = sum(p.numel() for p in root.parameters()) or 1
    return {"unmodelled_parameters": count, "unmodelled_share": count / total} if count else {}


def _unmodelled_parameters(node: fx.Node, root: nn.Module) -> str:
    """The weights an unknown module holds (an LSTM's are most of a small RNN's): said, never silently dropped
    from the table and the mass."""
    if node.op != "call_module":
        return ""
    module = root.get_submodule(node.target)
    own = {f"{node.target}.{n}": p.numel() for n, p in module.named_parameters()}
    if not own:
        return ""
    total = sum(p.numel() for p in root.parameters()) or 1
    count, names = sum(own.values()), ", ".join(sorted(own))
    return (f"; its {count:,} parameters ({100 * count / total:.0f}% of the model's: {names}) are unmodelled "
            f"atoms, outside the layer table and the mass")


def _is_discrete(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    return False


def _evaluate(node: fx.Node, fused: Fused | None, inputs: list[Record], ctx: Context) -> Semantics:
    base = fused.info["atom"] if fused is not None and fused.kind == "scaled_atom" else node
    scale = scaled_atom_scale(fused, ctx.weights) if fused is not None and fused.kind == "scaled_atom" else 1.0
    view = _View(base, node, [r.node for r in inputs], [r.bounds for r in inputs], ctx, scale, inputs)
    try:
        if fused is not None and fused.kind == "rms_norm":
            return _rms_pattern(view, fused)
        if fused is not None and fused.kind == "mean_subtract":
            return _mean_subtract(view, fused)
        if fused is not None and fused.kind == "rotary":
            return semantics.rotary(view, fused.info["cos"], fused.info["sin"])
        if fused is not None and fused.kind == "attention":
            found = semantics.attention(view, fused.info["scale"], "attention (by hand)",
                                        mask_scale=fused.info.get("mask_scale") or 1.0)
            operand = fused.info.get("operand_scale", 1.0)  # `(q * c) @ kᵀ`: c multiplies the logits too
            return replace(found, info={**found.info, "scale": found.info["scale"] * operand}) if operand != 1.0 \
                else found
        entry = semantics.lookup(_registry_key(base, ctx.root))
        if entry is None:
            return Semantics("unknown", (INF,) * max(1, len(inputs)), "not in the registry", certified=False,
                             reason=_unknown_reason(base, ctx.root), info=_unmodelled_info(base, ctx.root))
        return entry(view)
    except ModnormError:
        raise
    except Exception as exc:  # noqa: BLE001 - a registry entry that cannot judge an op never hides it
        return Semantics("unknown", (INF,) * max(1, len(inputs)), "registry entry failed", certified=False,
                         reason=f"could not evaluate `{_readable_target(base, ctx.root, None)}`: "
                                f"{type(exc).__name__}: {exc}")


def _rms_pattern(view: _View, fused: Fused) -> Semantics:
    shape = view.in_shape(0)
    dims = _reduced_axes(fused.info.get("dims"), len(shape))
    group = math.prod(shape[a] for a in dims) if shape else 1
    coupling = semantics.coupling_of(view, dims, group) if shape else None
    found = semantics.normalization(view, None, None, fused.info["eps"], bool(fused.info.get("centred")),
                                    "RMS normalization (by hand)", last_axis=coupling is None, coupling=coupling)
    if not fused.info.get("l2"):
        return found
    shrink = 1 / math.sqrt(group)  # x / ||x||_2 over the reduced axes = rms-divide / sqrt(group size)
    return replace(found, lipschitz=tuple(c * shrink for c in found.lipschitz),
                   design=tuple(c * shrink for c in found.design or ()), upper=shrink, lower=shrink,
                   hessian=found.hessian * shrink if found.hessian is not None else None,
                   label="l2 normalize (by hand)")


def _reduced_axes(dims: Any, ndim: int) -> tuple[int, ...]:
    """The axes a reduction's `dim` names, non-negative (None: all of them; an empty shape: the last)."""
    if not ndim:
        return ()
    if dims is None:
        return tuple(range(ndim))
    return tuple(sorted({d % ndim for d in dims}))


def _mean_subtract(view: _View, fused: Fused) -> Semantics:
    """x - mean(x, dims): the orthogonal projection I - 11ᵀ/d on each feature vector (1) when only the feature axis
    is reduced; across positions a fiber's output also moves with the others' inputs: ||x_p|| + ||mean|| <= 2."""
    shape, fdim = view.in_shape(0), view.bounds[0].fdim
    fdim = len(shape) - 1 if shape and (fdim is None or fdim >= len(shape)) else fdim
    dims = _reduced_axes(fused.info.get("dims"), len(shape))
    if not shape or set(dims) <= {fdim}:
        return linear(Semantics("bond", (1.0,), "MeanSubtract: orthogonal projection I - 11ᵀ/d", label="MeanSubtract"))
    # Modula (and the design pass) count the projection in the l2 norm of the whole group: 1
    constant = 1.0 if view.profile == "modula" else 2.0
    return linear(Semantics("bond", (constant,), "MeanSubtract across positions: ||x_p|| + ||mean|| <= 2",
                            design=(1.0,), nominal=(1.0,), label="MeanSubtract"))


def _bounds_out(sem: Semantics, inputs: list[Record], value: Any) -> Bounds:
    if _is_discrete(value) or "counts" in sem.tags:  # counts (histc of routing indices) carry no perturbation
        return Bounds(upper=0.0, fdim=None, discrete=True)
    upper = sem.upper
    if upper is None and inputs and all(r.bounds.discrete for r in inputs):
        upper = INF  # a float made from ids or masks: its size is not known statically
    elif upper is None:
        upper = sum(series(c, r.bounds.upper) for c, r in zip(sem.lipschitz, inputs) if not r.bounds.discrete)
    fdim = sem.fdim
    if fdim == -1:
        fdim = next((r.bounds.fdim for r in inputs if r.bounds.fdim is not None), None)
    if isinstance(value, torch.Tensor) and value.dim() and (fdim is None or fdim >= value.dim()):
        fdim = value.dim() - 1
    sign = sem.sign
    if sign is None:  # a layout op or a cast moves entries, keeping their sign; any other op's sign is unknown
        keeps = "layout" in sem.tags or sem.source.startswith("identity")
        sign = inputs[0].bounds.sign if keeps and len(inputs) == 1 else 0
    return Bounds(upper=upper, lower=sem.lower, sup=sem.sup, fdim=fdim, sign=sign)


def _input_bounds(node: fx.Node, root: nn.Module, options: Options) -> Bounds:
    value = node.meta.get("value")
    if _is_discrete(value) or not isinstance(value, torch.Tensor):
        return Bounds(upper=0.0, fdim=None, discrete=True)
    return Bounds(upper=options.input_rms, lower=0.0, fdim=input_feature_axis(node, value, root))


def _fit(constants: tuple[float, ...], inputs: list[Record]) -> tuple[float, ...]:
    """One constant per data input; discrete inputs (ids, masks) carry no perturbation."""
    return tuple(0.0 if record.bounds.discrete else (constants[i] if i < len(constants) else INF)
                 for i, record in enumerate(inputs))


def _forward(traced: TracedModel, ctx: Context) -> list[Record]:
    graph, root = traced.graph, ctx.root
    fused = find_patterns(graph, root)
    absorbed = set()
    for group in fused.values():
        absorbed |= group.members - {group.output}
    depends: dict[fx.Node, bool] = {}
    records: dict[fx.Node, Record] = {}
    ordered: list[Record] = []
    for index, node in enumerate(graph.nodes):
        if node.op == "placeholder":  # token ids and masks are not perturbed: they are not data
            depends[node] = not _is_discrete(node.meta.get("value"))
        else:  # embedding lookups start the continuous network even from ids or arange positions
            depends[node] = any(depends.get(a, False) for a in node.all_input_nodes) or _may_be_atom(node, None, root)
        if node in absorbed:
            continue
        group = fused.get(node)
        if node.op == "placeholder":
            record = Record(node, "input", [], None, _input_bounds(node, root, ctx.options))
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            inputs = [records[n] for n in _data_inputs(node, depends) if n in records]
            record = Record(node, "output", inputs, None, Bounds())
        else:
            if group is not None and group.kind != "scaled_atom":
                input_nodes = group.inputs + _inputs_from_outside(group, depends)
            else:
                base = group.info["atom"] if group is not None else node
                input_nodes = _data_inputs(base, depends)
            inputs = [records[n] for n in input_nodes if n in records]
            if not inputs and not _may_be_atom(node, group, root):
                depends[node] = False
                continue
            sem = _evaluate(node, group, inputs, ctx)
            value = node.meta.get("value")
            if sem.kind == "atom" and sem.atom.kind != "Gain":  # well-normed: sensitivity 1
                sem = replace(sem, design=(1.0,) * len(sem.lipschitz), nominal=(1.0,) * len(sem.lipschitz))
                if ctx.options.profile == "modula":
                    sem = replace(sem, lipschitz=sem.nominal)
            lipschitz = _fit(sem.lipschitz, inputs)
            design = _fit(sem.design, inputs) if sem.design is not None else lipschitz
            if "layout" in sem.tags and sem.design is None:  # Op.design_constant: a layout keeps feature vectors
                design = tuple(min(d, 1.0) for d in design)
            if _is_discrete(value) and any(not r.bounds.discrete for r in inputs):
                # integer bookkeeping (counts, offsets) carries no perturbation; a top-k choice is the routing
                routing = [s for s in (sem, *(r.semantics for r in inputs)) if s is not None and "routing" in s.tags]
                sem = replace(sem, certified=sem.certified and "counts" in sem.tags, kind="bond",
                              reason=routing[0].reason if routing else sem.reason if "counts" in sem.tags else
                              "a comparison or rounding of activations is piecewise constant with jumps")
            record = Record(node, sem.kind, inputs, sem, _bounds_out(sem, inputs, value), lipschitz, design)
            record.target = _readable_target(group.info["atom"] if group is not None and group.kind ==
                                             "scaled_atom" else node, root, group)
        record.index = index
        record.module = _module_path(node)
        record.typical = floors.typical(record, ctx.options.input_rms, ctx.weights)
        records[node] = record
        ordered.append(record)
    return ordered


def _inputs_from_outside(group: Fused, depends: dict[fx.Node, bool]) -> list[fx.Node]:
    """Data that enters a fused group other than through its declared inputs (an attention logit bias computed
    from the input): it becomes an input of the group, so its sensitivity is counted, not lost."""
    if group.kind != "attention":
        return []
    seen = set(group.inputs) | group.members
    extra: list[fx.Node] = []
    for member in group.members:
        for node in member.all_input_nodes:
            if node not in seen and depends.get(node):
                seen.add(node)
                extra.append(node)
    return extra


def _may_be_atom(node: fx.Node, group: Fused | None, root: nn.Module) -> bool:
    base = group.info["atom"] if group is not None and group.kind == "scaled_atom" else node
    if base.op == "call_module":
        return isinstance(root.get_submodule(base.target), nn.Embedding)
    if embedding_rows(base, root) is not None:
        return True
    return base.op == "call_function" and (base.target is torch.nn.functional.embedding
                                           or base.target is torch.ops.aten.embedding.default)


def _backward(records: list[Record]) -> None:
    """S_down by reverse accumulation, in float64 and in log space (the logs never overflow: a deep network's
    figure that exceeds float range is still known, and inf then means an unbounded constant)."""
    for record in records:
        record.down = record.design_down = 0.0
        record.log_down = record.log_design_down = -math.inf
    for record in reversed(records):
        if record.kind == "output":
            for inp in record.inputs:
                inp.down += 1.0
                inp.design_down += 1.0
                inp.log_down = log_parallel(inp.log_down, 0.0)
                inp.log_design_down = log_parallel(inp.log_design_down, 0.0)
            continue
        for inp, c, d in zip(record.inputs, record.lipschitz, record.design):
            inp.down += series(record.down, c)
            inp.design_down += series(record.design_down, d)
            inp.log_down = log_parallel(inp.log_down, log_series(record.log_down, log_of(c)))
            inp.log_design_down = log_parallel(inp.log_design_down, log_series(record.log_design_down, log_of(d)))


# ----------------------------------------------------------------------------------------------- entry point
def analyze_traced(traced: TracedModel, options: Options = Options(), user_file: str | None = None,
                   entry: str | None = None, device: str = "meta", init_laws: dict[str, Any] | None = None,
                   checkpoint: Any = None, example_inputs: tuple[Any, ...] | None = None) -> Analysis:
    """Run the calculus on a traced model and return the plain `Analysis`.

    `init_laws` (from `initlaw.record_init` around a meta build) predicts the norms of meta parameters.
    `example_inputs` (real tensors, with real weights) let the `assumed` profile measure the RMS entering each
    normalizer at init (floors.py); without them the floors are predicted.
    """
    root = traced.root
    store = WeightStore(root, init_laws, checkpoint)
    store.graph_module = traced.graph_module
    ctx = Context(root, store, options, user_file,
                   {name for name, _ in root.named_parameters(remove_duplicate=False)})
    if options.profile == "assumed" and checkpoint is None:
        axes = tuple(input_feature_axis(n, n.meta["value"], root) if isinstance(n.meta.get("value"), torch.Tensor)
                     else None for n in traced.graph.nodes if n.op == "placeholder")
        ctx.measured = floors.measure(traced.graph_module, example_inputs, axes)
    records = _forward(traced, ctx)
    _backward(records)
    layers, total_mass = layers_of(records, ctx)
    merges, streams = merges_of(records, ctx)
    triples = sharpness.propagate(records, layers, options.profile)
    streams = [replace(st, alphas=tuple(triples[id(r)].alpha for r in records_named(records, st.merges)),
                       log10_alphas=tuple(triples[id(r)].log10("alpha") for r in records_named(records, st.merges)))
               for st in streams]
    ops = tuple(op_of(r, ctx, triples[id(r)]) for r in records)
    for record, op in zip(records, ops):
        record.node.meta["modnorm"] = op
    sharp, loss = sharpness_of(records, triples, ctx)
    network = replace(network_of(records, layers, total_mass, ctx), tied_weights=tied_weights(root),
                      mass_groups=mass_groups(layers), sharpness=sharp, loss=loss,
                      block_sharpness=block_sharpness_of(records, layers, ctx))
    parameters = sum(p.numel() for p in root.parameters())
    info = ModelInfo(user_file, entry, traced.tracer, device, parameters, len(records), tuple(traced.attempts))
    analysis = Analysis(info, options.profile, options.mass, options.hidden_mass, tuple(layers), ops,
                        tuple(merges), tuple(streams), network)
    if traced.tracer == "modules":
        from .module_only import withhold_graph_quantities

        analysis = withhold_graph_quantities(analysis, traced.skipped)
    return analysis


