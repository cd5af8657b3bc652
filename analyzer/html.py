"""`-f html`: one self-contained page per run (inline CSS, JS and SVG; no network, no CDN).

For each model: the network figures; the graph drawn by depth (the longest path from an input), each atom coloured
by its target norm or its downstream sensitivity (a switch), the residual streams drawn through their merges; the
per-layer table, sortable and filterable; the findings grouped by the role of what they flag, each with its source
line. For a sweep, the log-log charts of each quantity against each swept size, with the fitted exponents and the
x ticks at the swept values. A script checks the page once it has rendered and writes the outcome into
`#modnorm-selfcheck` (what the headless-browser test reads). Renders, never computes.
"""

from __future__ import annotations

import html
import linecache
import math
from typing import Any, Sequence

from ._version import __version__
from .html_assets import CSS, JS
from .report import fmt, relative_path, relative_text
from .result import Analysis, Finding, Layer, Op

__all__ = ["render_html"]

_ROLE_ORDER = ("input", "hidden", "output", "gain", "modules", "network")
_ROLE_TITLE = {"input": "input atoms", "hidden": "hidden atoms", "output": "output atoms", "gain": "gains",
               "modules": "blocks, residual streams, attention, normalization", "network": "the whole network"}
# viridis at five stops: perceptually even, readable in grey, the usual choice for a magnitude
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_STREAM_COLOURS = ("#e4572e", "#7b2cbf", "#2e86ab", "#f18f01", "#3bb273")
# Tableau 10: distinct categorical colours for the lines of one chart
_LINE_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac")
_DX, _DY, _PAD = 34, 40, 26


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(results: Sequence[Any], root: str | None = None) -> str:
    """The whole page for the `CheckResult`s of one run."""
    sections = "\n".join(_model_section(i, r, root) for i, r in enumerate(results))
    title = ", ".join(relative_path(r.analysis.model.file, root) or r.target for r in results)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>modnorm · {_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<header class=\"top\"><h1>modnorm <span class=\"dim\">{_e(__version__)}</span></h1>"
            f"<p class=\"dim\">modular-norm analysis (Large et al. 2024): every bound is an upper bound on the "
            f"model's behaviour; targets t<sub>i</sub> = (m<sub>i</sub>/M) / S<sub>down</sub>(i).</p>"
            f"<div id=\"modnorm-selfcheck\" data-status=\"pending\">self-check: pending</div></header>\n"
            f"{sections}\n<script>{JS}</script>\n</body></html>\n")


# ----------------------------------------------------------------------------------------------------- model
def _model_section(index: int, result: Any, root: str | None) -> str:
    analysis: Analysis = result.analysis
    model = analysis.model
    name = (relative_path(model.file, root) or result.target) + (f":{model.entry}" if model.entry else "")
    parts = [f"<section class=\"model\" id=\"model-{index}\"><h2>{_e(name)}</h2>",
             _summary(analysis, result, root)]
    if result.sweep is not None:
        parts.append(_sweep_charts(result.sweep))
    parts += [_graph(analysis, index), _layer_table(analysis, root), _findings(analysis, result.findings, root),
              "</section>"]
    return "\n".join(parts)


