"""MN904 tracing-fallback."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class TracingFallback(Rule):
    """## What it does
    Reports that the model's graph was not read by the first tracing route, and what the route that took over
    cannot see: the op log (`oplog`) follows only the path the example inputs took; the module-only route
    (`modules`) has no graph at all, so downstream sensitivities, targets, residual streams, the network's
    sensitivity and its sharpness are not computed.

    ## Why is this bad?
    The modular-norm calculus composes bounds along the graph. A graph recorded from one run is exact for the
    branch taken by the example inputs and says nothing about the other branch of a data-dependent `if`; no
    graph means no network-level guarantee at all. The torch.export route is exact and is not reported.

    ## Example
        def forward(self, x):
            h = self.a(x)
            if h.abs().max() > 100:  # data-dependent control flow
                h = h / h.abs().max()
            return self.b(h)

    ## Use instead
        def forward(self, x):
            h = self.a(x)
            h = h / h.abs().amax().clamp_min(100) * 100  # the same effect, as tensor operations

    or mark the module that holds the construct as a leaf (`--leaf CLASS`) and register its semantics with
    `@modnorm.register(CLASS)`.

    ## Options
    None.

    ## References
    [When the graph is not available](../theory/dag.md#module-only); [Tracing routes](../guides/audit.md#tracing).
    """

    code = "MN904"
    name = "tracing-fallback"
    severity = Severity.WARNING

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        model = analysis.model
        if model.tracer not in ("oplog", "modules"):
            return
        failures = [a for a in model.tracer_attempts if not a.ok]
        where = next((a for a in failures if a.file and a.line), None)
        file, line = (where.file, where.line) if where else (model.file, model.entry_line)
        if model.tracer == "oplog":
            message = ("the graph was recorded from one run of the example inputs (op log): bounds hold for the "
                       "path those inputs took")
            severity = Severity.INFO if not failures else self.severity
        else:
            message = ("no graph could be traced; only each atom's own norm and sensitivity are computed, not "
                       "targets, residual streams, network sensitivity or sharpness")
            severity = self.severity
        if failures:
            message += "; " + "; ".join(map(str, failures))
        yield self.finding(message, fix="rewrite the construct named above with tensor operations, or mark its "
                                        "module as a leaf (--leaf CLASS) and register its semantics",
                           file=file, line=line, severity=severity)
