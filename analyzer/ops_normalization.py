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
    derived = (_derived_floor(op, centred, coupled=coupling is not None)
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
    if assumed is not None:
        info["assumed"] = assumed
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


def coupling_of(op: OpView, normalized: tuple[int, ...], group_size: int,
                out_feature_axis: int | None = None) -> Coupling | None:
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
    return Coupling(positions, spread, fin == fout, whole_fibers=ndim - 1 in {a % ndim for a in normalized})


def _last_axes(op: OpView, normalized_shape: object) -> Coupling | None:
    """LayerNorm/RMSNorm over the trailing axes of `normalized_shape`."""
    sizes = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape or ())
    if not sizes or not op.in_shape(0):
        return None
    return coupling_of(op, tuple(range(-len(sizes), 0)), math.prod(sizes))


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
                           out_feature_axis=1) if len(shape) >= 2 else None
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