def _summary(analysis: Analysis, result: Any, root: str | None) -> str:
    net, model = analysis.network, analysis.model
    status = ("<span class=\"warn\">not certified</span>" if not net.certified else
              "<span class=\"ok\">certified</span>" if not net.assumptions else
              f"<span class=\"ok\">certified given {len(net.assumptions)} assumption"
              f"{'s' if len(net.assumptions) > 1 else ''}</span>")
    figures = [("mass", fmt(net.mass)), ("sensitivity", f"{fmt(net.sensitivity)} {status}"),
               ("design sensitivity", _e(fmt(net.design_sensitivity))),
               ("modular norm at init", _e(fmt(net.modular_norm_at_init))),
               ("parameters", f"{model.parameters:,}"), ("ops", str(model.nodes)),
               ("profile", _e(analysis.profile)), ("tracer", _e(model.tracer)),
               ("findings", str(len(result.findings)))]
    cells = "".join(f"<div class=\"fig\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div></div>"
                    for k, v in figures)
    notes = [f"<li class=\"warn\">not certified: {_e(relative_text(r, root))}</li>" for r in net.uncertified_reasons]
    notes += [f"<li class=\"bad\">unknown op: {_e(relative_text(o, root))}</li>" for o in net.unknown_ops]
    notes += [f"<li>assumption: {_e(relative_text(a, root))}</li>" for a in net.assumptions]
    if result.note:
        notes.append(f"<li>note: {_e(relative_text(result.note, root))}</li>")
    if result.suppressed:
        notes.append(f"<li class=\"dim\">{result.suppressed} finding(s) suppressed by `# modnorm: ignore`</li>")
    if result.baselined:
        notes.append(f"<li class=\"dim\">{result.baselined} finding(s) recorded in the baseline, not shown</li>")
    listed = f"<ul class=\"notes\">{''.join(notes)}</ul>" if notes else ""
    return f"<div class=\"figures\">{cells}</div>{listed}"


# ----------------------------------------------------------------------------------------------------- graph
def _depths(ops: Sequence[Op]) -> dict[str, int]:
    """Longest path from an input, in ops: the column each op is drawn in (ops come in topological order)."""
    depth: dict[str, int] = {}
    for op in ops:
        depth[op.name] = 1 + max((depth[i] for i in op.inputs if i in depth), default=-1)
    return depth


def _positions(ops: Sequence[Op]) -> dict[str, tuple[float, float]]:
    depth = _depths(ops)
    rows: dict[int, int] = {}
    slot: dict[str, int] = {}
    for op in ops:
        slot[op.name] = rows.get(depth[op.name], 0)
        rows[depth[op.name]] = slot[op.name] + 1
    return {op.name: (_PAD + depth[op.name] * _DX, _PAD + slot[op.name] * _DY) for op in ops}


def _colour(fraction: float) -> str:
    """Viridis at `fraction` in [0, 1]."""
    f = min(max(fraction, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(f), len(_VIRIDIS) - 2)
    t = f - low
    rgb = (round(a + (b - a) * t) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1]))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _scale(values: Sequence[float]) -> tuple[float, float]:
    """log10 range of the positive finite values (a one-value range is widened so it has a middle)."""
    logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
    if not logs:
        return 0.0, 1.0
    low, high = min(logs), max(logs)
    return (low - 0.5, high + 0.5) if high - low < 1e-9 else (low, high)


def _fill(value: float, scale: tuple[float, float]) -> str:
    if not (value > 0 and math.isfinite(value)):
        return "#b0b0b0"  # unbounded or zero: no colour on the scale
    return _colour((math.log10(value) - scale[0]) / (scale[1] - scale[0]))


