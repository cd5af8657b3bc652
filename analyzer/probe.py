"""`modnorm probe`: measure on real weights what the calculus bounds, and print bound, measured and tightness.

Every measurement is a lower estimate of the true supremum (power iteration, random and improved directions), so
measured ≤ bound must hold; a measurement above its bound is a bug in modnorm and is reported in red with the op.

* input Lipschitz constant of the network (power iteration on JᵀJ with jvp/vjp, max-position RMS norms);
* the well-normedness inequality ‖D_w f[Δw]‖ ≤ A for updates of modular norm 1 (each atom at its target);
* per atom, its linearised output change ‖D_{w_i} f[Δw_i]‖ ≤ S_down(i)·R(x_i)·t_i, and its share of the total
  next to its mass share (Proposition 3, docs/theory/modular-norm.md#mass);
* the RMS entering every normalization next to the floor the profile used, and every stated assumption (the
  `assumed` profile's floors, --norm-input-rms) checked: an input RMS below its assumed floor is a violated
  assumption (the figures conditioned on it do not hold at these inputs), reported as a finding, not a bug;
* for smooth models, the weight–weight second derivative next to α.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch.func import functional_call, jvp, vjp

from .atoms import AtomKind, make_atom
from .result import Analysis, Layer

__all__ = ["Probe", "Row", "probe", "block_rows"]


@dataclass(frozen=True)
class Row:
    what: str
    bound: float
    measured: float
    note: str = ""
    op: str = ""
    kind: str = "bound"  # "bound": measured must stay below; "compare": two figures side by side (shares);
    # "assumption": a stated floor (bound) that the measured value must stay at or above; "ceiling": a stated
    # ceiling it must stay at or below

    @property
    def tightness(self) -> float:
        return self.measured / self.bound if self.bound and math.isfinite(self.bound) else math.nan

    @property
    def violated(self) -> bool:  # a NaN measurement verifies nothing: it counts as a violation, never a pass
        return self.kind == "bound" and (self.measured != self.measured
                                         or self.measured > self.bound * (1 + 1e-6) + 1e-12)

    @property
    def assumption_broken(self) -> bool:
        """A stated assumption that does not hold at the measured inputs (NaN counts as not holding)."""
        if self.kind == "ceiling":
            return not (self.measured <= self.bound * (1 + 1e-9))
        return self.kind == "assumption" and not (self.measured >= self.bound * (1 - 1e-9))


@dataclass(frozen=True)
class Probe:
    rows: tuple[Row, ...]
    notes: tuple[str, ...]

    @property
    def violations(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.violated)

    @property
    def broken_assumptions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.assumption_broken)


def _rms_max(t: torch.Tensor, fdim: int | None = None) -> torch.Tensor:
    """The max over positions of the RMS over features; by default features are the channels of an NCHW tensor
    and the last axis otherwise, the calculus's convention for inputs and convolution outputs."""
    fdim = _feature_axis(t) if fdim is None or fdim >= t.dim() else fdim
    return t.movedim(fdim, -1).pow(2).mean(-1).sqrt().max()


def _feature_axis(t: torch.Tensor) -> int:
    return 1 if t.dim() == 4 else -1


def _output_rms(t: torch.Tensor, analysis: Analysis) -> torch.Tensor:
    """The network output's max-position RMS over the axis the analysis measured it on."""
    return _rms_max(t, analysis.output_axis)


def _input_axis(inputs: tuple, i: int, analysis: Analysis) -> int:
    """The feature axis of network input i as the analysis measured it (channels when a convolution reads it)."""
    axes = analysis.input_axes
    axis = axes[i] if i < len(axes) else None
    return axis if axis is not None and axis < inputs[i].dim() else _feature_axis(inputs[i])


def _output(y: Any) -> torch.Tensor:
    """The first floating-point tensor of a model's output (logits of `(logits, loss)`)."""
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (tuple, list)):
        return next(_output(v) for v in y if _output(v) is not None)
    if isinstance(y, dict):
        return next(_output(v) for v in y.values() if _output(v) is not None)
    return None


