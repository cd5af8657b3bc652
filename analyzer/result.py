"""The plain result of an analysis. Rules and reports read only these objects, never fx or torch."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Assumption", "Op", "Layer", "Merge", "Stream", "Network", "MassGroup", "Sharpness", "BlockSharpness", "LossBound", "Analysis", "Finding", "Severity",
           "ModelInfo", "OpConstant", "RouteAttempt"]


@dataclass(frozen=True)
class Assumption:
    """A stated, checkable condition a constant rests on: a floor on the RMS entering a normalizer, or (`limit`
    "ceiling") a ceiling on a coupled normalizer's output."""

    quantity: str  # "input RMS" | "input centred RMS" | "normalized output RMS per position and group"
    floor: float  # the bound: a floor, or the ceiling when limit == "ceiling"
    at_init: float | None  # the value at init the bound was derived from (None when stated by the user)
    basis: str  # "measured" | "predicted" | "stated"
    text: str  # the sentence the report prints
    limit: str = "floor"  # "floor": the quantity stays at or above it; "ceiling": at or below

    def holds(self, value: float) -> bool:
        """Whether a measured value satisfies the assumption (NaN never does)."""
        if self.limit == "ceiling":
            return value <= self.floor * (1 + 1e-9)
        return value >= self.floor * (1 - 1e-9)


@dataclass(frozen=True)
class Op:
    """One node of the analysed graph (a fused pattern counts as one op)."""

    name: str  # fx node name
    target: str  # readable op name: "Linear", "torch.nn.functional.gelu", "method view", "attention (pattern)"
    kind: str  # "input" | "atom" | "bond" | "constant" | "unknown" | "output"
    inputs: tuple[str, ...]  # data inputs (op names)
    lipschitz: tuple[float, ...]  # per data input, profile constants
    downstream_sensitivity: float  # S_down of this op's output (path sum to the network output)
    upper: float  # RMS upper bound of the output (max over positions)
    lower: float
    certified: bool
    reason: str
    source: str  # provenance of the constant
    module: str  # owning module path
    file: str | None
    line: int | None
    tags: tuple[str, ...] = ()
    nominal: tuple[float, ...] | None = None
    smooth: bool = True
    curvature: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    sharpness: tuple[float, float, float] | None = None  # (α, β, γ) of this op's output, sharpness.py
    weight_sensitivity: float = 0.0  # A: ||D_w v[Δw]|| per unit modular norm
    # typed facts of particular op families, for rules and reports (`info` keeps the registry's free-form notes)
    eps: float | None = None  # a normalizer's eps
    rms_floor: float = 0.0  # a normalizer's lower bound on sqrt(input mean square + eps), what its constant divides by
    assumption: Assumption | None = None  # what a normalizer's constant rests on (the `assumed` profile)
    ceiling: Assumption | None = None  # ... and, for one coupling positions, a ceiling on its normalized output
    attention_scale: float | None = None  # the logit multiplier of an attention op
    head_dim: int | None = None
    attention_operand_scale: float = 1.0  # multipliers written after the q and k atoms (`q_proj(x) * d**-0.5`)
    unmodelled_parameters: int = 0  # parameters of an unknown module: no mass, never silently absent
    unmodelled_share: float = 0.0  # ... as a share of the model's parameters
    design: tuple[float, ...] = ()  # per data input, the constants design sensitivities use (whatif.py re-runs them)
    feature_axis: int | None = None  # the axis the RMS of this op's output is taken over (None: discrete)

    @property
    def sensitivity(self) -> float:
        """The op's Lipschitz constant w.r.t. all its data inputs together (sum norm on the tuple)."""
        return max(self.lipschitz) if self.lipschitz else 0.0

    @property
    def design_constant(self) -> float:
        """The constant this op contributes to design sensitivities: a normalizer's gain (its nominal constant;
        its certified one is the eps floor's worst case), 1 for a layout (its certified bound is a worst case over
        layouts; feature vectors are kept), the profile constant otherwise."""
        if "layout" in self.tags or not self.lipschitz:
            return 1.0
        if self.design:  # what the calculus's design pass multiplies (whatif.py re-runs the same numbers)
            return max(self.design)
        if "normalization" in self.tags:
            return max(self.nominal) if self.nominal else 1.0
        return max(self.lipschitz)


