"""Inline suppression: a trailing `# modnorm: ignore[MN301]` (or bare `# modnorm: ignore`) on the source line a
finding points at. Not `# noqa`, which belongs to ruff and flake8.

A suppression that suppresses nothing is itself reported as MN001 (as ruff's RUF100 does), so stale comments do
not outlive the problem they excused. Codes of rules that are not enabled are left alone: with `--select MN2`
a `# modnorm: ignore[MN301]` is not stale, it is merely not exercised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .result import Finding

__all__ = ["Suppression", "scan", "apply"]

_COMMENT = re.compile(r"#\s*modnorm:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)


@dataclass(frozen=True)
class Suppression:
    file: str
    line: int
    codes: tuple[str, ...]  # empty: every code


def scan(path: str) -> list[Suppression]:
    """The suppression comments of one file (only in comments: a `#` inside a string is skipped)."""
    import io
    import tokenize

    try:
        text = Path(path).read_text(errors="replace")
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (OSError, tokenize.TokenError, SyntaxError):
        return []
    found = []
    for token in tokens:
        if token.type == tokenize.COMMENT:
            match = _COMMENT.search(token.string)
            if match:
                codes = tuple(c.strip().upper() for c in (match["codes"] or "").split(",") if c.strip())
                found.append(Suppression(path, token.start[0], codes))
    return found


def _covers(suppression: Suppression, finding: Finding) -> bool:
    return not suppression.codes or any(finding.code.startswith(code) for code in suppression.codes)


def apply(findings: Iterable[Finding], files: Iterable[str], enabled: Callable[[str], bool],
          unused: Callable[[Suppression, str], Finding] | None) -> tuple[list[Finding], int]:
    """Drop findings covered by a comment on their line; add an `unused(suppression, why)` finding per stale code
    (none when `unused` is None, i.e. MN001 is not selected).

    Returns the remaining findings and how many were suppressed.
    """
    findings = list(findings)
    by_line: dict[tuple[str, int], list[Suppression]] = {}
    for path in dict.fromkeys(str(Path(f).resolve()) for f in files if f):
        for s in scan(path):
            by_line.setdefault((s.file, s.line), []).append(s)
    used: set[tuple[Suppression, str]] = set()
    kept = []
    for finding in findings:
        key = (str(Path(finding.file).resolve()), finding.line) if finding.file and finding.line else None
        covering = [s for s in by_line.get(key, []) if _covers(s, finding)] if key else []
        for s in covering:
            used.add((s, next((c for c in s.codes if finding.code.startswith(c)), "")))
        if not covering:
            kept.append(finding)
    suppressed = len(findings) - len(kept)
    for suppressions in by_line.values() if unused else ():
        for s in suppressions:
            for code in s.codes or ("",):
                if (s, code) in used:
                    continue
                if code and not _known(code):
                    kept.append(unused(s, f"`{code}` is not a modnorm rule code"))
                elif not code or enabled(code):
                    kept.append(unused(s, f"no {code or 'finding'} is reported on this line"))
    return kept, suppressed


def _known(code: str) -> bool:
    from modnorm.rules import all_rules

    return any(c.startswith(code) for c in all_rules())