def _natural_norm(layer: Layer, weight: torch.Tensor) -> float:
    """‖weight‖ in the atom's natural norm: the analysis's factor (shape, groups, storage order, scale) × raw norm."""
    return layer.norm_factor * make_atom(layer.kind, layer.shape, layer.scale, layer.groups).raw_norm(weight)


def probe(model: torch.nn.Module, inputs: tuple[Any, ...], analysis: Analysis, *, trials: int = 4,
          steps: int = 20, seed: int = 0) -> Probe:
    """Measure the model at its real weights (it must not be on the meta device)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from . import TRACING_LOCK
    from .errors import ModnormError

    if any(p.is_meta for p in model.parameters()):
        raise ModnormError("probe needs real weights, but the model is on the meta device",
                           "build it on the CPU (it must fit in memory) or pass --weights CHECKPOINT")
    if trials < 1:
        raise ModnormError(f"trials={trials} measures nothing", "pass trials=1 or more")
    bad = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:  # every measurement would be NaN, and NaN > bound is False: it must not pass
        raise ModnormError(f"parameter `{bad}` has non-finite values (NaN or Inf)",
                           "probe a model with finite weights; check the checkpoint or the init")
    # A copy in float64 and eval mode; the caller's model, mode and RNG are left as they were.
    import copy

    with TRACING_LOCK, torch.random.fork_rng(devices=[]), sdpa_kernel(SDPBackend.MATH), _no_mha_fastpath():
        return _probe(copy.deepcopy(model), inputs, analysis, trials, steps, seed)  # fused kernels: no forward AD


def block_rows(model: torch.nn.Module, inputs: tuple[Any, ...], analysis: Analysis, *, trials: int = 2,
               steps: int = 10, seed: int = 0) -> list[Row]:
    """Only the per-block rows of `probe` (each residual block's measured Lipschitz constant next to its bound),
    for inputs already in the unit ball the bounds assume."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from . import TRACING_LOCK

    import copy

    notes: list[str] = []
    with TRACING_LOCK, torch.random.fork_rng(devices=[]), sdpa_kernel(SDPBackend.MATH), _no_mha_fastpath():
        torch.manual_seed(seed)
        model = copy.deepcopy(model).double().eval()
        inputs = tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)
        return _block_rows(_Retraced(model, inputs), analysis, steps, trials, notes)


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention / nn.TransformerEncoderLayer in eval mode take a fused fast path
    (aten::_transformer_encoder_layer_fwd) that has no forward-mode AD; the plain path computes the same function."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _probe(model: torch.nn.Module, inputs: tuple[Any, ...], analysis: Analysis, trials: int, steps: int,
           seed: int) -> Probe:
    torch.manual_seed(seed)
    model = model.double().eval()
    inputs = tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)
    notes: list[str] = []
    continuous = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    fdim = _input_axis(inputs, continuous[0], analysis) if continuous else -1
    if continuous:  # the bounds assume inputs in the unit ball of the max-position RMS norm
        i = continuous[0]
        size = float(_rms_max(inputs[i], fdim))
        if size > 1:
            inputs = tuple(x / size if j == i else x for j, x in enumerate(inputs))
            notes.append(f"input {i} rescaled by 1/{size:.3g} into the unit ball the bounds assume")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def run(p: dict[str, torch.Tensor], *xs: Any) -> torch.Tensor:
        return _output(functional_call(model, p, xs))

    rows: list[Row] = []
    if continuous:
        rows.append(_input_lipschitz(run, params, inputs, continuous[0], fdim, analysis, steps, trials))
    else:
        notes.append("token-id inputs: no input Lipschitz constant to measure (ids are not perturbed)")
    atoms = [l for l in analysis.layers if l.mass > 0 and l.weight in params and l.kind != AtomKind.GAIN]
    rows += _weight_rows(run, params, inputs, atoms, analysis, trials)
    rows += _normalization_rows(model, inputs, analysis)
    retraced = _Retraced(model, inputs)
    rows += _assumption_rows(retraced, inputs, analysis, notes)
    rows += _block_rows(retraced, analysis, steps, trials, notes)
    if analysis.network.sharpness is not None and analysis.network.sharpness.certified and atoms:
        rows.append(_alpha_row(run, params, inputs, atoms, analysis, trials))
    if any(r.assumption_broken for r in rows):  # the bounds are conditioned on it: compared, not asserted, here
        rows = [replace(r, kind="compare", note=f"{r.note}; rests on a violated assumption") if r.kind == "bound"
                else r for r in rows]
        notes.append("an assumption does not hold at these inputs: the bounds conditioned on it are shown, not "
                     "asserted (rerun with --profile certified for unconditional bounds)")
    return Probe(tuple(rows), tuple(notes))