@dataclass(frozen=True)
class Layer:
    """One atom: a parameterised op with its mass, sensitivity, downstream sensitivity and target."""

    name: str  # module path (or parameter name without ".weight")
    kind: str  # "Linear" | "Conv1d" | "Conv2d" | "Embedding" | "Gain"
    shape: tuple[int, ...]
    role: str  # "input" | "hidden" | "output"
    mass: float
    mass_share: float
    sensitivity: float  # the atom's input-Lipschitz bound = its effective operator norm
    downstream_sensitivity: float  # certified S_down(i)
    design_downstream_sensitivity: float  # S_down with normalizers at their well-normed value (for targets)
    target_norm: float  # t_i = (m_i / M) / S_down(i), docs/theory/modular-norm.md#targets
    norm_at_init: float  # the atom's natural norm, scale included
    norm_source: str  # "measured" | "predicted"
    scale: float  # constant forward multiplier fused into the atom
    certified: bool
    op: str  # op name in `Analysis.ops`
    weight: str  # qualified parameter name
    params: tuple[str, ...]
    file: str | None
    line: int | None
    module_type: str = ""
    defined_at: tuple[str, int] | None = None  # where the module is created (`self.fc = nn.Linear(...)`)
    predicted_norm: float | None = None  # measured atoms: what the recorded init law predicted
    norm_factor: float = 1.0  # natural norm = norm_factor × raw norm of the weight (semantics.AtomSpec.factor)
    groups: int = 1  # convolution groups
    frozen: bool = False  # no parameter requires a gradient: no mass, no target (a frozen base under LoRA)
    # log10 of the two S_down: finite whenever every constant on the paths is, even past float range (then the
    # float figures above are inf and these carry them)
    log10_downstream_sensitivity: float = math.nan
    log10_design_downstream_sensitivity: float = math.nan

    @property
    def weighted_norm(self) -> float:
        """This atom's term in the modular norm max_i ||w_i|| / t_i."""
        return self.norm_at_init / self.target_norm if self.target_norm > 0 else math.inf


@dataclass(frozen=True)
class Merge:
    """A residual merge y = a·x + b·f(x) found in the graph."""

    op: str
    skip: str  # op name of x (after stripping constant multipliers)
    branch: str  # op name of f(x)
    skip_coefficient: float  # a
    branch_coefficient: float  # b
    branch_sensitivity: float  # certified s_f
    design_branch_sensitivity: float  # s_f with normalizers at their well-normed value
    module: str
    file: str | None
    line: int | None

    @property
    def block_sensitivity(self) -> float:
        return abs(self.skip_coefficient) + abs(self.branch_coefficient) * self.branch_sensitivity

    @property
    def design_block_sensitivity(self) -> float:
        return abs(self.skip_coefficient) + abs(self.branch_coefficient) * self.design_branch_sensitivity


@dataclass(frozen=True)
class Stream:
    """A residual stream: a chain of merges, each one's skip input being the previous merge's output."""

    merges: tuple[str, ...]  # op names of the merges in order
    alphas: tuple[float, ...] = ()  # α of the stream after each merge: how sharpness grows per block
    log10_alphas: tuple[float, ...] = ()  # the same, finite past float range

    @property
    def depth(self) -> int:
        return len(self.merges)


@dataclass(frozen=True)
class Sharpness:
    """The network's (α, β, γ) and first-order bounds, docs/theory/sharpness.md (sharpness.py for the DAG rules)."""

    alpha: float
    beta: float
    gamma: float
    weight_sensitivity: float  # A = sup ||D_w f[Δw]|| over ||Δw||_M <= 1 (1 for a well-normed network)
    certified: bool
    reason: str  # why not certified: the first op without a second-order bound, with its location
    nominal: bool  # computed with Modula's nominal constants (--profile modula)
    # log10 of each figure: finite where the float overflowed (an 80-layer stack), inf only for an unbounded op
    log10_alpha: float = math.nan
    log10_beta: float = math.nan
    log10_gamma: float = math.nan
    log10_weight_sensitivity: float = math.nan


@dataclass(frozen=True)
class BlockSharpness:
    """A top-level block's (α, β, γ) in its own modular norm, and its first-order bounds."""

    name: str
    alpha: float
    beta: float
    gamma: float
    weight_sensitivity: float
    input_sensitivity: float
    certified: bool


