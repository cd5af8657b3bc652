"""Normalization ops of the registry: LayerNorm, RMSNorm, GroupNorm, BatchNorm (eval)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import AtomSpec, INF, OpView, Semantics, batch_norm_semantics, linear, register


# ---------------------------------------------------------------------------------------------- normalization
def normalization(op: OpView, gain: str | None, bias: str | None, eps: float, centred: bool,
                  label: str, last_axis: bool = True, coupling: "Coupling | None" = None) -> Semantics:
    """LayerNorm/RMSNorm/RMSDivide: ||w||_inf / max(input RMS floor, sqrt(eps)), docs/theory/constants.md#normalization.

    The floor is the largest of: the forward pass's lower bound on the input RMS (for RMS-type norms only: a lower
    bound on the RMS says nothing about the centred RMS), sqrt(eps), and an *assumption* — the user's
    --norm-input-rms, or under the default `assumed` profile half the (centred) input RMS at init (floors.py) for a
    normalizer over the last axis. A constant that rests on an assumption says so in `info["assumption"]`: the
    report, JSON, SARIF and `modnorm probe` show and check it. Targets use the well-normed value ||w||_inf
    (Modula's precondition: normalizer inputs at RMS >= 1).
    """
    w_max, origin = op.weights.abs_max(gain) if gain else (1.0, "none")
    b_rms = op.weights.rms(bias)[0] if bias else 0.0
    floor_from_bounds = 0.0 if centred else op.bounds[0].lower
    floor = math.sqrt(floor_from_bounds ** 2 + eps)
    assumption, assumed = "", None
    # a group made of whole last-axis fibers has (centred) mean square >= the smallest fiber's: the per-fiber floor
    # bounds it from below, whatever the feature axis
    derived = _group_floor(op, coupling, centred) or (
        _derived_floor(op, centred, coupled=coupling is not None)
        if last_axis or (coupling is not None and coupling.whole_fibers) else None)
    if op.norm_input_rms is not None and op.norm_input_rms > floor:
        floor = op.norm_input_rms
        quantity = "input centred RMS" if centred else "input RMS"
        assumption = f"{quantity} >= {op.norm_input_rms:g} (--norm-input-rms, stated by the user)"
        # the value at the example inputs, when measured (CPU): MN603 flags a stated floor they already break
        seen = derived.at_init if derived is not None and derived.basis == "measured" else None
        assumed = {"quantity": quantity, "floor": op.norm_input_rms, "at_init": seen, "basis": "stated"}
    elif derived is not None and math.sqrt(derived.rms ** 2 + eps) > floor:
        floor = math.sqrt(max(derived.rms, floor_from_bounds) ** 2 + eps)  # r² = ms + eps >= floor² + eps
        assumption = derived.text()
        assumed = {"quantity": derived.quantity, "floor": derived.rms, "at_init": derived.at_init,
                   "basis": derived.basis}
    slope = coupling.slope(floor, eps, centred) if coupling else (1 / floor if floor > 0 else INF)
    spread = coupling.hessian_factor if coupling else 1.0
    gain_input = math.sqrt(coupling.positions) if coupling else 1.0  # RMS bound of n(x), what the gain multiplies
    ceiling = _ceiling(op, coupling, centred, eps) if floor > 0 else None
    if ceiling is not None and coupling.slope_given_ceiling(floor, centred, ceiling["bound"]) < slope:
        slope = coupling.slope_given_ceiling(floor, centred, ceiling["bound"])
        gain_input = min(gain_input, ceiling["bound"])  # a fiber's RMS of n(x) is at most its groups' largest
        assumption = "; ".join(filter(None, (assumption, ceiling["text"])))
    else:
        ceiling = None
    if op.profile == "modula":
        constant, certified, reason = w_max, True, "Modula nominal: 1 (valid only for input RMS >= 1)"
    elif floor > 0:
        constant, certified = w_max * slope, True
        reason = ("" if assumption else
                  f"no lower bound on the input RMS: bounded by 1/sqrt(eps) = {1 / math.sqrt(eps):.4g}"
                  if floor_from_bounds == 0 else "")
    else:
        constant, certified = INF, False
        reason = "no eps and no lower bound on the input RMS: unbounded near 0 (docs/theory/constants.md#bonds)"
    atom = None
    if gain:
        atom = AtomSpec("Gain", gain, tuple(op.weights.shape(gain)), w_max, origin, params=(gain,))
    lower = 0.0 if eps > 0 or centred or coupling else 1.0 * (op.weights.abs_min(gain)[0] if gain else 1.0)
    info = {"eps": eps, "floor": floor, "assumption": assumption, "gain_input": gain_input, "n_lipschitz": slope}
    if coupling:
        info["coupled_positions"] = coupling.positions
        info["grouping"] = coupling.grouping(centred, eps)  # modnorm probe recomputes group statistics with it
    if assumed is not None:
        info["assumed"] = assumed
    if ceiling is not None:
        info["ceiling"] = ceiling
    return Semantics("atom" if atom else "bond", (constant,), f"{label}: ||w||_inf / max(RMS floor, sqrt(eps))",
                     design=(w_max,), nominal=(w_max,), certified=certified, reason=reason, atom=atom,
                     upper=w_max * gain_input + b_rms, lower=max(0.0, lower - b_rms), tags=("normalization",),
                     curvature=spread * 2 / math.sqrt(3) / max(floor, 1e-12) ** 2, label=label,
                     hessian=_normalization_hessian(w_max * spread, floor, op.profile, certified),
                     info=info)


@dataclass(frozen=True)
class Coupling:
    """How a normalizer whose groups span several positions couples them (GroupNorm, LayerNorm([T, D]), a
    LayerNorm over an axis that is not the feature axis), docs/theory/constants.md#coupled-normalizers.

    Let U be the entries normalised together with one output fiber (the union of the groups it touches), C the
    output's feature width, m the size of one group. Each group's map is (1/σ)(I − 11ᵀ/m − yyᵀ/m), a contraction
    divided by σ >= floor, so a fiber's output change is bounded by the change of all of U:

        slope <= sqrt(N) / floor,  N = |U| / C   (positions whose inputs reach one output fiber)

    and, term by term when input and output fibers coincide, (1 + [centred]) / floor + ρ sqrt(N) with
    ρ = max over σ >= floor of (σ² − eps) / σ³ (the yyᵀ term needs y concentrated at one position, which needs
    var >> eps). The normalised output's fiber RMS is at most sqrt(N) (what the gain multiplies), and the sphere
    map's curvature bound becomes (2/√3) |U| / sqrt(m C) / floor² in RMS units."""

    positions: float  # N
    hessian_factor: float  # |U| / sqrt(m C)
    aligned: bool  # the input's feature axis is the output's
    whole_fibers: bool = False  # each group is a union of whole last-axis fibers (the last axis is normalised)
    dims: tuple[int, ...] = ()  # the input axes each group spans (non-negative)
    feature_axis: int = -1  # the input's feature axis
    channel_groups: int = 1  # GroupNorm: groups of consecutive channels (axis 1), each over every axis from 1 on

    def slope(self, floor: float, eps: float, centred: bool) -> float:
        """Lipschitz constant of n(x) (gain excluded) in the per-fiber RMS norm, for σ >= floor."""
        if floor <= 0:
            return INF
        whole = math.sqrt(self.positions) / floor
        if not self.aligned:
            return whole
        peak = math.sqrt(3 * eps)  # (σ² − eps)/σ³ is largest at σ² = 3 eps
        rho = 2 / (3 * peak) if floor <= peak else (floor ** 2 - eps) / floor ** 3
        return min(whole, (1 + centred) / floor + rho * math.sqrt(self.positions))

    def slope_given_ceiling(self, floor: float, centred: bool, ceiling: float) -> float:
        """The slope when the normalized output's RMS over the part of one output fiber that lies in one group is
        at most `ceiling` (Y): per fiber, Ju = (1/σ)(u − ū − n nᵀu/m) group by group, and summed over the groups
        a fiber meets, ‖u_f‖ <= 1, the means contribute <= 1 and the n nᵀu/m terms <= Y
        (docs/theory/constants.md#coupled-normalizers), so slope <= (1 + [centred] + Y) / floor."""
        return (1 + centred + ceiling) / floor if floor > 0 and self.aligned else INF

    def _grouped(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], int]:
        """x in float64 with each group spanning `dims`, and the axis of a fiber's entries."""
        x = x.detach().double()
        if self.channel_groups > 1:  # (N, C, *S) -> (N, G, C/G, *S): each group normalises axes 2..
            x = x.reshape(x.shape[0], self.channel_groups, -1, *x.shape[2:])
            return x, tuple(range(2, x.dim())), 2
        return x, self.dims, self.feature_axis

    def peak(self, x: torch.Tensor, centred: bool, eps: float) -> float:
        """Y at x: the largest RMS of n(x) over the entries of one output fiber that share a group (GroupNorm: a
        position's channels of one group; a group spanning the feature axis: the whole fiber; otherwise single
        entries)."""
        x, dims, fiber = self._grouped(x)
        mean = x.mean(dims, keepdim=True) if centred else 0.0
        n = (x - mean) / ((x - mean).pow(2).mean(dims, keepdim=True) + eps).sqrt()
        return float(n.pow(2).mean(fiber).sqrt().max() if fiber in dims else n.abs().max())

    def group_rms(self, x: torch.Tensor, centred: bool) -> float:
        """The smallest (centred) RMS of a group at x: what σ >= floor is about (eps added by the caller)."""
        x, dims, _ = self._grouped(x)
        mean = x.mean(dims, keepdim=True) if centred else 0.0
        return float((x - mean).pow(2).mean(dims).sqrt().min())

    def grouping(self, centred: bool, eps: float) -> dict:
        """What `Coupling` needs to recompute its statistics from an input (modnorm probe does)."""
        return {"dims": self.dims, "feature_axis": self.feature_axis, "channel_groups": self.channel_groups,
                "centred": centred, "eps": eps}

    @classmethod
    def from_grouping(cls, grouping: dict) -> "Coupling":
        return cls(0.0, 0.0, True, dims=tuple(grouping["dims"]), feature_axis=grouping["feature_axis"],
                   channel_groups=grouping["channel_groups"])


