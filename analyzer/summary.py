"""The records of the calculus passes -> the plain result: ops, network summary, sharpness and loss bounds, mass
groups by role and block, tied weights."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from . import sharpness
from .combinators import exp_of, log10_of, log_of, log_parallel, log_series, series
from .errors import short_path
from .records import Context, Record
from .result import Assumption, BlockSharpness, Layer, LossBound, MassGroup, Network, Op, Sharpness
from .sourcelines import node_location

__all__ = ["op_of", "network_of", "sharpness_of", "block_sharpness_of", "mass_groups", "tied_weights",
           "records_named", "block_of"]


def mass_groups(layers: list[Layer]) -> tuple[MassGroup, ...]:
    """Mass shares by role (input / hidden / output) and by top-level block (`blocks.3`, `lm_head`)."""
    groups: dict[tuple[str, str], list[Layer]] = {}
    for layer in layers:
        if layer.mass <= 0 and layer.role == "gain":
            continue
        groups.setdefault(("role", layer.role), []).append(layer)
    for layer in layers:
        if layer.mass > 0:
            groups.setdefault(("block", block_of(layer.name)), []).append(layer)
    return tuple(MassGroup(by, name, sum(not l.frozen for l in members), sum(l.mass for l in members),
                           sum(l.mass_share for l in members), frozen=sum(l.frozen for l in members))
                 for (by, name), members in groups.items())


def block_of(name: str) -> str:
    """The top-level block of a module path: through the first index (`transformer.h.3`), else two parts."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


# ------------------------------------------------------------------------------------------- residual merges
def tied_weights(root: nn.Module) -> tuple[tuple[str, ...], ...]:
    names: dict[int, list[str]] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return tuple(tuple(group) for group in names.values() if len(group) > 1)


def records_named(records: list[Record], names: Iterable[str]) -> list[Record]:
    by_name = {r.node.name: r for r in records}
    return [by_name[n] for n in names]


def sharpness_of(records: list[Record], triples: dict, ctx: Context) -> tuple[Sharpness | None, LossBound | None]:
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
    sharp = Sharpness(t.alpha, t.beta, t.gamma, t.A, t.certified, reason, ctx.options.profile == "modula",
                      t.log10("alpha"), t.log10("beta"), t.log10("gamma"), t.log10("A"))
    width = output_width(output)
    upper = sum(i.bounds.upper for i in output.inputs)
    sigma, tau, norm = sharpness.loss_constants(ctx.options.loss, width, upper)
    log_l = (log_parallel(log_series(log_of(sigma), t.l_alpha), log_series(log_of(tau), 2 * t.lA))
             if t.certified else math.inf)  # σα + τA², in logs
    lipschitz = exp_of(log_l)
    step = exp_of(-log_l) if log_l > -math.inf else math.inf
    return sharp, LossBound(ctx.options.loss, sigma, tau, norm, lipschitz, step, log10_of(log_l))


def block_sharpness_of(records: list[Record], layers: list[Layer], ctx: Context) -> tuple[BlockSharpness, ...]:
    """Each top-level block (`blocks.3`, `transformer.h.0`) with atoms, in its own norm (sharpness.submodule)."""
    modules = dict(ctx.root.named_modules())
    blocks = [b for b in dict.fromkeys(block_of(layer.name) for layer in layers if layer.mass > 0)
              if b in modules and b != ""]
    members: dict[str, list[Record]] = {b: [] for b in blocks}
    users: dict[int, list[Record]] = {}
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


def output_width(output: Record) -> int:
    for record in output.inputs:
        value = record.node.meta.get("value")
        if isinstance(value, torch.Tensor) and value.dim():
            fdim = record.bounds.fdim if record.bounds.fdim is not None else -1
            return int(value.shape[fdim])
    return 1


def op_of(record: Record, ctx: Context, triple: Any = None) -> Op:
    sem = record.semantics
    file, line = node_location(record.node, ctx.user_file)
    return Op(
        name=record.node.name, target=record.target or record.node.op, kind=record.kind,
        inputs=tuple(i.node.name for i in record.inputs), lipschitz=record.lipschitz, design=record.design,
        downstream_sensitivity=record.down, upper=record.bounds.upper, lower=record.bounds.lower,
        feature_axis=_feature_axis(record),
        certified=sem.certified if sem else True, reason=sem.reason if sem else "", source=sem.source if sem else "",
        module=record.module, file=file, line=line, tags=sem.tags if sem else (),
        nominal=sem.nominal if sem else None, smooth=sem.smooth if sem else True,
        curvature=sem.curvature if sem else 0.0, info=dict(sem.info) if sem else {},
        sharpness=(triple.alpha, triple.beta, triple.gamma) if triple is not None else None,
        weight_sensitivity=triple.A if triple is not None else 0.0, **_typed_facts(sem.info if sem else {}))