@dataclass(frozen=True)
class LossBound:
    """Loss smoothness (σ, τ) and the Lipschitz constant of the loss gradient in the modular norm."""

    name: str
    sigma: float
    tau: float
    norm: str
    gradient_lipschitz: float  # σα + τA²
    safe_step: float  # 1 / (σα + τA²), in modular-norm units
    log10_gradient_lipschitz: float = math.nan  # finite past float range (the safe step is then 10^-this)


@dataclass(frozen=True)
class Network:
    mass: float
    sensitivity: float  # certified network sensitivity (path sum from the inputs)
    design_sensitivity: float
    certified: bool
    uncertified_reasons: tuple[str, ...]
    unknown_ops: tuple[str, ...]
    assumptions: tuple[str, ...]
    input_sensitivities: dict[str, float] = field(default_factory=dict)
    input_convention: str = ""
    modular_norm_at_init: float = math.nan
    tied_weights: tuple[tuple[str, ...], ...] = ()  # parameter names that are one tensor
    mass_groups: tuple["MassGroup", ...] = ()  # shares by role, then by top-level block
    sharpness: Sharpness | None = None
    loss: LossBound | None = None
    block_sharpness: tuple[BlockSharpness, ...] = ()
    log10_sensitivity: float = math.nan  # log10 of `sensitivity`, finite past float range (no overflow)
    log10_design_sensitivity: float = math.nan

    @property
    def certification(self) -> str:
        """"unconditional" (holds on the whole unit ball), "given assumptions" (holds where the listed floors hold:
        the default profile, --norm-input-rms) or "not certified" — the label every format prints beside the figure."""
        if not self.certified:
            return "not certified"
        return "given assumptions" if self.assumptions else "unconditional"


@dataclass(frozen=True)
class MassGroup:
    """The atoms of one role ("role") or one top-level block ("block") and their mass together."""

    by: str  # "role" | "block"
    name: str
    atoms: int  # trainable atoms (they carry the mass)
    mass: float
    share: float
    frozen: int = 0  # atoms of this group whose parameters are all frozen (counted apart: they have no mass)


@dataclass(frozen=True)
class OpConstant:
    """The non-atom ops of one kind whose design constants exceed 1, multiplied along the network (a CNN's three
    max-pools: 2 each, 8 together): what a high network sensitivity is made of, besides atoms and merges."""

    target: str  # the op's readable name ("MaxPool2d", "torch.nn.functional.gelu")
    count: int
    largest: float
    product: float


@dataclass(frozen=True)
class RouteAttempt:
    """One tracing route tried on the model: which, whether it got through, and where and why it stopped (or a note
    on how it read the model). MN904 and the report read these fields; `str()` is the sentence users see."""

    route: str  # "fx_values" | "export" | "oplog" | "modules" | "experts" (a rewrite before the routes)
    ok: bool
    detail: str = ""  # the problem (failed) or a note (ok)
    file: str | None = None  # where a failed route stopped, relative to the project
    line: int | None = None

    def __str__(self) -> str:
        where = f" at {self.file}:{self.line}" if self.file and self.line else ""
        return f"{self.route}: {'ok' if self.ok else 'failed'}{where}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class ModelInfo:
    file: str | None
    entry: str | None
    tracer: str
    device: str
    parameters: int
    nodes: int
    tracer_attempts: tuple[RouteAttempt, ...] = ()
    entry_line: int | None = None  # where the entry (factory, class or instance) is defined in the file
    weights: str = "init"  # "init" (the model's own initialisation) or the checkpoint audited (--weights)


class Severity(enum.StrEnum):
    """How bad a finding is; the one declaration (str-valued: JSON, config and comparisons with "error" unchanged).
    Declared from least to most severe, so `Severity.rank` orders them."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclass(frozen=True)
class Finding:
    """One rule violation, located in the user's code."""

    code: str
    name: str
    severity: Severity
    message: str
    fix: str
    module: str
    file: str | None
    line: int | None
    op: str = ""
    related: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Change:
    """A fix and what it would do, from the calculus re-run with it applied (whatif.py): one line of the report's
    "changes that matter most"."""

    code: str
    role: str  # module path with block indices starred: the fix is made once, in the block's code
    instances: int
    fix: str
    file: str | None
    line: int | None
    log10_sensitivity: tuple[float, float]  # network design sensitivity, before and after
    log10_spread: tuple[float, float]  # spread of the targets (largest / smallest), before and after
    removes: int  # findings at warning or above this removes, its own instances and the consequences naming it

    @property
    def gain(self) -> float:
        """Orders of magnitude the change brings the two figures toward the paper's design point (design
        sensitivity 1, equal targets): |log10 S| and log10 spread, before minus after. A fix can move a figure
        away, e.g. an embedding brought up to norm 1 raises the sensitivity it feeds: that counts against it."""
        return (abs(self.log10_sensitivity[0]) - abs(self.log10_sensitivity[1])
                + self.log10_spread[0] - self.log10_spread[1])


