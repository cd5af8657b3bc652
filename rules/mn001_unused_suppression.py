"""MN001 unused-suppression."""

from __future__ import annotations

from typing import Iterator

from modnorm.result import Analysis, Finding
from modnorm.rules import Rule, Severity


class UnusedSuppression(Rule):
    """## What it does
    Flags a `# modnorm: ignore[...]` comment that suppresses nothing: no finding of that code points at its
    line, or the code is not a modnorm rule at all.

    ## Why is this bad?
    A suppression outlives the problem it excused: after the model is fixed (or the finding moved to another
    line), the stale comment would silently hide the next real finding on that line.

    ## Example
        x = x + self.mlp(self.ln_2(x))  # modnorm: ignore[MN301]

    ## Use instead
        x = x + self.mlp(self.ln_2(x))  # modnorm: ignore[MN201]  (the code that is actually reported here)

    or delete the comment.

    ## Options
    None. Codes of rules that are not enabled (e.g. under `--select MN2`) are not reported.

    ## References
    [Suppressing a finding](../guides/ci.md#suppress); ruff's RUF100 (unused-noqa), which this rule follows.
    """

    code = "MN001"
    name = "unused-suppression"
    severity = Severity.WARNING

    def check(self, analysis: Analysis) -> Iterator[Finding]:
        """Suppressions live in source files, not in the analysis: the check pipeline reports them."""
        return iter(())
