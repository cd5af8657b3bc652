"""Render an `Analysis` (and its findings): a rich table for people, JSON for machines. Renders, never computes."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from typing import Any

from pathlib import Path

from .result import Analysis, Change, Finding, Layer

__all__ = ["to_json", "to_dict", "render_full", "fmt", "fmt_log10", "assumption_lines", "assumption_rows", "relative_path", "relative_text", "SCHEMA"]

SCHEMA = "modnorm/1"


# ------------------------------------------------------------------------------------------------- locations
def relative_path(path: str | None, root: str | None = None) -> str:
    """`path` relative to the project root (the configuration file's directory, else the working directory), with
    forward slashes; unchanged when outside it. Every report and format shows paths this one way."""
    if not path:
        return ""
    base = Path(root) if root else Path.cwd()
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def relative_text(text: str, root: str | None = None) -> str:
    """Messages that embed a location ("op at /abs/model.py:29") with the root's prefix dropped, as in findings."""
    base = str((Path(root) if root else Path.cwd()).resolve())
    return text.replace(base.rstrip("/") + "/", "") if base != "/" else text


def _short(path: str | None, root: str | None = None) -> str:
    return relative_path(path, root)


def fmt(x: float, digits: int = 4) -> str:
    """A number for people: inf and nan spelled out, small and large numbers in scientific notation."""
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_log10(value: float, log10: float, digits: int = 4) -> str:
    """`fmt(value)`, or, when the float overflowed but its log10 is finite, the figure from its log10
    (`1.2e+412`): a figure beyond float range is still printed honestly, and ∞ means an unbounded op."""
    overflowed = isinstance(value, float) and math.isinf(value) and value > 0
    underflowed = value == 0 and log10 is not None and log10 < -300  # a safe step of 1e-412
    if (overflowed or underflowed) and log10 is not None and math.isfinite(log10):
        exponent = math.floor(log10)
        mantissa = 10 ** (log10 - exponent)
        if round(mantissa, digits - 1) >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:.{digits - 1}f}e{exponent:+d}"
    return fmt(value, digits)


def assumption_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per assumption a constant rests on: a floor on the RMS entering a normalizer (`floor`), or a
    ceiling on a coupled normalizer's output (`ceiling`); `limit` says which."""
    rows = []
    for op in analysis.ops:
        for a in (op.assumption, op.ceiling):
            if a is None:
                continue
            rows.append({"op": op.name, "module": op.module, "label": op.target, "file": op.file, "line": op.line,
                         "quantity": a.quantity, a.limit: a.floor, "limit": a.limit, "at_init": a.at_init,
                         "basis": a.basis, "text": a.text})
    return rows


_BASIS = {"measured": "0.5x its smallest per-position value at init (measured on the example inputs in the unit "
                      "ball)",
          "predicted": "0.5x its typical value at init (predicted from the init laws, residual branches not counted)",
          "stated": "--norm-input-rms, stated by the user"}
_CEILING_BASIS = {"measured": "2x its largest value at init (measured on the example inputs in the unit ball)"}


def assumption_lines(analysis: Analysis) -> list[str]:
    """The assumptions the figures rest on, repeated blocks folded into one line per role
    (`transformer.h.*.ln_1 ×12: input centred RMS >= 0.41..0.52, 0.5x its smallest value at init`)."""
    groups: "OrderedDict[tuple, list[dict[str, Any]]]" = OrderedDict()
    for row in assumption_rows(analysis):
        role = re.sub(r"\.\d+(?=\.|$)", ".*", row["module"] or row["op"])
        groups.setdefault((role, row["quantity"], row["basis"], row["limit"]), []).append(row)
    lines = []
    for (role, quantity, basis, limit), rows in groups.items():
        low, high = min(r[limit] for r in rows), max(r[limit] for r in rows)
        span = f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}..{high:.3g}"
        count = f" ×{len(rows)}" if len(rows) > 1 else ""
        sign, why = (">=", _BASIS) if limit == "floor" else ("<=", _CEILING_BASIS)
        lines.append(f"{role}{count}: {quantity} {sign} {span}, {why.get(basis, basis)}")
    return lines