def coupling_of(op: OpView, normalized: tuple[int, ...], group_size: int,
                out_feature_axis: int | None = None, channel_groups: int = 1) -> Coupling | None:
    """The coupling of a normalizer over axes `normalized` of its input (groups of `group_size` entries); None when
    each output fiber is normalised on its own entries (LayerNorm over the feature axis)."""
    shape = op.in_shape(0)
    if not shape:
        return None
    ndim = len(shape)
    fin = op.bounds[0].fdim
    fin = ndim - 1 if fin is None or fin >= ndim else fin
    fout = fin if out_feature_axis is None else out_feature_axis
    spanned = {a % ndim for a in normalized} | {fin, fout}
    union, width = math.prod(shape[a] for a in spanned), shape[fout]
    positions, spread = union / width, union / math.sqrt(group_size * width)
    if positions <= 1 and spread <= 1 + 1e-12:
        return None
    dims = tuple(sorted({a % ndim for a in normalized}))
    return Coupling(positions, spread, fin == fout, whole_fibers=ndim - 1 in dims, dims=dims, feature_axis=fin,
                    channel_groups=channel_groups)


def _last_axes(op: OpView, normalized_shape: object) -> Coupling | None:
    """LayerNorm/RMSNorm over the trailing axes of `normalized_shape`."""
    sizes = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape or ())
    if not sizes or not op.in_shape(0):
        return None
    return coupling_of(op, tuple(range(-len(sizes), 0)), math.prod(sizes))