@dataclass(frozen=True)
class Analysis:
    model: ModelInfo
    profile: str
    mass_scheme: str
    hidden_mass: float
    layers: tuple[Layer, ...]
    ops: tuple[Op, ...]
    merges: tuple[Merge, ...]
    streams: tuple[Stream, ...]
    network: Network
    findings: tuple[Finding, ...] = ()

    def op(self, name: str) -> Op:
        return self.ops_by_name()[name]

    def ops_by_name(self) -> dict[str, Op]:
        """name -> op, built once per analysis (read it, do not change it)."""
        cache = self.__dict__.get("_op_index")
        if cache is None:
            cache = {op.name: op for op in self.ops}
            object.__setattr__(self, "_op_index", cache)
        return cache

    def upstream_only(self, start: str, excluded: str) -> list[str]:
        """The ops `start` depends on (itself included) that `excluded` does not depend on, in graph order: a
        residual branch's own ops are upstream_only(branch, skip)."""
        masks = self._upstream_masks()
        bits = masks.get(start, 0) & ~masks.get(excluded, 0)
        names = []
        while bits:
            lowest = bits & -bits
            names.append(self.ops[lowest.bit_length() - 1].name)
            bits ^= lowest
        return names

    def _upstream_masks(self) -> dict[str, int]:
        """Per op, the set of ops it depends on as a bit mask over `ops` (graph order, so an op's inputs come
        before it): one pass, where a walk per question was 0.7 s of the rules on a 70B-shaped Llama (MN201)."""
        masks = self.__dict__.get("_upstream")
        if masks is None:
            masks = {}
            for i, op in enumerate(self.ops):
                mask = 1 << i
                for name in op.inputs:
                    mask |= masks.get(name, 0)
                masks[op.name] = mask
            object.__setattr__(self, "_upstream", masks)
        return masks

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the caches (`_op_index`, `_upstream`): a check's result crosses a process boundary."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def merge(self, name: str) -> Merge:
        return next(m for m in self.merges if m.op == name)

    @property
    def input_axes(self) -> tuple[int | None, ...]:
        """Per network input, in order, the axis its RMS is taken over (None for ids and masks)."""
        return tuple(op.feature_axis for op in self.ops if op.kind == "input")

    @property
    def output_axis(self) -> int | None:
        """The axis the network output's RMS is taken over (that of the first tensor it returns)."""
        return next((op.feature_axis for op in self.ops if op.kind == "output"), None)

    def atom_input_radius(self, layer: "Layer") -> float:
        """R, the RMS bound of what an atom's weight multiplies (a weight change Δw moves the output by at most
        S_down · R · ||Δw||): 1 for an embedding's one-hot rows, a normalizer's normalised input for its gain (1 per
        fiber, sqrt(N) when its groups couple N positions), the upper bound of the atom's input otherwise."""
        op = self.op(layer.op)
        for key in ("gain_input", "input_radius"):  # a normalizer's n(x); a conv input seen over its channels
            if key in op.info:
                return float(op.info[key])
        if layer.kind == "Embedding" or not op.inputs:
            return 1.0
        return self.op(op.inputs[0]).upper

    def op_constants(self, top: int | None = None) -> list[OpConstant]:
        """Per kind of op on a path to the output, the product of its design constants above 1, largest first."""
        products: dict[str, tuple[float, int, float]] = {}
        for op in self.ops:
            if op.kind != "bond" or op.downstream_sensitivity == 0:
                continue
            c = op.design_constant
            if 1.005 < c < math.inf:
                product, count, largest = products.get(op.target, (1.0, 0, 0.0))
                products[op.target] = (product * c, count + 1, max(largest, c))
        ranked = sorted((OpConstant(t, n, big, p) for t, (p, n, big) in products.items()), key=lambda c: -c.product)
        return ranked[:top] if top is not None else ranked
