"""MN203 residual-stream-growth."""

from __future__ import annotations

import math
from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class ResidualStreamGrowth(Rule):
    """## What it does
    Reports a residual stream whose sensitivity — the product of its blocks' sensitivities — exceeds e² (the
    `(1 + 2/L)^L` envelope: what L merges within MN201's budget compound to), as an error above 100.

    ## Why is this bad?
    The stream's sensitivity is how much the network output moves per unit change at the stream's input. When it
    grows with depth, the deep model needs a different learning rate from the shallow one and early blocks are
    starved of feature learning (their targets are divided by the growth).

    ## Example
        for block in self.blocks:
            x = x + block(x)

    ## Use instead
        for block in self.blocks:
            x = (1 - 1 / L) * x + (1 / L) * block(x)

    A stream with a block whose sensitivity is unbounded (an op no constant bounds) is left to MN901, which
    names the op: its growth is inf whatever the residual scaling, so a second finding would add nothing.

    ## Options
    - `warn` (e² = 7.39: the envelope of MN201's default `slack` 2, so a stream whose merges all pass MN201
      does not warn here), `error` (100.0).

    ## References
    [Residual merges](../theory/dag.md#residual-merges); [Residual networks](../theory/modular-norm.md#residual).
    """

    code = "MN203"
    name = "residual-stream-growth"
    severity = Severity.WARNING
    options = {"warn": math.e ** 2, "error": 100.0}
    explained_by = ("MN103", "MN201", "MN202", "MN301")  # the stream's blocks: their scaling and what raises their sensitivity

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        for stream in analysis.streams:
            if any(math.isinf(analysis.merge(m).design_block_sensitivity) for m in stream.merges):
                continue  # a block holds an op without a bound: MN901 names that op, the inf says nothing more
            growth = math.prod(analysis.merge(m).design_block_sensitivity for m in stream.merges)
            if growth <= self.config["warn"]:
                continue
            last = analysis.merge(stream.merges[-1])
            severity = Severity.ERROR if growth > self.config["error"] else Severity.WARNING
            yield self.finding(
                f"residual stream of {stream.depth} merges grows ×{growth:.3g} "
                f"(×{growth ** (1 / stream.depth):.3g} per merge)",
                fix="use 1 - 1/L and 1/L multipliers on skip and branch so each block has sensitivity 1",
                module=last.module, file=last.file, line=last.line, op=last.op, severity=severity)