def _log10(x: float) -> float | None:
    """A log10 figure for JSON: null when it is ±inf or nan (an unbounded or unknown figure)."""
    return round(x, 6) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _number(x: float) -> float | None:
    """JSON has no inf/nan: unbounded or unknown numbers are null (and `certified` says why)."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _layer_dict(layer: Layer, root: str | None = None) -> dict[str, Any]:
    return {
        "name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "role": layer.role,
        "mass": layer.mass, "mass_share": layer.mass_share, "sensitivity": _number(layer.sensitivity),
        "downstream_sensitivity": _number(layer.downstream_sensitivity),
        "design_downstream_sensitivity": _number(layer.design_downstream_sensitivity),
        "log10_downstream_sensitivity": _log10(layer.log10_downstream_sensitivity),
        "log10_design_downstream_sensitivity": _log10(layer.log10_design_downstream_sensitivity),
        "target_norm": _number(layer.target_norm), "norm_at_init": _number(layer.norm_at_init),
        "norm_source": layer.norm_source, "scale": layer.scale, "certified": layer.certified,
        "weight": layer.weight, "file": _short(layer.file, root) or None, "line": layer.line,
        "defined_at": ({"file": _short(layer.defined_at[0], root), "line": layer.defined_at[1]}
                       if layer.defined_at else None),
        "predicted_norm": _number(layer.predicted_norm) if layer.predicted_norm is not None else None,
    }


def _finding_dict(finding: Finding, root: str | None = None) -> dict[str, Any]:
    return {"code": finding.code, "name": finding.name, "severity": finding.severity,
            "message": relative_text(finding.message, root), "fix": finding.fix, "module": finding.module,
            "file": _short(finding.file, root) or None, "line": finding.line, "op": finding.op,
            "related": [{"file": _short(f, root), "line": l} for f, l in finding.related]}


def to_dict(analysis: Analysis, findings: tuple[Finding, ...] | None = None,
            root: str | None = None, changes: tuple[Change, ...] = ()) -> dict[str, Any]:
    """The versioned JSON document (schema `modnorm/1`: fields may be added, never renamed); paths relative to
    `root`, the project root."""
    net = analysis.network
    findings = analysis.findings if findings is None else findings
    text = lambda items: [relative_text(item, root) for item in items]  # noqa: E731
    return {
        "schema": SCHEMA,
        "model": {"file": _short(analysis.model.file, root) or None, "entry": analysis.model.entry,
                  "tracer": analysis.model.tracer,
                  "tracer_attempts": text(map(str, analysis.model.tracer_attempts)), "device": analysis.model.device,
                  "parameters": analysis.model.parameters, "nodes": analysis.model.nodes,
                  "weights": analysis.model.weights},
        "profile": analysis.profile,
        "mass_scheme": analysis.mass_scheme,
        "hidden_mass": analysis.hidden_mass,
        "network": {
            "mass": net.mass, "sensitivity": _number(net.sensitivity),
            "design_sensitivity": _number(net.design_sensitivity), "certified": net.certified,
            "certification": net.certification,
            "log10_sensitivity": _log10(net.log10_sensitivity),
            "log10_design_sensitivity": _log10(net.log10_design_sensitivity),
            "uncertified_reasons": text(net.uncertified_reasons), "unknown_ops": text(net.unknown_ops),
            "assumptions": text(net.assumptions), "input_convention": net.input_convention,
            "input_sensitivities": {k: _number(v) for k, v in net.input_sensitivities.items()},
            "modular_norm_at_init": _number(net.modular_norm_at_init),
            "sharpness": _sharpness_dict(net.sharpness),
            "loss": _loss_dict(net.loss),
            "gradient_lipschitz": _number(net.loss.gradient_lipschitz) if net.loss else None,
            "block_sharpness": [{"name": b.name, "alpha": _number(b.alpha), "beta": _number(b.beta),
                                 "gamma": _number(b.gamma), "weight_sensitivity": _number(b.weight_sensitivity),
                                 "input_sensitivity": _number(b.input_sensitivity), "certified": b.certified}
                                for b in net.block_sharpness],
            "mass_groups": {
                by: [{"name": g.name, "atoms": g.atoms, "mass": g.mass, "share": g.share, "frozen": g.frozen}
                     for g in net.mass_groups if g.by == by]
                for by in ("role", "block")},
            "op_constants": [{"target": c.target, "count": c.count, "largest": c.largest,
                              "product": _number(c.product)} for c in analysis.op_constants()],
        },
        "assumptions": [{**row, "file": _short(row["file"], root) or None} for row in assumption_rows(analysis)],
        "layers": [_layer_dict(layer, root) for layer in analysis.layers],
        "residual_streams": [
            {"merges": [_merge_dict(analysis, m, root) for m in stream.merges], "depth": stream.depth,
             "alphas": [_number(a) for a in stream.alphas],
             "log10_alphas": [_log10(a) for a in stream.log10_alphas]}
            for stream in analysis.streams],
        "findings": [_finding_dict(f, root) for f in findings],
        "changes": [{"code": c.code, "role": c.role, "instances": c.instances, "fix": c.fix,
                     "file": _short(c.file, root) or None, "line": c.line,
                     "log10_design_sensitivity": [_log10(c.log10_sensitivity[0]), _log10(c.log10_sensitivity[1])],
                     "log10_target_spread": [_log10(c.log10_spread[0]), _log10(c.log10_spread[1])],
                     "clears": c.removes} for c in changes],
    }


def _sharpness_dict(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"alpha": _number(s.alpha), "beta": _number(s.beta), "gamma": _number(s.gamma),
            "weight_sensitivity": _number(s.weight_sensitivity), "certified": s.certified, "reason": s.reason,
            "nominal": s.nominal, "log10_alpha": _log10(s.log10_alpha), "log10_beta": _log10(s.log10_beta),
            "log10_gamma": _log10(s.log10_gamma), "log10_weight_sensitivity": _log10(s.log10_weight_sensitivity)}


def _loss_dict(loss: Any) -> dict[str, Any] | None:
    if loss is None:
        return None
    return {"name": loss.name, "sigma": _number(loss.sigma), "tau": _number(loss.tau), "norm": loss.norm,
            "safe_step": _number(loss.safe_step), "log10_gradient_lipschitz": _log10(loss.log10_gradient_lipschitz)}


def _merge_dict(analysis: Analysis, name: str, root: str | None = None) -> dict[str, Any]:
    merge = analysis.merge(name)
    return {"op": merge.op, "skip_coefficient": merge.skip_coefficient,
            "branch_coefficient": merge.branch_coefficient, "block_sensitivity": _number(merge.block_sensitivity),
            "design_block_sensitivity": _number(merge.design_block_sensitivity), "file": _short(merge.file, root) or None,
            "line": merge.line}


def to_json(analysis: Analysis, findings: tuple[Finding, ...] | None = None, root: str | None = None) -> str:
    return json.dumps(to_dict(analysis, findings, root), indent=2)


# ------------------------------------------------------------------------------------------------ rich table
def _collapse(layers: tuple[Layer, ...]) -> list[tuple[Layer, str, int]]:
    """Rows in execution order; repeated blocks (same role path, shape and numbers) collapse with a count."""
    groups: "OrderedDict[tuple, list[Layer]]" = OrderedDict()
    for layer in layers:
        pattern = re.sub(r"\.\d+(?=\.|$)", ".*", layer.name)
        key = (pattern, layer.kind, layer.shape, fmt(layer.mass_share), fmt(layer.downstream_sensitivity),
               fmt(layer.target_norm), fmt(layer.norm_at_init, 3), fmt(layer.sensitivity, 3))
        groups.setdefault(key, []).append(layer)
    return [(members[0], key[0] if len(members) > 1 else members[0].name, len(members))
            for key, members in groups.items()]


def render_full(analysis: Analysis, findings: tuple[Finding, ...] | None = None, console: Any = None,
                suppressed: int = 0, verbose: bool = False, root: str | None = None, note: str = "",
                baselined: int = 0, changes: tuple[Change, ...] = ()) -> None:
    """Print the per-layer table, the network summary and the findings with rich; paths relative to `root`."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    findings = analysis.findings if findings is None else findings
    model = analysis.model
    title = f"modnorm · {_short(model.file, root) or 'model'}" + (f":{model.entry}" if model.entry else "")
    table = Table(title=title, title_justify="left", header_style="bold", expand=False)
    for column, justify in (("layer", "left"), ("kind", "left"), ("shape", "left"), ("role", "left"),
                            ("mass share", "right"), ("sens.", "right"), ("S_down", "right"),
                            ("target", "right"), ("norm@init", "right"), ("line", "left")):
        table.add_column(column, justify=justify, no_wrap=column in ("layer", "shape", "line"))
    if verbose:  # the init law's prediction, and the sharpness of the network up to each atom's output
        for column in ("predicted", "α", "β", "γ"):
            table.add_column(column, justify="right")
    for layer, name, count in _collapse(analysis.layers):
        label = f"{name} ×{count}" if count > 1 else name
        source = "m" if layer.norm_source == "measured" else "p"
        where = f"{_short(layer.file, root)}:{layer.line}" if layer.file else ""
        style = None if layer.certified else "yellow"
        extra = ([fmt(layer.predicted_norm, 3) if layer.predicted_norm is not None else "",
                  *(fmt(v, 3) for v in analysis.op(layer.op).sharpness or ())] if verbose else [])
        table.add_row(label, layer.kind, "×".join(map(str, layer.shape)), layer.role, fmt(layer.mass_share),
                      fmt(layer.sensitivity), fmt_log10(layer.downstream_sensitivity, layer.log10_downstream_sensitivity),
                      fmt(layer.target_norm),
                      f"{fmt(layer.norm_at_init)} {source}", where, *extra, style=style)
    console.print(table)
    if verbose:
        _render_block_sharpness(analysis, console)
    _render_mass_groups(analysis, console)
    _render_summary(analysis, console, root)
    if note:
        console.print(f"[cyan]note:[/] {relative_text(note, root)}", highlight=False)
    _render_changes(changes, console, root)
    _render_findings(findings, console, root)
    if suppressed:
        console.print(f"[dim]{suppressed} finding{'s' if suppressed != 1 else ''} suppressed by "
                      f"`# modnorm: ignore` comments[/]")
    if baselined:
        console.print(f"[dim]{baselined} finding{'s' if baselined != 1 else ''} recorded in the baseline "
                      f"(not shown)[/]")