def _feature_axis(record: Record) -> int | None:
    """Where the RMS of the op's output is taken (the network output: that of what it returns first)."""
    if record.kind == "output":
        return next((r.bounds.fdim for r in record.inputs if r.bounds.fdim is not None), None)
    return record.bounds.fdim


def _typed_facts(info: dict[str, Any]) -> dict[str, Any]:
    """The registry's notes that rules and reports read, as typed `Op` fields (one translation, here)."""
    facts: dict[str, Any] = {}
    if "eps" in info:
        facts["eps"] = float(info["eps"])
        facts["rms_floor"] = float(info.get("floor", 0.0))
    if info.get("assumed"):
        a = info["assumed"]
        facts["assumption"] = Assumption(a["quantity"], a["floor"], a["at_init"], a["basis"], info.get("assumption", ""))
    if info.get("ceiling"):
        c = info["ceiling"]
        facts["ceiling"] = Assumption(c["quantity"], c["bound"], c["at_init"], c["basis"], c["text"], "ceiling")
    if "scale" in info and "head_dim" in info:
        facts["attention_scale"], facts["head_dim"] = info["scale"], info["head_dim"]
        facts["attention_operand_scale"] = float(info.get("operand_atom_scale", 1.0))
    if info.get("unmodelled_parameters"):
        facts["unmodelled_parameters"] = info["unmodelled_parameters"]
        facts["unmodelled_share"] = info["unmodelled_share"]
    return facts


def network_of(records: list[Record], layers: list[Layer], total_mass: float, ctx: Context) -> Network:
    inputs = [r for r in records if r.kind == "input"]
    continuous = {r.node.name: r.down for r in inputs if not r.bounds.discrete}
    convention = "max over continuous inputs of S_down(input) (sum norm on the input tuple)"
    if continuous:
        sensitivity = max(continuous.values())
        design = max(r.design_down for r in inputs if not r.bounds.discrete)
        log_sensitivity = max(r.log_down for r in inputs if not r.bounds.discrete)
        log_design = max(r.log_design_down for r in inputs if not r.bounds.discrete)
    else:  # token ids: measure from the embedding lookups, as Modula's Embedding and Enumerate do
        embeddings = [r for r in records if r.kind == "atom" and r.semantics.atom.kind == "Embedding"]
        sensitivity = sum(series(r.down, r.lipschitz[0] if r.lipschitz else r.semantics.atom.norm) for r in embeddings)
        design = sum(series(r.design_down, r.semantics.atom.norm) for r in embeddings)
        log_sensitivity = log_parallel(*(log_series(r.log_down, log_of(r.lipschitz[0] if r.lipschitz else
                                                                        r.semantics.atom.norm))
                                         for r in embeddings))
        log_design = log_parallel(*(log_series(r.log_design_down, log_of(r.semantics.atom.norm))
                                    for r in embeddings))
        convention = ("discrete input: sum over embedding lookups (token ids and positions alike) of "
                      "S_down(embedding) x its l1->RMS norm, as Modula counts Embedding and Enumerate")
    if not math.isfinite(sensitivity):  # the float product overflowed (or a constant is unbounded)
        sensitivity = exp_of(log_sensitivity)
    if not math.isfinite(design):
        design = exp_of(log_design)
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
            assumptions.append(f"{r.module or r.node.name} ({sem.label} at {where}): {sem.info['assumption']}")
    modular_norm = max((l.weighted_norm for l in layers if l.mass > 0), default=math.nan)
    finite = math.isfinite(log_sensitivity)  # the log overflows only where a constant is unbounded
    if not finite and not reasons:
        reasons.append("a path from the input carries an unbounded constant")
    return Network(mass=total_mass, sensitivity=sensitivity, design_sensitivity=design,
                   log10_sensitivity=log10_of(log_sensitivity), log10_design_sensitivity=log10_of(log_design),
                   certified=finite and not reasons, uncertified_reasons=tuple(dict.fromkeys(reasons)),
                   unknown_ops=tuple(dict.fromkeys(unknown)), assumptions=tuple(dict.fromkeys(assumptions)),
                   input_sensitivities=continuous, input_convention=convention, modular_norm_at_init=modular_norm)