CEILING_FACTOR = 2.0  # a ceiling is this multiple of the value at init (floors: FLOOR_FRACTION of it)


def _ceiling(op: OpView, coupling: Coupling | None, centred: bool, eps: float) -> dict | None:
    """The `assumed` profile's ceiling Y on the normalized output of a coupled normalizer: twice its largest value
    at init, measured on the example inputs (CPU); never above sqrt(N), the unconditional bound. None on meta (a
    ceiling is not predicted) or when the normalizer does not couple positions."""
    finder = getattr(op, "input_value", None)
    if coupling is None or not coupling.aligned or op.profile != "assumed" or finder is None:
        return None
    x = finder(0)
    if x is None:
        return None
    at_init = coupling.peak(x, centred, eps)
    bound = min(CEILING_FACTOR * at_init, math.sqrt(coupling.positions))
    quantity = "normalized output RMS per position and group"
    text = (f"{quantity} <= {bound:.3g} ({CEILING_FACTOR:g}x its largest value at init, measured on the example "
            f"inputs: {at_init:.3g})")
    return {"quantity": quantity, "bound": bound, "at_init": at_init, "basis": "measured", "text": text}


def _group_floor(op: OpView, coupling: Coupling | None, centred: bool):
    """For a coupled normalizer whose input was kept (the `assumed` profile on the CPU): half the smallest
    (centred) RMS of one of its groups at init — the statistic σ is made of — rather than of one position's
    features, which can be far smaller (a ResCNN's RMS over (C, H, W): 0.05 for a row against ~1 for the group)."""
    finder = getattr(op, "input_value", None)
    if coupling is None or op.profile != "assumed" or finder is None:
        return None
    x = finder(0)
    if x is None:
        return None
    from .floors import FLOOR_FRACTION, Floor

    at_init = coupling.group_rms(x, centred)
    return Floor(FLOOR_FRACTION * at_init, at_init, centred, "measured", per="group") if at_init > 0 else None


def _derived_floor(op: OpView, centred: bool, coupled: bool = False):
    """The `assumed` profile's floor for this normalizer's input (floors.py: per last-axis fiber), when its feature
    axis is last or its groups are made of whole last-axis fibers (`coupled`)."""
    finder = getattr(op, "input_floor", None)
    if finder is None or not op.in_shape(0):
        return None
    if not coupled and op.bounds[0].fdim not in (None, len(op.in_shape(0)) - 1):
        return None
    return finder(centred)


