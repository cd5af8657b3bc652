"""Normalization ops of the registry: LayerNorm, RMSNorm, GroupNorm, BatchNorm (eval)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import AtomSpec, INF, OpView, Semantics, batch_norm_semantics, linear, register


# ---------------------------------------------------------------------------------------------- normalization
def normalization(op: OpView, gain: str | None, bias: str | None, eps: float, centred: bool,
                  label: str) -> Semantics:
    """LayerNorm/RMSNorm/RMSDivide: ||w||_inf / max(input RMS floor, sqrt(eps)), docs/theory/constants.md#normalization.

    The floor is the forward pass's lower bound on the input RMS (for RMS-type norms only: a lower bound on the
    RMS says nothing about the centred RMS), sqrt(eps), or the user's --norm-input-rms assumption. Targets use
    the well-normed value ||w||_inf (Modula's precondition: normalizer inputs at RMS >= 1).
    """
    w_max, origin = op.weights.abs_max(gain) if gain else (1.0, "none")
    b_rms = op.weights.rms(bias)[0] if bias else 0.0
    floor_from_bounds = 0.0 if centred else op.bounds[0].lower
    floor = math.sqrt(floor_from_bounds ** 2 + eps)
    assumption = ""
    if op.norm_input_rms is not None and op.norm_input_rms > floor:
        floor, assumption = op.norm_input_rms, f"assumes input RMS >= {op.norm_input_rms:g} (--norm-input-rms)"
    if op.profile == "modula":
        constant, certified, reason = w_max, True, "Modula nominal: 1 (valid only for input RMS >= 1)"
    elif floor > 0:
        constant, certified = w_max / floor, True
        reason = assumption or (f"no lower bound on the input RMS: bounded by 1/sqrt(eps) = {1 / math.sqrt(eps):.4g}"
                                if floor_from_bounds == 0 else "")
    else:
        constant, certified = INF, False
        reason = "no eps and no lower bound on the input RMS: unbounded near 0 (docs/theory/constants.md#bonds)"
    atom = None
    if gain:
        atom = AtomSpec("Gain", gain, tuple(op.weights.shape(gain)), w_max, origin, params=(gain,))
    lower = 0.0 if eps > 0 or centred else 1.0 * (op.weights.abs_min(gain)[0] if gain else 1.0)
    return Semantics("atom" if atom else "bond", (constant,), f"{label}: ||w||_inf / max(RMS floor, sqrt(eps))",
                     design=(w_max,), nominal=(w_max,), certified=certified, reason=reason, atom=atom,
                     upper=w_max + b_rms, lower=max(0.0, lower - b_rms), tags=("normalization",),
                     curvature=2 / math.sqrt(3) / max(floor, 1e-12) ** 2, label=label,
                     hessian=_normalization_hessian(w_max, floor, op.profile, certified),
                     info={"eps": eps, "floor": floor, "assumption": assumption})


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
    return normalization(op, gain, bias, m.eps, True, "LayerNorm")


@register(F.layer_norm)
def _layer_norm_function(op: OpView) -> Semantics:
    return normalization(op, op.param_name(2, "weight"), op.param_name(3, "bias"), op.arg(4, "eps", 1e-5), True,
                         "LayerNorm")


@register(nn.RMSNorm)
def _rms_norm_module(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps
    gain = f"{prefix}.weight" if m.weight is not None else None
    return normalization(op, gain, None, eps, False, "RMSNorm")


@register(F.rms_norm)
def _rms_norm_function(op: OpView) -> Semantics:
    eps = op.arg(3, "eps")
    eps = eps if eps is not None else torch.finfo(torch.float32).eps
    return normalization(op, op.param_name(2, "weight"), None, eps, False, "RMSNorm")


@register(nn.GroupNorm)
def _group_norm(op: OpView) -> Semantics:
    prefix, m = op.node.target, op.module
    gain = f"{prefix}.weight" if m.affine else None
    bias = f"{prefix}.bias" if m.affine else None
    semantics = normalization(op, gain, bias, m.eps, True, "GroupNorm")
    return Semantics(**{**semantics.__dict__, "fdim": 1})


@register(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(op: OpView) -> Semantics:
    # Eval mode: a per-channel affine map with slope |gamma_c| / sqrt(running_var_c + eps), docs/theory/constants.md#bonds.
    # origin is "measured" (running statistics read) or "predicted" (meta device: var = 1, the init value)
    return batch_norm_semantics(op, op.node.target, op.module.eps)
