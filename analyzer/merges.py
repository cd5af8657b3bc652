"""Residual structure, after the calculus passes: merges y = a·x + b·f(x) with their block sensitivities, and the
streams they chain into (docs/theory/dag.md#residual-merges)."""

from __future__ import annotations

import operator

import torch

from .combinators import series
from .records import Context, Record
from .result import Merge, Stream
from .sourcelines import node_location

__all__ = ["merges_of"]


def _merge_module(module: str, block: list[Record]) -> str:
    """The module a merge is reported under. `for block in self.blocks: x = x + block(x)` adds in the parent's
    forward, so the merge's own module is the parent for every block; the branch's atoms all sit in
    `blocks.3`, so that (up to the first list index the parent's path lacks) names the block instead."""
    paths = [r.semantics.atom.weight.split(".")[:-1] for r in block if r.kind == "atom"]
    if not paths:
        return module
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    depth = len(module.split(".")) if module else 0
    if common[:depth] != (module.split(".") if module else []):
        return module
    index = next((i for i in range(depth, len(common)) if common[i].isdigit()), None)
    return ".".join(common[: index + 1]) if index is not None else module


def _strip_scalars(record: Record) -> tuple[Record, float]:
    coefficient = 1.0
    while (record.semantics is not None and "scalar" in record.semantics.tags and len(record.inputs) == 1
           and "factor" in record.semantics.info):
        coefficient *= record.semantics.info["factor"]
        record = record.inputs[0]
    return record, coefficient


_CASTS = ("to", "float", "double", "half", "bfloat16", "type_as", "type")


def _through_casts(record: Record) -> Record:
    """A skip path that only changes precision (Mamba's `residual.to(torch.float32)`) is the stream itself."""
    while (len(record.inputs) == 1 and record.node.op == "call_method" and record.node.target in _CASTS):
        record = record.inputs[0]
    return record


def _between(skip: Record, branch: Record) -> list[Record] | None:
    """Records on paths from `skip` to `branch` (inclusive of branch), or None if branch does not depend on skip."""
    seen: dict[int, Record] = {}
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


def _branch_sensitivity(skip: Record, block: list[Record], design: bool) -> float:
    sens = {id(skip): 1.0}
    for record in block:
        constants = record.design if design else record.lipschitz
        sens[id(record)] = sum(series(c, sens.get(id(i), 0.0)) for i, c in zip(record.inputs, constants))
    return sens[id(block[-1])]


def _stream_source(record: Record) -> str:
    """Walk back through single-input bonds (relu after the add, dropout) to the op that feeds the stream."""
    while (record.kind == "bond" and len(record.inputs) == 1 and record.semantics is not None
           and not {"normalization", "merge"} & set(record.semantics.tags)):
        record = record.inputs[0]
    return record.node.name


def merges_of(records: list[Record], ctx: Context) -> tuple[list[Merge], list[Stream]]:
    records_by_name = {r.node.name: r for r in records}
    merges: list[Merge] = []
    for record in records:
        if record.semantics is None or "merge" not in record.semantics.tags or len(record.inputs) != 2:
            continue
        (x_a, a), (x_b, b) = (_strip_scalars(i) for i in record.inputs)
        if record.node.target in (operator.sub, torch.sub, "sub"):
            b = -b
        for skip, skip_c, branch, branch_c in ((x_a, a, x_b, b), (x_b, b, x_a, a)):
            skip = _through_casts(skip)
            if skip is branch:
                continue
            block = _between(skip, branch)
            if block is None or not any(r.kind == "atom" for r in block):
                continue
            file, line = node_location(record.node, ctx.user_file)
            merges.append(Merge(
                op=record.node.name, skip=skip.node.name, branch=branch.node.name, skip_coefficient=skip_c,
                branch_coefficient=branch_c, branch_sensitivity=_branch_sensitivity(skip, block, False),
                design_branch_sensitivity=_branch_sensitivity(skip, block, True),
                module=_merge_module(record.module, block), file=file, line=line))
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
