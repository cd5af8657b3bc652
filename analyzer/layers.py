"""Atoms to `Layer` rows, after the calculus passes: roles (input / hidden / output), masses (by role, uniform or
per pattern; frozen atoms get none), targets t_i = (m_i / M) / S_down(i) (docs/theory/modular-norm.md#targets) and
where each atom is written in the user's source."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import torch

from .combinators import log10_of, target_of
from .errors import ModnormError
from .records import Context, Options, Record
from .result import Layer
from .sourcelines import call_site, definition, element_definition
from .weightstore import WeightStore

__all__ = ["layers_of"]


def _roles(records: list[Record]) -> dict[int, str]:
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


def _masses(atoms: list[Record], roles: dict[int, str], options: Options, names: dict[int, str],
            frozen: frozenset[int] = frozenset()) -> dict[int, float]:
    """Mass per atom. Frozen atoms (every parameter requires_grad=False: a LoRA's base layer) take no step, so
    they get no mass and the trainable atoms share it (--mass-of can still give them some)."""
    masses: dict[int, float] = {}
    counted = [a for a in atoms if a.semantics.atom.kind != "Gain" and id(a) not in frozen]
    if options.mass == "uniform":
        masses = {id(a): 1.0 for a in counted}
    elif options.mass == "roles":
        groups: dict[str, list[Record]] = {"input": [], "hidden": [], "output": []}
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


def _called_by_sequential(root: torch.nn.Module, path: str) -> bool:
    """`features.3` of an nn.Sequential: torch calls it. (A ModuleList's elements are called by the user's loop.)"""
    parent, _, index = path.rpartition(".")
    if not index.isdigit():
        return False
    try:
        return type(root.get_submodule(parent)) is torch.nn.Sequential
    except AttributeError:
        return False


def _frozen(atoms: list[Record], root: torch.nn.Module) -> frozenset[int]:
    """Atoms none of whose parameters require a gradient."""
    def trainable(name: str) -> bool:
        try:
            return root.get_parameter(name).requires_grad
        except AttributeError:
            return True  # not a parameter of the root (a buffer, a folded constant): counted as before
    return frozenset(id(a) for a in atoms if a.semantics.atom.params
                     and not any(trainable(p) for p in a.semantics.atom.params))


def _layer_name(record: Record) -> str:
    weight = record.semantics.atom.weight
    return weight[: -len(".weight")] if weight.endswith(".weight") else weight


def layers_of(records: list[Record], ctx: Context) -> tuple[list[Layer], float]:
    atoms = [r for r in records if r.kind == "atom"]
    roles = _roles(records)
    names = {id(a): _layer_name(a) for a in atoms}
    frozen = _frozen(atoms, ctx.root)
    masses = _masses(atoms, roles, ctx.options, names, frozen)
    total = sum(masses.values())
    layers = []
    for a in atoms:
        spec = a.semantics.atom
        mass = masses[id(a)]
        share = mass / total if total > 0 else 0.0
        target = target_of(share, a.design_down, a.log_design_down)
        owner = spec.weight.rsplit(".", 1)[0] if "." in spec.weight else ""
        try:
            owner_module = ctx.root.get_submodule(owner) if owner else None
        except AttributeError:
            owner_module = None
        module_type = type(owner_module).__name__ if owner_module is not None else ""
        file, line = call_site(a.node, owner_module, ctx.user_file)
        if _called_by_sequential(ctx.root, owner) and type(owner_module).__module__.startswith("torch."):
            # called by nn.Sequential (`self.features(x)`, one line for every element): its own line instead
            element = element_definition(ctx.root, owner)
            if element is not None and file is not None and Path(element[0]).resolve() == Path(file).resolve():
                line = element[1]
        layers.append(Layer(
            name=names[id(a)], kind=str(spec.kind), shape=spec.shape, role=roles.get(id(a), "gain"), mass=mass,
            mass_share=share, sensitivity=a.lipschitz[0] if a.lipschitz else spec.norm,
            downstream_sensitivity=a.down, design_downstream_sensitivity=a.design_down, target_norm=target,
            log10_downstream_sensitivity=log10_of(a.log_down),
            log10_design_downstream_sensitivity=log10_of(a.log_design_down),
            norm_at_init=spec.norm, norm_source=spec.norm_source, scale=spec.scale,
            certified=a.semantics.certified, op=a.node.name, weight=spec.weight, params=spec.params,
            file=file, line=line, module_type=module_type, defined_at=definition(ctx.root, owner),
            predicted_norm=_predicted_norm(ctx.weights, spec), norm_factor=spec.factor, groups=spec.groups,
            frozen=id(a) in frozen))
    return layers, total


def _predicted_norm(weights: WeightStore, spec: Any) -> float | None:
    """The norm the recorded init law predicts for a measured atom (same formula, the law's σ in place of the
    measured one)."""
    measured = weights.measured.get(spec.weight)
    predicted = weights.predicted.get(spec.weight)
    if measured is None or predicted is None or spec.norm_source != "measured" or measured == 0:
        return None
    return spec.norm * predicted / measured