def _graph(analysis: Analysis, index: int) -> str:
    ops = analysis.ops
    if not ops:
        return "<h3>graph</h3><p class=\"dim\">no graph (the module-only route keeps no graph)</p>"
    where = _positions(ops)
    layers = {layer.op: layer for layer in analysis.layers}
    scales = {"target": _scale([l.target_norm for l in analysis.layers]),
              "sdown": _scale([l.downstream_sensitivity for l in analysis.layers])}
    width = max(x for x, _ in where.values()) + 2 * _PAD
    height = max(y for _, y in where.values()) + 2 * _PAD
    edges = [_edge(where[i], where[op.name]) for op in ops for i in op.inputs if i in where]
    streams = [_stream_path(analysis, s.merges, where, k) for k, s in enumerate(analysis.streams)]
    merges = {m for s in analysis.streams for m in s.merges}
    nodes = [_node(op, where[op.name], layers.get(op.name), scales, op.name in merges) for op in ops]
    legend = "".join(_legend(key, label, scales[key], key == "target")
                     for key, label in (("target", "target norm"), ("sdown", "downstream sensitivity")))
    stream_keys = "".join(f"<span class=\"swatch\" style=\"background:{_STREAM_COLOURS[k % len(_STREAM_COLOURS)]}\">"
                          f"</span>residual stream {k + 1} ({s.depth} merges) "
                          for k, s in enumerate(analysis.streams))
    return (f"<h3>graph <span class=\"dim\">by depth, inputs on the left; {len(ops)} ops, "
            f"{len(analysis.layers)} atoms</span></h3>"
            f"<div class=\"controls\">colour atoms by <select class=\"colour-by\" data-model=\"{index}\">"
            f"<option value=\"target\">target norm</option><option value=\"sdown\">downstream sensitivity"
            f"</option></select>{legend}<span class=\"keys\">{stream_keys}<span class=\"swatch bond\"></span>"
            f"op <span class=\"swatch unknown\"></span>unknown op</span></div>"
            f"<div class=\"graph\"><svg xmlns=\"http://www.w3.org/2000/svg\" class=\"graph-svg\" "
            f"data-model=\"{index}\" data-expected-nodes=\"{len(ops)}\" width=\"{width}\" height=\"{height}\" "
            f"viewBox=\"0 0 {width} {height}\"><g class=\"edges\">{''.join(edges)}</g>"
            f"<g class=\"streams\">{''.join(streams)}</g><g class=\"nodes\">{''.join(nodes)}</g></svg></div>")


def _edge(start: tuple[float, float], end: tuple[float, float]) -> str:
    (x1, y1), (x2, y2) = start, end
    bend = (x2 - x1) / 2
    return f"<path d=\"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}\"/>"


def _stream_path(analysis: Analysis, merges: Sequence[str], where: dict[str, tuple[float, float]], k: int) -> str:
    points = " ".join(f"{where[m][0]},{where[m][1]}" for m in merges if m in where)
    colour = _STREAM_COLOURS[k % len(_STREAM_COLOURS)]
    titles = "; ".join(f"{analysis.merge(m).skip_coefficient:g}·x + {analysis.merge(m).branch_coefficient:g}·f(x), "
                       f"block sensitivity {fmt(analysis.merge(m).block_sensitivity)}" for m in merges[:6])
    return (f"<polyline class=\"stream\" points=\"{points}\" stroke=\"{colour}\">"
            f"<title>residual stream {k + 1}: {_e(titles)}</title></polyline>")


def _node(op: Op, at: tuple[float, float], layer: Layer | None, scales: dict[str, tuple[float, float]],
          merge: bool) -> str:
    x, y = at
    tip = _e(f"{op.name}: {op.target} [{op.module or '<model>'}]"
             + (f"\n{layer.name} {layer.kind} {'×'.join(map(str, layer.shape))} role {layer.role}\n"
                f"target {fmt(layer.target_norm)} · S_down {fmt(layer.downstream_sensitivity)} · "
                f"norm@init {fmt(layer.norm_at_init)}" if layer else f"\nLipschitz {fmt(op.sensitivity)}")
             + ("" if op.certified else f"\nnot certified: {op.reason}"))
    common = f"class=\"node {{cls}}\" data-op=\"{_e(op.name)}\""
    if layer is not None:
        target, sdown = (_fill(layer.target_norm, scales["target"]),
                         _fill(layer.downstream_sensitivity, scales["sdown"]))
        return (f"<rect {common.format(cls='atom')} data-layer=\"{_e(layer.name)}\" data-c-target=\"{target}\" "
                f"data-c-sdown=\"{sdown}\" fill=\"{target}\" x=\"{x - 8}\" y=\"{y - 8}\" width=\"16\" height=\"16\" "
                f"rx=\"3\"><title>{tip}</title></rect><text class=\"label\" x=\"{x}\" y=\"{y + 19}\" "
                f"text-anchor=\"middle\">{_e(_short_name(layer.name))}</text>")
    if merge:
        return (f"<path {common.format(cls='merge')} d=\"M{x},{y - 7} L{x + 7},{y} L{x},{y + 7} L{x - 7},{y} Z\">"
                f"<title>{tip}</title></path>")
    cls = "unknown" if op.kind == "unknown" else ("io" if op.kind in ("input", "output") else "bond")
    if not op.certified and cls == "bond":
        cls = "bond uncertified"
    radius = 6 if cls == "io" else 4
    return f"<circle {common.format(cls=cls)} cx=\"{x}\" cy=\"{y}\" r=\"{radius}\"><title>{tip}</title></circle>"