def _render_block_sharpness(analysis: Analysis, console: Any) -> None:
    """Each top-level block's (α, β, γ) in its own modular norm (`--verbose`)."""
    from rich.table import Table

    blocks = analysis.network.block_sharpness
    if not blocks:
        return
    table = Table(title="sharpness per block (own norm)", title_justify="left", header_style="bold", box=None)
    for column in ("block", "α", "β", "γ", "weight sens.", "input sens."):
        table.add_column(column, justify="left" if column == "block" else "right")
    for b in blocks:
        table.add_row(b.name, fmt(b.alpha), fmt(b.beta), fmt(b.gamma), fmt(b.weight_sensitivity),
                      fmt(b.input_sensitivity), style=None if b.certified else "yellow")
    console.print(table)


def _render_mass_groups(analysis: Analysis, console: Any, blocks_shown: int = 6) -> None:
    """Mass shares by role and by top-level block; a long stack of equal blocks shows its ends and a count."""
    from rich.table import Table

    groups = analysis.network.mass_groups
    if not groups:
        return
    table = Table(title="mass", title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in ("group", "atoms", "mass", "share"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for g in (g for g in groups if g.by == "role"):
        atoms = f"{g.atoms} (+{g.frozen} frozen)" if g.frozen else str(g.atoms)
        table.add_row(f"role {g.name}", atoms, fmt(g.mass), f"{g.share:.1%}")
    blocks = [g for g in groups if g.by == "block"]
    if len(blocks) > blocks_shown + 1:
        head, tail = blocks[: blocks_shown - 2], blocks[-2:]
        hidden = blocks[len(head):-2]
        rows = head + [None] + tail
    else:
        rows, hidden = blocks, []
    for g in rows:
        if g is None:
            table.add_row(f"… {len(hidden)} more blocks", str(sum(h.atoms for h in hidden)),
                          fmt(sum(h.mass for h in hidden)), f"{sum(h.share for h in hidden):.1%}", style="dim")
        else:
            table.add_row(f"block {g.name}", str(g.atoms), fmt(g.mass), f"{g.share:.1%}")
    for op in analysis.ops:  # weights of unknown modules (an LSTM): no mass, but never silently absent
        if op.unmodelled_parameters:
            table.add_row(f"unmodelled {op.module} ({op.target})", "?", "none",
                          f"{op.unmodelled_share:.1%} of the parameters", style="yellow")
    console.print(table)


def _weights_label(model: Any, root: str | None = None) -> str:
    if model.weights != "init":
        return f"{_short(model.weights, root)} (m = measured, one tensor at a time)"
    return "cpu (m = measured)" if model.device == "cpu" else "meta (p = predicted from the recorded init)"


def _render_summary(analysis: Analysis, console: Any, root: str | None = None) -> None:
    net, model = analysis.network, analysis.model
    status = "[green]certified[/]" if net.certified else "[yellow]not certified[/]"
    if net.certified and net.assumptions:
        status = f"[green]certified[/] given {len(net.assumptions)} assumption{'s' if len(net.assumptions) > 1 else ''} below"
    when = "at init" if model.weights == "init" else "of the checkpoint"  # an audit reads trained weights
    console.print(
        f"[bold]network[/]  mass {fmt(net.mass)} · sensitivity {fmt_log10(net.sensitivity, net.log10_sensitivity)} "
        f"({status}) · design sensitivity {fmt_log10(net.design_sensitivity, net.log10_design_sensitivity)} · "
        f"modular norm {when} {fmt(net.modular_norm_at_init)}")
    console.print(
        f"profile {analysis.profile} · masses {analysis.mass_scheme} (hidden {fmt(analysis.hidden_mass)}) · "
        f"tracer {model.tracer} · weights {_weights_label(model, root)} · "
        f"{model.parameters:,} parameters · {model.nodes} ops · eval mode")
    _render_sharpness(analysis, console, root)
    constants = analysis.op_constants(top=4)
    if constants:  # what the design sensitivity is made of besides atoms and merges (MN204 names the same)
        named = " · ".join(f"{c.target} {fmt(c.largest, 3)}" + (f" ×{c.count} = {fmt(c.product, 3)}" if c.count > 1 else "")
                           for c in constants)
        console.print(f"op constants above 1 (design): {named}", highlight=False)
    for reason in net.uncertified_reasons[:8]:
        console.print(f"  [yellow]not certified:[/] {relative_text(reason, root)}", highlight=False)
    if len(net.uncertified_reasons) > 8:
        console.print(f"  … and {len(net.uncertified_reasons) - 8} more (see --output-format json)")
    for op in net.unknown_ops:
        console.print(f"  [red]unknown op:[/] {relative_text(op, root)}", highlight=False)
    for assumption in assumption_lines(analysis) if net.assumptions else ():
        console.print(f"  [cyan]assumption:[/] {relative_text(assumption, root)}", highlight=False)


def _render_sharpness(analysis: Analysis, console: Any, root: str | None = None) -> None:
    sharp, loss = analysis.network.sharpness, analysis.network.loss
    if sharp is None:
        return
    label = "nominal" if sharp.nominal else "certified"
    if sharp.certified and loss is not None:
        # β and γ differentiate in the input; token ids cannot be perturbed, so for them both are 0 by definition
        discrete = " (discrete input)" if analysis.network.input_convention.startswith("discrete") else ""
        lip = loss.log10_gradient_lipschitz
        console.print(f"[bold]sharpness[/] ({label}) α {fmt_log10(sharp.alpha, sharp.log10_alpha)} · "
                      f"β {fmt_log10(sharp.beta, sharp.log10_beta)} · γ {fmt_log10(sharp.gamma, sharp.log10_gamma)}"
                      f"{discrete} · weight sensitivity "
                      f"{fmt_log10(sharp.weight_sensitivity, sharp.log10_weight_sensitivity)} · loss {loss.name} "
                      f"σ {fmt(loss.sigma)} τ {fmt(loss.tau)} → gradient Lipschitz σα + τA² = "
                      f"{fmt_log10(loss.gradient_lipschitz, lip)}, safe step {fmt_log10(loss.safe_step, -lip)}")
    else:
        console.print(f"[bold]sharpness[/] [yellow]not certified[/]: {relative_text(sharp.reason, root)}",
                      highlight=False)
    for stream in analysis.streams:
        logs = stream.log10_alphas or tuple(math.log10(a) if a > 0 else -math.inf for a in stream.alphas)
        if len(stream.alphas) >= 2 and all(math.isfinite(a) or math.isfinite(l) for a, l in zip(stream.alphas, logs)):
            figures = [fmt_log10(a, l, 3) for a, l in zip(stream.alphas, logs)]
            steps = " → ".join(_ends(tuple(figures)))
            console.print(f"  residual stream of {stream.depth} merges: α per block {steps}", highlight=False)


def _ends(values: tuple[float, ...], keep: int = 3) -> list[Any]:
    return list(values) if len(values) <= 2 * keep else [*values[:keep], "…", *values[-keep:]]


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def change_lines(changes: tuple[Change, ...], root: str | None = None) -> list[str]:
    """The ranked summary, one line per change: what it moves, from the calculus re-run with the fix applied."""
    lines = []
    for rank, c in enumerate(changes, 1):
        moved = []
        if abs(c.log10_sensitivity[0] - c.log10_sensitivity[1]) >= 0.005:
            moved.append(f"design sensitivity {_from_log10(c.log10_sensitivity[0])} → "
                         f"{_from_log10(c.log10_sensitivity[1])}")
        if abs(c.log10_spread[0] - c.log10_spread[1]) >= 0.005:
            moved.append(f"target spread ×{_from_log10(c.log10_spread[0])} → ×{_from_log10(c.log10_spread[1])}")
        removes = f"{c.removes} finding{'s' if c.removes != 1 else ''}"
        where = f"{_short(c.file, root)}:{c.line}" if c.file and c.line else "<model>"
        lines.append(f"{rank}. {c.code} {c.role or '<model>'}" + (f" ×{c.instances}" if c.instances > 1 else "")
                     + f" ({where}): " + "; ".join(moved or ["no design figure moves"]) + f"; clears {removes}")
    return lines


def _from_log10(value: float) -> str:
    return fmt_log10(10 ** value if value < 300 else math.inf, value, 3)


def _render_changes(changes: tuple[Change, ...], console: Any, root: str | None = None) -> None:
    if not changes:
        return
    console.print("[bold]changes that matter most[/] [dim](the calculus re-run with each fix applied)[/]")
    for line in change_lines(changes, root):
        console.print(f"  {line}", highlight=False)


def _render_findings(findings: tuple[Finding, ...], console: Any, root: str | None = None) -> None:
    if not findings:
        console.print("[green]no findings[/]")
        return
    for f in findings:
        where = f"{_short(f.file, root)}:{f.line}" if f.file and f.line else (_short(f.file, root) or "<model>")
        console.print(f"[{_SEVERITY_STYLE.get(f.severity, '')}]{f.severity:7}[/] {f.code} {where} "
                      f"[dim]\\[{f.module or '<model>'}][/] {relative_text(f.message, root)}", highlight=False)
        if f.fix:
            console.print(f"         [dim]fix:[/] {f.fix}", highlight=False)


# ----------------------------------------------------------------------------------------------------- sweeps
_QUANTITY_LABELS = {"norm_at_init": "norm@init", "sensitivity": "sens.", "design_downstream_sensitivity": "S_down",
                   "target_norm": "target", "design_sensitivity": "design sens.", "alpha": "α",
                   "gradient_lipschitz": "grad. Lipschitz", "attention_logit_bound": "attn logit bound"}
SWEEP_ROWS = ("norm_at_init", "sensitivity", "design_downstream_sensitivity", "target_norm")


def render_sweep(sweep: Any, console: Any, threshold: float = 0.25) -> None:
    """The coordinate-check table: one row per role and quantity, one column per size, then the exponents."""
    from rich.table import Table

    names = " × ".join(a.name for a in sweep.axes)
    table = Table(title=f"scale sweep over {names} (p: quantity ∝ size^p)", title_justify="left",
                  header_style="bold")
    table.add_column("role", no_wrap=True)
    table.add_column("quantity", no_wrap=True)
    for point in sweep.points:
        table.add_column("×".join(str(v) for v in point.values()), justify="right")
    for axis in sweep.axes:
        table.add_column(f"p({axis.name})", justify="right")
    table.add_column("spread", justify="right")
    for series in sweep.series:
        if series.role != "network" and series.quantity not in SWEEP_ROWS:
            continue
        drifting = series.should_be_flat and any(abs(p) > threshold for p in series.exponents.values() if p == p)
        table.add_row(series.role, _QUANTITY_LABELS.get(series.quantity, series.quantity),
                      *(fmt(v, 3) for v in series.values),
                      *(f"{p:+.2f}" if p == p else "–" for p in series.exponents.values()), fmt(series.spread, 3),
                      style="yellow" if drifting else None)
    console.print(table)


def render_probe(measured: Any, console: Any) -> None:
    from rich.table import Table

    table = Table(title="modnorm probe: measured on real weights", title_justify="left", header_style="bold")
    for column in ("quantity", "bound", "measured", "measured/bound", "how"):
        table.add_column(column, justify="left" if column in ("quantity", "how") else "right")
    for r in measured.rows:
        style = "bold red" if r.violated else ("yellow" if r.assumption_broken else
                                               "dim" if r.kind == "compare" else None)
        # a share row sets two shares side by side: no bound, so no measured/bound ratio to read as one
        ratio = "—" if r.kind == "compare" else fmt(r.tightness, 3)
        table.add_row(r.what, fmt(r.bound), fmt(r.measured), ratio, r.note, style=style)
    console.print(table)
    for note in measured.notes:
        console.print(f"[dim]{note}[/]")
    for r in measured.violations:
        console.print(f"[bold red]BUG: measured {r.measured:.6g} > bound {r.bound:.6g} for {r.what} (op {r.op}); "
                      "please report it with the model file[/]")
    for r in measured.broken_assumptions:
        sign = ">" if r.kind == "ceiling" else "<"
        console.print(f"[yellow]assumption violated: {r.what}: measured {r.measured:.4g} {sign} {r.bound:.4g} (op {r.op}); "
                      "the figures conditioned on it do not hold at these inputs (profile `certified` drops it)[/]")
    if not measured.violations:
        checked = sum(r.kind == "bound" for r in measured.rows)
        compared = len(measured.rows) - checked
        console.print(f"[green]every measurement is within its bound[/] ({checked} bounds checked"
                      + (f"; the {compared} share rows compare mass shares with measured shares, they bound nothing)"
                         if compared else ")"))