def _input_lipschitz(run: Callable, params: dict, inputs: tuple, i: int, fdim: int, analysis: Analysis,
                     steps: int, trials: int) -> Row:
    def f(x: torch.Tensor) -> torch.Tensor:
        return run(params, *(x if j == i else v for j, v in enumerate(inputs)))

    best = 0.0
    for _ in range(trials):
        v = torch.randn_like(inputs[i])
        for _ in range(steps):
            v = v / v.norm()
            _, jv = jvp(f, (inputs[i],), (v,))
            best = max(best, float((_output_rms(jv, analysis) / _rms_max(v, fdim)).detach()))
            _, pullback = vjp(f, inputs[i])
            (v,) = pullback(jv)
    return Row("network input Lipschitz (sensitivity)", analysis.network.sensitivity, best,
               "power iteration on JᵀJ")


def _direction(atoms: list, params: dict, scale_to_target: bool) -> dict[str, torch.Tensor]:
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for layer in atoms:
        d = torch.randn_like(params[layer.weight])
        norm = _natural_norm(layer, d)
        out[layer.weight] = d * ((layer.target_norm if scale_to_target else 1.0) / norm)
    return out


def _weight_rows(run: Callable, params: dict, inputs: tuple, atoms: list, analysis: Analysis,
                 trials: int) -> list[Row]:
    rows = []
    sharp = analysis.network.sharpness
    if sharp is not None and atoms and all(math.isfinite(l.target_norm) for l in atoms):
        best = 0.0
        for _ in range(trials):
            d = _direction(atoms, params, True)
            _, change = jvp(lambda p: run(p, *inputs), (params,), (d,))
            best = max(best, float(_output_rms(change, analysis)))
        rows.append(Row("update of modular norm 1: output change ≤ A", sharp.weight_sensitivity, best,
                        "well-normedness (A = 1 for a well-normed network)"))
    contributions = {}
    for layer in atoms:
        R = analysis.atom_input_radius(layer)
        best = 0.0
        for _ in range(trials):
            d = {k: torch.zeros_like(v) for k, v in params.items()}
            d[layer.weight] = _direction([layer], params, True)[layer.weight]
            _, change = jvp(lambda p: run(p, *inputs), (params,), (d,))
            best = max(best, float(_output_rms(change, analysis)))
        contributions[layer.name] = best
        bound = layer.downstream_sensitivity * R * layer.target_norm
        rows.append(Row(f"atom {layer.name}: output change at its target", bound, best,
                        "‖D_w f[Δw_i]‖ ≤ S_down·R·t_i", op=layer.op))
    total = sum(contributions.values())
    if total > 0:
        for layer in atoms:
            rows.append(Row(f"atom {layer.name}: share of the output change", layer.mass_share,
                            contributions[layer.name] / total, "mass share (bound column) vs measured share",
                            op=layer.op, kind="compare"))
    return rows


def _normalization_rows(model: torch.nn.Module, inputs: tuple, analysis: Analysis) -> list[Row]:
    """The smallest RMS entering each normalization module, next to the floor the certified bound used."""
    norm_types = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)
    modules = dict(model.named_modules())
    floors = {op.module: op for op in analysis.ops if "normalization" in op.tags and op.module
              and isinstance(modules.get(op.module), norm_types)}
    seen: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in floors:
            def hook(mod: Any, args: tuple, name: str = name) -> None:
                x = args[0]
                rms = x.detach().pow(2).mean(-1).sqrt().min()
                seen[name] = min(seen.get(name, math.inf), float(rms))
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, smallest in seen.items():
        op = floors[name]
        floor = op.rms_floor
        rows.append(Row(f"normalization {name}: input RMS (min over positions)", floor, smallest,
                        f"{analysis.profile} profile: floor (eps included); ≥ 1 is Modula's assumption", op=op.name,
                        kind="compare"))
    return rows


