"""The modular-norm calculus on an fx graph: a forward pass of semantics and RMS bounds, then a backward pass
of downstream sensitivities, masses, targets and residual structure (docs/theory/dag.md#path-sum).

Forward (topological order): every node gets its semantics from the registry (or from a recognised pattern),
the Lipschitz constant w.r.t. each data input, and upper/lower bounds on its output RMS. Backward: for every
tensor v, S_down(v) = Σ_{consumers c} S_down(c) · L_c(v) — the sum over paths of products of sensitivities,
which equals Modula's tree recursion for trees. Atoms then get masses (by role or uniform), targets
t_i = (m_i / M) / S_down(i) and their term in the modular norm ||w||_M = max_i ||w_i|| / t_i.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import nn

from . import initlaw, norms, semantics, sharpness
from .errors import ModnormError, short_path
from .patterns import Fused, find_patterns
from .result import Analysis, BlockSharpness, Layer, LossBound, MassGroup, Merge, ModelInfo, Network, Op, Sharpness, Stream
from .semantics import INF, Bounds, Semantics, linear
from .tracing import TracedModel, call_site, is_compiled, node_location

__all__ = ["Options", "analyze_traced", "series", "parallel"]


@dataclass(frozen=True)
class Options:
    """How to run the calculus (all of it is configurable from the CLI and pyproject)."""

    profile: str = "certified"  # "certified" | "modula"
    mass: str = "roles"  # "roles" | "uniform"
    hidden_mass: float = 1.0
    mass_of: tuple[tuple[str, float], ...] = ()
    norm_input_rms: float | None = None  # an assumed floor for normalizer inputs, stated in the report
    loss: str = "xent"  # "xent" | "mse": the loss of the gradient Lipschitz bound
    input_rms: float = 1.0  # inputs are assumed to have max-position RMS <= this


# --------------------------------------------------------------------------------------------- combinators
def _times(a: float, b: float) -> float:
    """a · b with 0 · inf = 0: a path through a zero constant carries nothing."""
    return 0.0 if a == 0 or b == 0 else a * b


def series(first: float, then: float) -> float:
    """Sensitivity of `then ∘ first`: sensitivities multiply (docs/theory/modular-norm.md#composition)."""
    return _times(first, then)


def parallel(*branches: float) -> float:
    """Sensitivity of a fan-out whose branches are summed: sensitivities add (concatenation + Add)."""
    return sum(branches)


# ------------------------------------------------------------------------------------------------ weights
_DEFAULT_BIAS_LAW = ("uniform_fan_in",)


class WeightStore:
    """Norms of parameters: measured on real weights, predicted from the init law on the meta device."""

    def __init__(self, root: nn.Module, laws: dict[str, Any] | None = None, checkpoint: Any = None) -> None:
        self.root = root
        self.laws = laws or {}  # recorded init laws of meta parameters (initlaw.py)
        self.checkpoint = checkpoint  # (weights.Checkpoint, model name -> stored name) for --weights PATH
        self.graph_module: nn.Module | None = None  # where torch.export keeps lifted constants
        self.predicted: dict[str, float] = {}  # the init-law prediction of a measured tensor's norm
        self.measured: dict[str, float] = {}
        self._cache: dict[tuple, tuple] = {}

    def _law(self, name: str) -> tuple[Any, str]:
        """The recorded init law of a meta tensor, or None with the reason the default law is used."""
        law = self.laws.get(name)
        if law is not None and law.known:
            return law, f"predicted from {law.source}"
        if law is not None:
            return None, f"predicted from the default init ({law.source}: not understood)"
        return None, "predicted from the default init"

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer `name`; from the checkpoint when the model is on meta (read now, not kept).
        Constants that torch.export lifted live on the graph module, not on the model."""
        obj: Any = self.root
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            if self.graph_module is None:
                raise
            obj = self.graph_module
            for part in name.split("."):
                obj = getattr(obj, part)
        if self.checkpoint is not None and isinstance(obj, torch.Tensor) and obj.is_meta:
            stored, names = self.checkpoint
            if name in names:
                return stored.load(names[name]).to(torch.float64 if obj.is_floating_point() else obj.dtype)
        return obj

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensor(name).shape)

    def _owner(self, name: str) -> nn.Module | None:
        path = name.rsplit(".", 1)[0] if "." in name else ""
        try:
            return self.root.get_submodule(path)
        except AttributeError:
            return None

    def _cached(self, key: tuple, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _law_std(self, name: str) -> float:
        """Entry std of PyTorch's default init for the owner's type (kaiming_uniform(a=sqrt5) for Linear/Conv)."""
        owner, shape = self._owner(name), self.shape(name)
        if isinstance(owner, nn.Embedding):
            return 1.0
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        if isinstance(owner, (nn.Conv1d, nn.Conv2d)):
            fan_in = math.prod(shape[1:])
        return 1.0 / math.sqrt(3 * fan_in)

    def spectral(self, name: str, transpose: bool = False) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            rows, cols = w.shape[0], math.prod(w.shape[1:])
            law, source = self._law(name)
            if not w.is_meta:
                measured = norms.spectral_norm(w.detach()).upper
                if law is not None:  # both exist: keep the prediction for "predicted vs measured"
                    self.predicted[name] = initlaw.spectral(law, *((cols, rows) if transpose else (rows, cols)))
                    self.measured[name] = measured
                return measured, "measured"
            if transpose:
                rows, cols = cols, rows
            if law is not None:
                return initlaw.spectral(law, rows, cols), source
            std = self._law_std(name)
            return std * (math.sqrt(rows) + math.sqrt(cols)), source
        return self._cached(("spectral", name), compute)

    def conv(self, name: str, groups: int) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            c_out, c_in_g = w.shape[0], w.shape[1]
            if not w.is_meta:
                grouped = w.detach().reshape(groups, c_out // groups, c_in_g, -1)
                slices = grouped.permute(0, 3, 1, 2).reshape(-1, c_out // groups, c_in_g)
                return norms.conv_kernel_norm(slices.permute(1, 2, 0)).upper, "measured"
            law, source = self._law(name)
            if law is not None and law.kind != "orthogonal":  # an orthogonal conv init is orthogonal as a whole
                return initlaw.spectral(law, c_out // groups, c_in_g) * 1.05, source
            std = self._law_std(name)
            return std * (math.sqrt(c_out // groups) + math.sqrt(c_in_g)) * 1.05, source
        return self._cached(("conv", name, groups), compute)

    def row_rms(self, name: str) -> tuple[float, float, str]:
        def compute() -> tuple[float, float, str]:
            w = self.tensor(name)
            n, d = w.shape
            law, source = self._law(name)
            if not w.is_meta:
                rms = w.detach().double().pow(2).mean(1).sqrt()
                if law is not None:
                    self.predicted[name], self.measured[name] = initlaw.row_rms(law, n, d), float(rms.max())
                return float(rms.max()), float(rms.min()), "measured"
            if law is not None:
                return initlaw.row_rms(law, n, d), 0.0, source
            std = self._law_std(name)
            return std * (1 + math.sqrt(math.log(max(n, 2)) / d)), 0.0, source
        return self._cached(("row_rms", name), compute)

    def abs_max(self, name: str) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            if not w.is_meta:
                return float(w.detach().abs().max()) if w.numel() else 0.0, "measured"
            law, source = self._law(name)
            if law is not None and not math.isnan(initlaw.abs_max(law, w.numel())):
                return initlaw.abs_max(law, w.numel()), source
            if w.dim() == 1:  # normalization gains initialise to ones
                return 1.0, source
            return math.sqrt(3) * self._law_std(name), source
        return self._cached(("abs_max", name), compute)

    def abs_min(self, name: str) -> tuple[float, str]:
        w = self.tensor(name)
        if not w.is_meta:
            return float(w.detach().abs().min()) if w.numel() else 0.0, "measured"
        law, source = self._law(name)
        if law is not None and law.kind == "constant":
            return abs(law.mean), source
        return (1.0 if w.dim() == 1 and law is None else 0.0), source

    def rms(self, name: str) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            if not w.is_meta:
                return float(w.detach().double().pow(2).mean().sqrt()) if w.numel() else 0.0, "measured"
            law, source = self._law(name)
            if law is not None and not math.isnan(initlaw.rms(law)):
                return initlaw.rms(law), source
            owner = self._owner(name)
            if isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
                return 0.0, source
            weight = getattr(owner, "weight", None)
            fan_in = math.prod(weight.shape[1:]) if weight is not None and weight.dim() > 1 else w.shape[0]
            return 1.0 / math.sqrt(3 * fan_in), source
        return self._cached(("rms", name), compute)

    def max_row_l1(self, name: str) -> tuple[float, str]:
        w = self.tensor(name)
        if not w.is_meta:
            return float(w.detach().abs().sum(1).max()), "measured"
        fan_in = w.shape[1]
        return fan_in * math.sqrt(3) * self._law_std(name), "predicted (worst case of the init law)"

    def batch_norm(self, prefix: str, eps: float) -> tuple[float, str]:
        module = self.root.get_submodule(prefix)
        var = self.tensor(f"{prefix}.running_var") if module.running_var is not None else None
        if var is None or var.is_meta:
            return 1.0 / math.sqrt(1.0 + eps), "predicted"
        gamma = self.tensor(f"{prefix}.weight").detach().abs() if module.weight is not None else torch.ones_like(var)
        return float((gamma / (var + eps).sqrt()).max()), "measured"


# --------------------------------------------------------------------------------------------- op views
class _View:
    """The OpView handed to registry entries (see semantics.OpView)."""

    def __init__(self, node: fx.Node, output: fx.Node, inputs: list[fx.Node], bounds: list[Bounds],
                 ctx: "_Context", scale: float = 1.0) -> None:
        self.node, self.output, self.inputs, self.bounds = node, output, inputs, bounds
        self.ctx, self.scale = ctx, scale
        self.profile = ctx.options.profile
        self.weights = ctx.weights
        self.norm_input_rms = ctx.options.norm_input_rms
        self.module = ctx.root.get_submodule(node.target) if node.op == "call_module" else None

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

    def constant_abs_bound(self, index: int, name: str) -> float | None:
        """max |c| of a constant argument whose values are unknown (meta), from the formula that made it."""
        return _abs_bound(self.arg(index, name), self.weights, 0)

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


_BOUNDED = {"cos": 1.0, "sin": 1.0, "tanh": 1.0, "sigmoid": 1.0, "softmax": 1.0}
_PASSTHROUGH = {"getitem", "view", "reshape", "unsqueeze", "squeeze", "expand", "expand_as", "to", "float",
                "double", "half", "bfloat16", "type_as", "contiguous", "transpose", "permute", "repeat", "flatten",
                "clone", "detach", "narrow", "select", "slice", "alias", "_to_copy", "t", "unflatten"}


def _abs_bound(arg: Any, weights: "WeightStore", depth: int) -> float | None:
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
        return None if not isinstance(tensor, torch.Tensor) or tensor.is_meta else float(tensor.float().abs().max())
    if arg.op not in ("call_function", "call_method"):
        return None
    target = arg.target
    name = target if isinstance(target, str) else (target.overloadpacket.__name__ if isinstance(
        target, torch._ops.OpOverload) else getattr(target, "__name__", ""))
    if name in _BOUNDED:
        return _BOUNDED[name]
    if name in _PASSTHROUGH and arg.args:
        return _abs_bound(arg.args[0], weights, depth + 1)
    if name in ("cat", "stack") and arg.args and isinstance(arg.args[0], (list, tuple)):
        parts = [_abs_bound(a, weights, depth + 1) for a in arg.args[0]]
        return None if any(p is None for p in parts) else max(parts, default=0.0)
    if name in ("mul", "neg") and arg.args:
        parts = [_abs_bound(a, weights, depth + 1) for a in arg.args[:2]] if name == "mul" else [
            _abs_bound(arg.args[0], weights, depth + 1)]
        return None if any(p is None for p in parts) else math.prod(parts)
    return None


@dataclass
class _Record:
    node: fx.Node
    kind: str
    inputs: list["_Record"]
    semantics: Semantics | None
    bounds: Bounds
    lipschitz: tuple[float, ...] = ()
    design: tuple[float, ...] = ()
    index: int = 0
    down: float = 0.0
    design_down: float = 0.0
    module: str = ""
    target: str = ""


@dataclass
class _Context:
    root: nn.Module
    weights: WeightStore
    options: Options
    user_file: str | None
    parameter_names: set[str] = field(default_factory=set)


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
    return f"op `{name}` is not in modnorm's registry"


def _is_discrete(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    return False


def _evaluate(node: fx.Node, fused: Fused | None, inputs: list[_Record], ctx: _Context) -> Semantics:
    base = fused.info["atom"] if fused is not None and fused.kind == "scaled_atom" else node
    scale = fused.info["scale"] if fused is not None and fused.kind == "scaled_atom" else 1.0
    view = _View(base, node, [r.node for r in inputs], [r.bounds for r in inputs], ctx, scale)
    try:
        if fused is not None and fused.kind == "rms_norm":
            return _rms_pattern(view, fused)
        if fused is not None and fused.kind == "mean_subtract":
            return linear(Semantics("bond", (1.0,), "MeanSubtract: orthogonal projection I - 11ᵀ/d",
                             label="MeanSubtract"))
        if fused is not None and fused.kind == "attention":
            return semantics.attention(view, fused.info["scale"], "attention (by hand)")
        entry = semantics.lookup(_registry_key(base, ctx.root))
        if entry is None:
            return Semantics("unknown", (INF,) * max(1, len(inputs)), "not in the registry", certified=False,
                             reason=_unknown_reason(base, ctx.root))
        return entry(view)
    except ModnormError:
        raise
    except Exception as exc:  # noqa: BLE001 - a registry entry that cannot judge an op never hides it
        return Semantics("unknown", (INF,) * max(1, len(inputs)), "registry entry failed", certified=False,
                         reason=f"could not evaluate `{_readable_target(base, ctx.root, None)}`: "
                                f"{type(exc).__name__}: {exc}")


def _rms_pattern(view: _View, fused: Fused) -> Semantics:
    found = semantics.normalization(view, None, None, fused.info["eps"], False, "RMS normalization (by hand)")
    if not fused.info.get("l2"):
        return found
    width = view.in_shape(0)[-1] if view.in_shape(0) else 1  # x / ||x||_2 = rms-divide / sqrt(d)
    shrink = 1 / math.sqrt(width)
    return replace(found, lipschitz=tuple(c * shrink for c in found.lipschitz),
                   design=tuple(c * shrink for c in found.design or ()), upper=shrink, lower=shrink,
                   hessian=found.hessian * shrink if found.hessian is not None else None,
                   label="l2 normalize (by hand)")


def _bounds_out(sem: Semantics, inputs: list[_Record], value: Any) -> Bounds:
    if _is_discrete(value):
        return Bounds(upper=0.0, fdim=None, discrete=True)
    upper = sem.upper
    if upper is None and inputs and all(r.bounds.discrete for r in inputs):
        upper = INF  # a float made from ids or masks: its size is not known statically
    elif upper is None:
        upper = sum(_times(c, r.bounds.upper) for c, r in zip(sem.lipschitz, inputs) if not r.bounds.discrete)
    fdim = sem.fdim
    if fdim == -1:
        fdim = next((r.bounds.fdim for r in inputs if r.bounds.fdim is not None), None)
    if isinstance(value, torch.Tensor) and value.dim() and (fdim is None or fdim >= value.dim()):
        fdim = value.dim() - 1
    return Bounds(upper=upper, lower=sem.lower, sup=sem.sup, fdim=fdim)


def _input_bounds(value: Any, options: Options) -> Bounds:
    if _is_discrete(value) or not isinstance(value, torch.Tensor):
        return Bounds(upper=0.0, fdim=None, discrete=True)
    fdim = 1 if value.dim() == 4 else value.dim() - 1
    return Bounds(upper=options.input_rms, lower=0.0, fdim=fdim)


def _fit(constants: tuple[float, ...], inputs: list[_Record]) -> tuple[float, ...]:
    """One constant per data input; discrete inputs (ids, masks) carry no perturbation."""
    return tuple(0.0 if record.bounds.discrete else (constants[i] if i < len(constants) else INF)
                 for i, record in enumerate(inputs))


def _forward(traced: TracedModel, ctx: _Context) -> list[_Record]:
    graph, root = traced.graph, ctx.root
    fused = find_patterns(graph, root)
    absorbed = set()
    for group in fused.values():
        absorbed |= group.members - {group.output}
    depends: dict[fx.Node, bool] = {}
    records: dict[fx.Node, _Record] = {}
    ordered: list[_Record] = []
    for index, node in enumerate(graph.nodes):
        if node.op == "placeholder":  # token ids and masks are not perturbed: they are not data
            depends[node] = not _is_discrete(node.meta.get("value"))
        else:  # embedding lookups start the continuous network even from ids or arange positions
            depends[node] = any(depends.get(a, False) for a in node.all_input_nodes) or _may_be_atom(node, None, root)
        if node in absorbed:
            continue
        group = fused.get(node)
        if node.op == "placeholder":
            record = _Record(node, "input", [], None, _input_bounds(node.meta.get("value"), ctx.options))
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            inputs = [records[n] for n in _data_inputs(node, depends) if n in records]
            record = _Record(node, "output", inputs, None, Bounds())
        else:
            if group is not None and group.kind != "scaled_atom":
                input_nodes = group.inputs
            else:
                base = group.info["atom"] if group is not None else node
                input_nodes = _data_inputs(base, depends)
            inputs = [records[n] for n in input_nodes if n in records]
            if not inputs and not _may_be_atom(node, group, root):
                depends[node] = False
                continue
            sem = _evaluate(node, group, inputs, ctx)
            value = node.meta.get("value")
            if sem.kind == "atom" and sem.atom.kind != "Gain":  # a well-normed atom has sensitivity 1
                sem = replace(sem, design=(1.0,) * len(sem.lipschitz), nominal=(1.0,) * len(sem.lipschitz))
                if ctx.options.profile == "modula":
                    sem = replace(sem, lipschitz=sem.nominal)
            lipschitz = _fit(sem.lipschitz, inputs)
            design = _fit(sem.design, inputs) if sem.design is not None else lipschitz
            if _is_discrete(value) and any(not r.bounds.discrete for r in inputs):
                sem = replace(sem, certified=False, kind="bond",
                              reason="a comparison or rounding of activations is piecewise constant with jumps")
            record = _Record(node, sem.kind, inputs, sem, _bounds_out(sem, inputs, value), lipschitz, design)
            record.target = _readable_target(group.info["atom"] if group is not None and group.kind ==
                                             "scaled_atom" else node, root, group)
        record.index = index
        record.module = _module_path(node)
        records[node] = record
        ordered.append(record)
    return ordered


def _may_be_atom(node: fx.Node, group: Fused | None, root: nn.Module) -> bool:
    base = group.info["atom"] if group is not None and group.kind == "scaled_atom" else node
    if base.op == "call_module":
        return isinstance(root.get_submodule(base.target), nn.Embedding)
    return base.op == "call_function" and (base.target is torch.nn.functional.embedding
                                           or base.target is torch.ops.aten.embedding.default)


def _backward(records: list[_Record]) -> None:
    for record in records:
        record.down = record.design_down = 0.0
    for record in reversed(records):
        if record.kind == "output":
            for inp in record.inputs:
                inp.down += 1.0
                inp.design_down += 1.0
            continue
        for inp, c, d in zip(record.inputs, record.lipschitz, record.design):
            inp.down += _times(record.down, c)
            inp.design_down += _times(record.design_down, d)


# ------------------------------------------------------------------------------------------- masses, layers
def _roles(records: list[_Record]) -> dict[int, str]:
    is_atom = {id(r): r.kind == "atom" and r.semantics.atom.kind != "Gain" for r in records}
    up: dict[int, bool] = {}
    for r in records:
        up[id(r)] = any(is_atom[id(i)] or up[id(i)] for i in r.inputs)
    down: dict[int, bool] = {id(r): False for r in records}
    for r in reversed(records):
        for i in r.inputs:
            down[id(i)] = down[id(i)] or is_atom[id(r)] or down[id(r)]
    roles = {}
    for r in records:
        if is_atom[id(r)]:
            roles[id(r)] = "input" if not up[id(r)] else ("output" if not down[id(r)] else "hidden")
    return roles


def _masses(atoms: list[_Record], roles: dict[int, str], options: Options, names: dict[int, str]) -> dict[int, float]:
    masses: dict[int, float] = {}
    counted = [a for a in atoms if a.semantics.atom.kind != "Gain"]
    if options.mass == "uniform":
        masses = {id(a): 1.0 for a in counted}
    elif options.mass == "roles":
        groups: dict[str, list[_Record]] = {"input": [], "hidden": [], "output": []}
        for a in counted:
            groups[roles[id(a)]].append(a)
        totals = {"input": 1.0, "output": 1.0, "hidden": options.hidden_mass}
        for role, members in groups.items():
            for a in members:
                masses[id(a)] = totals[role] / len(members)
    else:
        raise ModnormError(f"unknown mass scheme `{options.mass}`", "use --mass roles or --mass uniform")
    for a in atoms:
        masses.setdefault(id(a), 0.0)
    for pattern, total in options.mass_of:
        matched = [a for a in atoms if fnmatch.fnmatchcase(names[id(a)], pattern)]
        if not matched:
            raise ModnormError(f"the mass override `{pattern}={total:g}` matches no atom",
                               "check the module path glob against the report's layer names")
        for a in matched:  # like Modula's tare: the matching atoms together get `total`
            masses[id(a)] = total / len(matched)
    return masses


def _layer_name(record: _Record) -> str:
    weight = record.semantics.atom.weight
    return weight[: -len(".weight")] if weight.endswith(".weight") else weight


def _layers(records: list[_Record], ctx: _Context) -> tuple[list[Layer], float]:
    atoms = [r for r in records if r.kind == "atom"]
    roles = _roles(records)
    names = {id(a): _layer_name(a) for a in atoms}
    masses = _masses(atoms, roles, ctx.options, names)
    total = sum(masses.values())
    layers = []
    for a in atoms:
        spec = a.semantics.atom
        mass = masses[id(a)]
        share = mass / total if total > 0 else 0.0
        target = share / a.design_down if a.design_down > 0 else (math.inf if share > 0 else 0.0)
        owner = spec.weight.rsplit(".", 1)[0] if "." in spec.weight else ""
        try:
            owner_module = ctx.root.get_submodule(owner) if owner else None
        except AttributeError:
            owner_module = None
        module_type = type(owner_module).__name__ if owner_module is not None else ""
        file, line = call_site(a.node, owner_module, ctx.user_file)
        layers.append(Layer(
            name=names[id(a)], kind=spec.kind, shape=spec.shape, role=roles.get(id(a), "gain"), mass=mass,
            mass_share=share, sensitivity=a.lipschitz[0] if a.lipschitz else spec.norm,
            downstream_sensitivity=a.down, design_downstream_sensitivity=a.design_down, target_norm=target,
            norm_at_init=spec.norm, norm_source=spec.norm_source, scale=spec.scale,
            certified=a.semantics.certified, op=a.node.name, weight=spec.weight, params=spec.params,
            file=file, line=line, module_type=module_type, defined_at=_definition(ctx.root, owner),
            predicted_norm=_predicted_norm(ctx.weights, spec), norm_factor=spec.factor, groups=spec.groups))
    return layers, total


def _predicted_norm(weights: WeightStore, spec: Any) -> float | None:
    """The norm the recorded init law predicts for a measured atom (same formula, the law's σ in place of the
    measured one)."""
    measured = weights.measured.get(spec.weight)
    predicted = weights.predicted.get(spec.weight)
    if measured is None or predicted is None or spec.norm_source != "measured" or measured == 0:
        return None
    return spec.norm * predicted / measured


def _definition(root: nn.Module, path: str) -> tuple[str, int] | None:
    """Where the module at `path` is created in its owner's __init__, best effort: `self.attn = ...`, or the
    key `wte=` / `"wte":` of a ModuleDict. An index inside a ModuleList/Sequential points at the container's line.
    """
    import inspect
    import re

    containers = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
    parts = path.split(".") if path else []
    while parts:
        attr, parent_path = parts[-1], ".".join(parts[:-1])
        parts = parts[:-1]
        try:
            parent = root.get_submodule(parent_path)
        except AttributeError:
            return None
        if attr.isdigit() or (isinstance(parent, containers) and type(parent) in containers):
            if isinstance(parent, nn.ModuleDict) and parts:
                found = _assignment(type(root.get_submodule(".".join(parts[:-1]))),
                                    rf"(\b{re.escape(attr)}\s*=(?!=)|['\"]{re.escape(attr)}['\"]\s*:)")
                if found:
                    return found
            continue
        return _assignment(type(parent), rf"\bself\.{re.escape(attr)}\b[^=\n]*=(?!=)")
    return None


@functools.lru_cache(maxsize=None)
def _assignment(owner: type, pattern: str) -> tuple[str, int] | None:
    """The first line of `owner.__init__` matching `pattern` (cached: one parse per class, not per layer)."""
    import inspect
    import re

    try:
        lines, start = inspect.getsourcelines(owner.__init__)
        file = inspect.getsourcefile(owner.__init__)
    except (OSError, TypeError):
        return None
    if file is None or "/torch/" in file:
        return None
    regex = re.compile(pattern)
    return next(((file, start + i) for i, text in enumerate(lines) if regex.search(text)), None)


def _mass_groups(layers: list[Layer]) -> tuple[MassGroup, ...]:
    """Mass shares by role (input / hidden / output) and by top-level block (`blocks.3`, `lm_head`)."""
    groups: dict[tuple[str, str], list[Layer]] = {}
    for layer in layers:
        if layer.mass <= 0 and layer.role == "gain":
            continue
        groups.setdefault(("role", layer.role), []).append(layer)
    for layer in layers:
        if layer.mass > 0:
            groups.setdefault(("block", _block_of(layer.name)), []).append(layer)
    return tuple(MassGroup(by, name, len(members), sum(l.mass for l in members), sum(l.mass_share for l in members))
                 for (by, name), members in groups.items())


def _block_of(name: str) -> str:
    """The top-level block of a module path: through the first index (`transformer.h.3`), else two parts."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


# ------------------------------------------------------------------------------------------- residual merges
def _strip_scalars(record: _Record) -> tuple[_Record, float]:
    coefficient = 1.0
    while (record.semantics is not None and "scalar" in record.semantics.tags and len(record.inputs) == 1
           and "factor" in record.semantics.info):
        coefficient *= record.semantics.info["factor"]
        record = record.inputs[0]
    return record, coefficient


def _between(skip: _Record, branch: _Record) -> list[_Record] | None:
    """Records on paths from `skip` to `branch` (inclusive of branch), or None if branch does not depend on skip."""
    seen: dict[int, _Record] = {}
    todo = [branch]
    reaches = False
    while todo:
        current = todo.pop()
        if id(current) in seen or current.index < skip.index:
            continue
        if current is skip:
            reaches = True
            continue
        seen[id(current)] = current
        todo.extend(current.inputs)
    if not reaches:
        return None
    return sorted(seen.values(), key=lambda r: r.index)


def _branch_sensitivity(skip: _Record, block: list[_Record], design: bool) -> float:
    sens = {id(skip): 1.0}
    for record in block:
        constants = record.design if design else record.lipschitz
        sens[id(record)] = sum(_times(c, sens.get(id(i), 0.0)) for i, c in zip(record.inputs, constants))
    return sens[id(block[-1])]


def _stream_source(record: _Record) -> str:
    """Walk back through single-input bonds (relu after the add, dropout) to the op that feeds the stream."""
    while (record.kind == "bond" and len(record.inputs) == 1 and record.semantics is not None
           and not {"normalization", "merge"} & set(record.semantics.tags)):
        record = record.inputs[0]
    return record.node.name


def _merges(records: list[_Record], ctx: _Context) -> tuple[list[Merge], list[Stream]]:
    records_by_name = {r.node.name: r for r in records}
    merges: list[Merge] = []
    for record in records:
        if record.semantics is None or "merge" not in record.semantics.tags or len(record.inputs) != 2:
            continue
        (x_a, a), (x_b, b) = (_strip_scalars(i) for i in record.inputs)
        if record.node.target in (operator.sub, torch.sub, "sub"):
            b = -b
        for skip, skip_c, branch, branch_c in ((x_a, a, x_b, b), (x_b, b, x_a, a)):
            if skip is branch:
                continue
            block = _between(skip, branch)
            if block is None or not any(r.kind == "atom" for r in block):
                continue
            file, line = node_location(record.node, ctx.user_file)
            merges.append(Merge(
                op=record.node.name, skip=skip.node.name, branch=branch.node.name, skip_coefficient=skip_c,
                branch_coefficient=branch_c, branch_sensitivity=_branch_sensitivity(skip, block, False),
                design_branch_sensitivity=_branch_sensitivity(skip, block, True), module=record.module,
                file=file, line=line))
            break
    by_output = {m.op: m for m in merges}
    previous = {m.op: _stream_source(records_by_name[m.skip]) for m in merges}
    followers = {previous[m.op]: m for m in merges if previous[m.op] in by_output}
    streams = []
    starts = [m for m in merges if previous[m.op] not in by_output]
    for start in starts:
        chain, current = [start.op], start
        while current.op in followers:
            current = followers[current.op]
            chain.append(current.op)
        streams.append(Stream(tuple(chain)))
    return merges, streams


# ----------------------------------------------------------------------------------------------- entry point
def analyze_traced(traced: TracedModel, options: Options = Options(), user_file: str | None = None,
                   entry: str | None = None, device: str = "meta", init_laws: dict[str, Any] | None = None,
                   checkpoint: Any = None) -> Analysis:
    """Run the calculus on a traced model and return the plain `Analysis`.

    `init_laws` (from `initlaw.record_init` around a meta build) predicts the norms of meta parameters.
    """
    root = traced.root
    store = WeightStore(root, init_laws, checkpoint)
    store.graph_module = traced.graph_module
    ctx = _Context(root, store, options, user_file,
                   {name for name, _ in root.named_parameters(remove_duplicate=False)})
    records = _forward(traced, ctx)
    _backward(records)
    layers, total_mass = _layers(records, ctx)
    merges, streams = _merges(records, ctx)
    triples = sharpness.propagate(records, layers, options.profile)
    streams = [replace(st, alphas=tuple(triples[id(r)].alpha for r in _records_named(records, st.merges)))
               for st in streams]
    ops = tuple(_op(r, ctx, triples[id(r)]) for r in records)
    sharp, loss = _sharpness(records, triples, ctx)
    network = replace(_network(records, layers, total_mass, ctx), tied_weights=_tied(root),
                      mass_groups=_mass_groups(layers), sharpness=sharp, loss=loss,
                      block_sharpness=_block_sharpness(records, layers, ctx))
    parameters = sum(p.numel() for p in root.parameters())
    info = ModelInfo(user_file, entry, traced.tracer, device, parameters, len(records), tuple(traced.attempts))
    analysis = Analysis(info, options.profile, options.mass, options.hidden_mass, tuple(layers), ops,
                        tuple(merges), tuple(streams), network)
    if traced.tracer == "modules":
        from .module_only import withhold_graph_quantities

        analysis = withhold_graph_quantities(analysis, traced.skipped)
    return analysis


def _tied(root: nn.Module) -> tuple[tuple[str, ...], ...]:
    names: dict[int, list[str]] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return tuple(tuple(group) for group in names.values() if len(group) > 1)


def _records_named(records: list[_Record], names: Iterable[str]) -> list[_Record]:
    by_name = {r.node.name: r for r in records}
    return [by_name[n] for n in names]


def _sharpness(records: list[_Record], triples: dict, ctx: _Context) -> tuple[Sharpness | None, LossBound | None]:
    output = next((r for r in records if r.kind == "output"), None)
    if output is None:
        return None, None
    t = triples[id(output)]
    reason = ""
    if t.blocker is not None:
        blocker = t.blocker
        file, line = node_location(blocker.node, ctx.user_file)
        where = f" at {short_path(file)}:{line}" if file else ""
        sem = blocker.semantics
        why = "non-smooth" if sem is not None and not sem.smooth else \
            (sem.reason if sem is not None and sem.reason else "no second-order bound derived")
        reason = f"{blocker.semantics.label or blocker.target if blocker.semantics else blocker.target}{where}: {why}"
    elif not t.certified:
        reason = "a first-order constant on the way is unbounded"
    sharp = Sharpness(t.alpha, t.beta, t.gamma, t.A, t.certified, reason, ctx.options.profile == "modula")
    width = _output_width(output)
    upper = sum(i.bounds.upper for i in output.inputs)
    sigma, tau, norm = sharpness.loss_constants(ctx.options.loss, width, upper)
    lipschitz = _times(sigma, t.alpha) + _times(tau, t.A * t.A) if t.certified else math.inf
    step = 1 / lipschitz if lipschitz > 0 else math.inf
    return sharp, LossBound(ctx.options.loss, sigma, tau, norm, lipschitz, step)


def _block_sharpness(records: list[_Record], layers: list[Layer], ctx: _Context) -> tuple[BlockSharpness, ...]:
    """Each top-level block (`blocks.3`, `transformer.h.0`) with atoms, in its own norm (sharpness.submodule)."""
    modules = dict(ctx.root.named_modules())
    blocks = [b for b in dict.fromkeys(_block_of(layer.name) for layer in layers if layer.mass > 0)
              if b in modules and b != ""]
    members: dict[str, list[_Record]] = {b: [] for b in blocks}
    users: dict[int, list[_Record]] = {}
    for r in records:  # one pass: each record to the block whose path prefixes its module path
        for i in r.inputs:
            users.setdefault(id(i), []).append(r)
        if r.kind in ("input", "output"):
            continue
        parts = r.module.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in members:
                members[".".join(parts[:end])].append(r)
                break
    out = []
    for name in blocks:
        t = sharpness.submodule(records, layers, name, ctx.options.profile, members[name], users)
        if t is not None:
            out.append(BlockSharpness(name, t.alpha, t.beta, t.gamma, t.A, t.S, t.certified))
    return tuple(out)


def _output_width(output: _Record) -> int:
    for record in output.inputs:
        value = record.node.meta.get("value")
        if isinstance(value, torch.Tensor) and value.dim():
            fdim = record.bounds.fdim if record.bounds.fdim is not None else -1
            return int(value.shape[fdim])
    return 1


def _op(record: _Record, ctx: _Context, triple: Any = None) -> Op:
    sem = record.semantics
    file, line = node_location(record.node, ctx.user_file)
    return Op(
        name=record.node.name, target=record.target or record.node.op, kind=record.kind,
        inputs=tuple(i.node.name for i in record.inputs), lipschitz=record.lipschitz,
        downstream_sensitivity=record.down, upper=record.bounds.upper, lower=record.bounds.lower,
        certified=sem.certified if sem else True, reason=sem.reason if sem else "", source=sem.source if sem else "",
        module=record.module, file=file, line=line, tags=sem.tags if sem else (),
        nominal=sem.nominal if sem else None, smooth=sem.smooth if sem else True,
        curvature=sem.curvature if sem else 0.0, info=dict(sem.info) if sem else {},
        sharpness=(triple.alpha, triple.beta, triple.gamma) if triple is not None else None,
        weight_sensitivity=triple.A if triple is not None else 0.0)


def _network(records: list[_Record], layers: list[Layer], total_mass: float, ctx: _Context) -> Network:
    inputs = [r for r in records if r.kind == "input"]
    continuous = {r.node.name: r.down for r in inputs if not r.bounds.discrete}
    design_continuous = [r.design_down for r in inputs if not r.bounds.discrete]
    convention = "max over continuous inputs of S_down(input) (sum norm on the input tuple)"
    if continuous:
        sensitivity, design = max(continuous.values()), max(design_continuous)
    else:  # token ids: measure from the embedding lookups, as Modula's Embedding and Enumerate do
        embeddings = [r for r in records if r.kind == "atom" and r.semantics.atom.kind == "Embedding"]
        sensitivity = sum(_times(r.down, r.lipschitz[0] if r.lipschitz else r.semantics.atom.norm) for r in embeddings)
        design = sum(_times(r.design_down, r.semantics.atom.norm) for r in embeddings)
        convention = ("discrete input: sum over embedding lookups (token ids and positions alike) of "
                      "S_down(embedding) x its l1->RMS norm, as Modula counts Embedding and Enumerate")
    reasons, unknown, assumptions = [], [], []
    for r in records:
        sem = r.semantics
        if sem is None:
            continue
        file, line = node_location(r.node, ctx.user_file)
        where = f"{file}:{line}" if file else r.node.name
        if sem.kind == "unknown":
            unknown.append(f"{r.target} at {where}")
        if not sem.certified and r.down > 0:
            reasons.append(f"{sem.label or r.target} at {where}: {sem.reason}")
        if sem.info.get("assumption"):
            assumptions.append(f"{sem.label} at {where}: {sem.info['assumption']}")
    modular_norm = max((l.weighted_norm for l in layers if l.mass > 0), default=math.nan)
    finite = math.isfinite(sensitivity)
    if not finite and not reasons:
        reasons.append("a path from the input carries an unbounded constant")
    return Network(mass=total_mass, sensitivity=sensitivity, design_sensitivity=design,
                   certified=finite and not reasons, uncertified_reasons=tuple(dict.fromkeys(reasons)),
                   unknown_ops=tuple(dict.fromkeys(unknown)), assumptions=tuple(dict.fromkeys(assumptions)),
                   input_sensitivities=continuous, input_convention=convention, modular_norm_at_init=modular_norm)