def _short_name(name: str) -> str:
    """The last part of a module path that is not a block index: `h.0.attn.c_attn` → `c_attn`."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    return (parts[-1] if parts else name)[:12]


def _legend(key: str, label: str, scale: tuple[float, float], shown: bool) -> str:
    stops = "".join(f"{_colour(i / 4)} {i * 25}%," for i in range(5)).rstrip(",")
    return (f"<span class=\"legend\" data-key=\"{key}\"{'' if shown else ' hidden'}>{_e(label)} "
            f"{_e(fmt(10 ** scale[0], 2))} <span class=\"bar\" style=\"background:linear-gradient(90deg,{stops})\">"
            f"</span> {_e(fmt(10 ** scale[1], 2))} <span class=\"swatch grey\"></span>∞ or 0</span>")


# ----------------------------------------------------------------------------------------------------- table
_COLUMNS = (("layer", "text"), ("kind", "text"), ("shape", "text"), ("role", "text"), ("mass share", "num"),
            ("sens.", "num"), ("S_down", "num"), ("target", "num"), ("norm@init", "num"), ("norm / target", "num"),
            ("line", "text"))


def _layer_table(analysis: Analysis, root: str | None) -> str:
    roles = sorted({l.role for l in analysis.layers}, key=lambda r: (_ROLE_ORDER + (r,)).index(r))
    options = "".join(f"<option value=\"{_e(r)}\">{_e(r)}</option>" for r in roles)
    head = "".join(f"<th data-type=\"{kind}\" tabindex=\"0\">{_e(name)}</th>" for name, kind in _COLUMNS)
    rows = "".join(_layer_row(layer, root) for layer in analysis.layers)
    return (f"<h3>layers <span class=\"dim\">click a header to sort; type to filter</span></h3>"
            f"<div class=\"controls\"><input class=\"filter\" type=\"search\" placeholder=\"filter layers "
            f"(name, kind, role)\"><select class=\"role-filter\"><option value=\"\">every role</option>{options}"
            f"</select> <span class=\"count dim\"></span></div>"
            f"<table class=\"layers\" data-expected-rows=\"{len(analysis.layers)}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _num_cell(value: float, text: str | None = None) -> str:
    sortable = value if isinstance(value, (int, float)) and math.isfinite(value) else (1e308 if value > 0 else -1e308)
    return f"<td class=\"num\" data-v=\"{sortable:.17g}\">{_e(text if text is not None else fmt(value))}</td>"


def _layer_row(layer: Layer, root: str | None) -> str:
    where = f"{relative_path(layer.file, root)}:{layer.line}" if layer.file else ""
    source = "m" if layer.norm_source == "measured" else "p"
    ratio = layer.norm_at_init / layer.target_norm if layer.target_norm > 0 else math.inf
    cells = [f"<td data-v=\"{_e(layer.name)}\">{_e(layer.name)}</td>", f"<td>{_e(layer.kind)}</td>",
             f"<td>{_e('×'.join(map(str, layer.shape)))}</td>", f"<td>{_e(layer.role)}</td>",
             _num_cell(layer.mass_share), _num_cell(layer.sensitivity), _num_cell(layer.downstream_sensitivity),
             _num_cell(layer.target_norm), _num_cell(layer.norm_at_init, f"{fmt(layer.norm_at_init)} {source}"),
             _num_cell(ratio), f"<td class=\"loc\">{_e(where)}</td>"]
    style = "" if layer.certified else " class=\"uncertified\""
    return f"<tr data-role=\"{_e(layer.role)}\" data-layer=\"{_e(layer.name)}\"{style}>{''.join(cells)}</tr>"


# -------------------------------------------------------------------------------------------------- findings
def _role_of(finding: Finding, layers: dict[str, Layer]) -> str:
    layer = layers.get(finding.module)
    if layer is not None:
        return "gain" if layer.kind == "Gain" else layer.role
    return "modules" if finding.module else "network"


def _findings(analysis: Analysis, findings: Sequence[Finding], root: str | None) -> str:
    if not findings:
        return "<h3>findings</h3><p class=\"ok\">no findings</p>"
    layers = {layer.name: layer for layer in analysis.layers}
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(_role_of(f, layers), []).append(f)
    blocks = []
    for role in sorted(groups, key=lambda r: (_ROLE_ORDER + (r,)).index(r)):
        cards = "".join(_finding_card(f, root) for f in groups[role])
        blocks.append(f"<details open class=\"group\"><summary>{_e(_ROLE_TITLE.get(role, role))} "
                      f"<span class=\"dim\">({len(groups[role])})</span></summary>{cards}</details>")
    return f"<h3>findings <span class=\"dim\">grouped by the role of what they flag</span></h3>{''.join(blocks)}"


def _source_line(path: str | None, line: int | None) -> str:
    text = linecache.getline(path, line).rstrip() if path and line else ""
    return f"<pre class=\"src\"><span class=\"ln\">{line}</span>{_e(text.strip())}</pre>" if text.strip() else ""


def _finding_card(f: Finding, root: str | None) -> str:
    where = f"{relative_path(f.file, root)}:{f.line}" if f.file and f.line else (relative_path(f.file, root) or "")
    related = "".join(f"<div class=\"related dim\">related: {_e(relative_path(p, root))}:{n}</div>"
                      f"{_source_line(p, n)}" for p, n in f.related)
    fix = f"<div class=\"fix\"><b>fix:</b> {_e(f.fix)}</div>" if f.fix else ""
    return (f"<div class=\"finding {_e(f.severity)}\"><div class=\"head\"><span class=\"sev\">{_e(f.severity)}</span>"
            f" <b>{_e(f.code)}</b> <span class=\"dim\">{_e(f.name)}</span> <span class=\"loc\">{_e(where)}</span>"
            f" <code>[{_e(f.module or '<model>')}]</code></div><div class=\"msg\">{_e(relative_text(f.message, root))}"
            f"</div>{fix}{_source_line(f.file, f.line)}{related}</div>")


# ----------------------------------------------------------------------------------------------------- sweep
_SWEEP_QUANTITIES = ("norm_at_init", "sensitivity", "design_downstream_sensitivity", "target_norm")
_LINES_PER_CHART = 8


def _sweep_charts(sweep: Any) -> str:
    charts = []
    for axis in sweep.axes:
        base = {a.name: a.values[-1] for a in sweep.axes if a is not axis}  # other axes at their largest value
        network = [s for s in sweep.series if s.role == "network"]
        for series_group, title in ([network, "network"],
                                    *[([s for s in sweep.series if s.role != "network" and s.quantity == q],
                                       q.replace("_", " ")) for q in _SWEEP_QUANTITIES]):
            chart = _chart(sweep, axis, base, series_group, title)
            if chart:
                charts.append(chart)
    return (f"<h3>scale sweep <span class=\"dim\">log-log; p is the fitted exponent (quantity ∝ size<sup>p</sup>)"
            f"</span></h3><div class=\"charts\">{''.join(charts)}</div>")


def _points(sweep: Any, series: Any, axis: Any, base: dict[str, Any]) -> list[tuple[float, float]]:
    return [(point[axis.name], value) for point, value in zip(sweep.points, series.values)
            if all(point[k] == v for k, v in base.items()) and value > 0 and math.isfinite(value)]


def _chart(sweep: Any, axis: Any, base: dict[str, Any], series: Sequence[Any], title: str,
           width: int = 420, height: int = 260) -> str:
    lines = [(s, _points(sweep, s, axis, base)) for s in series]
    lines = [(s, pts) for s, pts in lines if len(pts) >= 2]
    lines.sort(key=lambda item: -abs(_finite(item[0].exponents.get(axis.name))))
    lines = lines[:_LINES_PER_CHART]
    if not lines:
        return ""
    left, right, top, bottom = 58, 12, 22, 34
    xs = sorted({x for _, pts in lines for x, _ in pts})
    ys = [y for _, pts in lines for _, y in pts]
    x0, x1 = math.log10(xs[0]), math.log10(xs[-1])
    y0, y1 = math.floor(math.log10(min(ys)) - 1e-9), math.ceil(math.log10(max(ys)) + 1e-9)
    y1 = y1 if y1 > y0 else y0 + 1
    px = lambda x: left + (math.log10(x) - x0) / ((x1 - x0) or 1) * (width - left - right)  # noqa: E731
    py = lambda y: top + (y1 - math.log10(y)) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    grid = [f"<line class=\"grid\" x1=\"{px(x):.1f}\" x2=\"{px(x):.1f}\" y1=\"{top}\" y2=\"{height - bottom}\"/>"
            f"<text class=\"tick\" x=\"{px(x):.1f}\" y=\"{height - bottom + 14}\" text-anchor=\"middle\">{x:g}</text>"
            for x in xs]
    step = max(1, (y1 - y0) // 6)
    grid += [f"<line class=\"grid\" x1=\"{left}\" x2=\"{width - right}\" y1=\"{py(10.0 ** k):.1f}\" "
             f"y2=\"{py(10.0 ** k):.1f}\"/><text class=\"tick\" x=\"{left - 6}\" y=\"{py(10.0 ** k) + 4:.1f}\" "
             f"text-anchor=\"end\">{_decade(k)}</text>" for k in range(y0, y1 + 1, step)]
    paths, keys = [], []
    for n, (s, pts) in enumerate(lines):
        colour = _LINE_COLOURS[n % len(_LINE_COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dots = "".join(f"<circle cx=\"{px(x):.1f}\" cy=\"{py(y):.1f}\" r=\"3\" fill=\"{colour}\"/>" for x, y in pts)
        p = s.exponents.get(axis.name, math.nan)
        label = f"{s.role if s.role != 'network' else s.quantity.replace('_', ' ')}"
        paths.append(f"<polyline points=\"{coords}\" stroke=\"{colour}\" class=\"series\"/>{dots}")
        drift = " drift" if s.should_be_flat and abs(_finite(p)) > 0.25 else ""
        keys.append(f"<li class=\"{drift.strip()}\"><span class=\"swatch\" style=\"background:{colour}\"></span>"
                    f"{_e(label)} <b>p = {p:+.2f}</b></li>" if p == p else
                    f"<li><span class=\"swatch\" style=\"background:{colour}\"></span>{_e(label)} p = –</li>")
    return (f"<figure class=\"chart\"><figcaption>{_e(title)} vs {_e(axis.name)}"
            f"{' (' + ', '.join(f'{k}={v:g}' for k, v in base.items()) + ')' if base else ''}</figcaption>"
            f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" "
            f"viewBox=\"0 0 {width} {height}\" class=\"chart-svg\">{''.join(grid)}"
            f"<text class=\"axis\" x=\"{(left + width - right) / 2}\" y=\"{height - 4}\" text-anchor=\"middle\">"
            f"{_e(axis.name)}</text>{''.join(paths)}</svg><ul class=\"keys\">{''.join(keys)}</ul></figure>")


def _decade(k: int) -> str:
    return f"{10.0 ** k:g}" if -3 <= k <= 4 else f"1e{k}"


def _finite(x: Any) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0