class _Retraced:
    """The model's graph traced again (once, when first asked), its node names those of the analysis's ops."""

    def __init__(self, model: torch.nn.Module, inputs: tuple) -> None:
        self.model, self.inputs = model, inputs
        self._graph_module: Any = None
        self.failure: str | None = None

    @property
    def graph_module(self) -> Any:
        if self._graph_module is None and self.failure is None:
            from .routes import trace

            try:
                self._graph_module = trace(self.model, self.inputs).graph_module
            except Exception as exc:  # noqa: BLE001 - what needs the graph is then not measured, and said so
                self.failure = f"the model could not be traced again ({type(exc).__name__})"
        return self._graph_module


def _assumption_rows(retraced: _Retraced, inputs: tuple, analysis: Analysis, notes: list[str]) -> list[Row]:
    """Each stated assumption (a floor on the (centred) RMS entering a normalizer) against the smallest value seen
    at these inputs: the graph is traced again and run (floors.measure), the normalizer's input read by op name."""
    from .floors import measure
    from .report import assumption_rows

    stated = assumption_rows(analysis)
    if not stated:
        return []
    graph_module = retraced.graph_module
    seen = measure(graph_module, inputs, axes=analysis.input_axes) if graph_module is not None else {}
    if graph_module is None:
        notes.append(f"assumptions not checked: {retraced.failure}")
    inputs_of = {op.name: op.inputs for op in analysis.ops}
    rows = []
    for row in stated:
        source = (inputs_of.get(row["op"]) or ("",))[0]
        if row["limit"] == "ceiling" or row["quantity"].endswith("per group"):
            rows += _coupled_row(row, seen, source, analysis, notes)
            continue
        stats = seen.get(source)
        if stats is None:
            notes.append(f"assumption at {row['module'] or row['op']} not checked: its input was not measured")
            continue
        value = stats[1] if "centred" in row["quantity"] else stats[0]
        rows.append(Row(f"assumption {row['module'] or row['op']}: {row['quantity']} ≥ floor", row["floor"], value,
                        f"min over positions; {row['basis']} floor", op=row["op"], kind="assumption"))
    return rows


def _coupled_row(row: dict, seen: Any, source: str, analysis: Analysis, notes: list[str]) -> list[Row]:
    """A coupled normalizer's stated limit, computed from its kept input as the analysis computed it at init
    (ops_normalization.Coupling): a ceiling against the largest normalized-output RMS over positions and groups,
    a floor against the smallest group (centred) RMS."""
    from .ops_normalization import Coupling

    value = getattr(seen, "value", lambda name: None)(source)
    grouping = analysis.op(row["op"]).info.get("grouping")
    if value is None or grouping is None:
        notes.append(f"assumption at {row['module'] or row['op']} not checked: its input was not kept")
        return []
    coupling, where = Coupling.from_grouping(grouping), row["module"] or row["op"]
    if row["limit"] == "ceiling":
        peak = coupling.peak(value, grouping["centred"], grouping["eps"])
        return [Row(f"assumption {where}: {row['quantity']} ≤ ceiling", row["ceiling"], peak,
                    f"max over positions and groups; {row['basis']} ceiling", op=row["op"], kind="ceiling")]
    smallest = coupling.group_rms(value, grouping["centred"])
    return [Row(f"assumption {where}: {row['quantity']} ≥ floor", row["floor"], smallest,
                f"min over groups; {row['basis']} floor", op=row["op"], kind="assumption")]


def _alpha_row(run: Callable, params: dict, inputs: tuple, atoms: list, analysis: Analysis, trials: int) -> Row:
    best = 0.0
    for _ in range(trials):
        d1, d2 = _direction(atoms, params, True), _direction(atoms, params, True)
        inner = lambda p: jvp(lambda q: run(q, *inputs), (p,), (d2,))[1]  # noqa: E731
        second = jvp(inner, (params,), (d1,))[1]
        best = max(best, float(_output_rms(second, analysis)))
    return Row("sharpness α: ‖D²_ww f[Δw, Δ̃w]‖", analysis.network.sharpness.alpha, best, "nested jvp")