def _normalization_hessian(w_max: float, floor: float, profile: str, certified: bool) -> float | None:
    """||D²(w ⊙ n(x))|| <= ||w||_inf (2/sqrt3) / r² in RMS units, r² = (input RMS floor)² + eps (docs/theory/sharpness.md#atoms-and-bonds:
    x ↦ √d x/||x̃|| with x̃ = (x, √(d eps)) is the sphere map after an isometric embedding). Modula's profile
    assumes input RMS >= 1."""
    if profile == "modula":
        return w_max * 2 / math.sqrt(3)
    return w_max * 2 / math.sqrt(3) / floor ** 2 if certified and floor > 0 else None


@register(nn.LayerNorm)
def _layer_norm_module(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    gain = f"{prefix}.weight" if m.weight is not None else None
    bias = f"{prefix}.bias" if getattr(m, "bias", None) is not None else None
    coupling = _last_axes(op, m.normalized_shape)
    return normalization(op, gain, bias, m.eps, True, "LayerNorm", last_axis=coupling is None, coupling=coupling)


@register(F.layer_norm)
def _layer_norm_function(op: OpView) -> Semantics:
    coupling = _last_axes(op, op.arg(1, "normalized_shape"))
    return normalization(op, op.param_name(2, "weight"), op.param_name(3, "bias"), op.arg(4, "eps", 1e-5), True,
                         "LayerNorm", last_axis=coupling is None, coupling=coupling)


@register(nn.RMSNorm)
def _rms_norm_module(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps
    gain = f"{prefix}.weight" if m.weight is not None else None
    coupling = _last_axes(op, m.normalized_shape)
    return normalization(op, gain, None, eps, False, "RMSNorm", last_axis=coupling is None, coupling=coupling)


@register(F.rms_norm)
def _rms_norm_function(op: OpView) -> Semantics:
    eps = op.arg(3, "eps")
    eps = eps if eps is not None else torch.finfo(torch.float32).eps
    coupling = _last_axes(op, op.arg(1, "normalized_shape"))
    return normalization(op, op.param_name(2, "weight"), None, eps, False, "RMSNorm", last_axis=coupling is None,
                         coupling=coupling)


@register(nn.GroupNorm)
def _group_norm(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    gain = f"{prefix}.weight" if m.affine else None
    bias = f"{prefix}.bias" if m.affine else None
    shape = op.in_shape(0)
    coupling = coupling_of(op, tuple(range(1, len(shape))), math.prod(shape[1:]) // m.num_groups,
                           out_feature_axis=1, channel_groups=m.num_groups) if len(shape) >= 2 else None
    semantics = normalization(op, gain, bias, m.eps, True, "GroupNorm", last_axis=False, coupling=coupling)
    return Semantics(**{**semantics.__dict__, "fdim": 1})


@register(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(op: OpView) -> Semantics:
    # Eval mode: a per-channel affine map with slope |gamma_c| / sqrt(running_var_c + eps), docs/theory/constants.md#bonds.
    # origin is "measured" (running statistics read) or "predicted" (meta device: var = 1, the init value)
    return batch_norm_semantics(op, op.node.target, op.module.eps)


@register(F.batch_norm, torch.batch_norm)
def _batch_norm_function(op: OpView) -> Semantics:
    """`F.batch_norm(x, running_mean, running_var, weight, bias, training=False, momentum, eps)` (timm's
    BatchNormAct2d): the eval-mode module's map when its statistics and affine parameters are one module's
    buffers and parameters (`<prefix>.running_mean`, `.running_var`, `.weight`, `.bias`)."""
    training = op.arg(5, "training", False)
    if training is not False:
        return Semantics("unknown", (INF,) * max(1, len(op.inputs)), "batch norm with batch statistics",
                         certified=False, reason="batch norm with training=True normalizes by the batch's own "
                         "statistics (couples the examples of a batch); modnorm analyses eval mode")
    names = [_attr_name(op.arg(i, n)) for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"),
                                                    (4, "bias"))]
    prefixes = {name.rsplit(".", 1)[0] for name in names if name is not None}
    if names[0] is None or names[1] is None or len(prefixes) != 1:
        return Semantics("unknown", (INF,) * max(1, len(op.inputs)), "batch norm of loose tensors",
                         certified=False, reason="F.batch_norm whose running statistics and affine parameters are "
                         "not the buffers and parameters of one module (<prefix>.running_mean, .running_var, "
                         ".weight, .bias)")
    eps = op.arg(7, "eps", 1e-5)
    return batch_norm_semantics(op, prefixes.pop(), float(eps) if isinstance(eps, (int, float)) else 1e-5)


def _attr_name(arg: object) -> str | None:
    return arg.target if getattr(arg, "op", None) == "get_attr" else None