def _block_rows(retraced: _Retraced, analysis: Analysis, steps: int, trials: int, notes: list[str]) -> list[Row]:
    """Per residual block y = a·x + b·f(x): its Lipschitz constant in x at the block's input at init (power
    iteration on the block's JᵀJ, everything else the block reads held at its value) next to the certified
    |a| + |b|·s_f the network figure is built from: the tightness of the calculus block by block."""
    if not analysis.merges:
        return []
    if analysis.model.tracer != "fx_values":
        notes.append(f"residual blocks not measured: the analysis read the model through {analysis.model.tracer}, "
                     "whose node names the probe cannot match")
        return []
    graph_module = retraced.graph_module
    if graph_module is None:
        notes.append(f"residual blocks not measured: {retraced.failure}")
        return []
    nodes = {n.name: n for n in graph_module.graph.nodes}
    values = _node_values(graph_module, retraced.inputs)
    rows = []
    for merge in analysis.merges:
        skip, out = nodes.get(merge.skip), nodes.get(merge.op)
        x = values.get(skip) if skip is not None else None
        if out is None or not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim()):
            notes.append(f"block {merge.module or merge.op} not measured: its input is not in the traced graph")
            continue
        block = _block_function(graph_module, values, skip, out)
        in_axis, out_axis = analysis.op(merge.skip).feature_axis, analysis.op(merge.op).feature_axis
        measured = _largest_gain(block, x, in_axis, out_axis, steps, trials)
        rows.append(Row(f"block {_block_label(merge, analysis)}: x ↦ a·x + b·f(x)", merge.block_sensitivity, measured,
                        "power iteration on the block's JᵀJ at its input at init", op=merge.op))
    return rows


def _block_label(merge: Any, analysis: Analysis) -> str:
    """The block's module and where its branch ends (`transformer.h.0 (… attn.c_proj)`): a block with two merges
    (attention, then MLP) has a row for each."""
    branch = analysis.op(merge.branch).module
    prefix = f"{merge.module}."
    end = branch[len(prefix):] if merge.module and branch.startswith(prefix) else branch
    return f"{merge.module or merge.op} (f ends at {end})" if end else merge.module or merge.op


def _node_values(graph_module: Any, inputs: tuple) -> dict[Any, Any]:
    """Every node's value when the graph runs on `inputs` (kept, not freed as the interpreter goes)."""
    import torch.fx as fx

    interpreter = fx.Interpreter(graph_module, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*inputs)
    return dict(interpreter.env)


def _block_function(graph_module: Any, values: dict, skip: Any, out: Any) -> Callable:
    """z ↦ the value of `out` when `skip` takes the value z: the nodes between them that depend on `skip` are run
    again, every other input of the block keeps its recorded value."""
    import torch.fx as fx

    order = list(graph_module.graph.nodes)
    depends, chain = {skip}, []
    for node in order[order.index(skip) + 1: order.index(out) + 1]:
        if any(a in depends for a in node.all_input_nodes):
            depends.add(node)
            chain.append(node)

    def block(z: torch.Tensor) -> torch.Tensor:
        interpreter = fx.Interpreter(graph_module, garbage_collect_values=False)
        interpreter.env = {**values, skip: z}
        for node in chain:
            interpreter.env[node] = interpreter.run_node(node)
        return interpreter.env[out]

    return block


def _largest_gain(f: Callable, x: torch.Tensor, in_axis: int | None, out_axis: int | None, steps: int,
                  trials: int) -> float:
    """A lower estimate of the largest ‖J v‖ / ‖v‖ of f at x in the max-position RMS norms over the given axes."""
    best = 0.0
    for _ in range(trials):
        v = torch.randn_like(x)
        for _ in range(steps):
            v = v / v.norm()
            _, jv = jvp(f, (x,), (v,))
            best = max(best, float((_rms_max(jv, out_axis) / _rms_max(v, in_axis)).detach()))
            _, pullback = vjp(f, x)
            (v,) = pullback(jv)
    return best
