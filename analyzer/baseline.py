"""A baseline: today's findings, recorded by stable fingerprint, so that CI fails only on new ones.

    modnorm check --baseline modnorm-baseline.json                     # first run records; later runs: new only
    modnorm check --baseline modnorm-baseline.json --update-baseline   # accept today's findings

As mypy's, detekt's and semgrep's baselines do, this lets a team adopt modnorm on a model that already has
findings and gate CI on "no new ones" while fixing the old ones at their own pace. A finding is matched by the
model it belongs to and its stable identity (rule, module path, the op's role in its module; see
`formats.stable_identity`), never by line or fx node name, so moving code or editing another module does not
revive it. Identical identities are counted: a baseline with two findings of one identity absorbs two.

The file is JSON, sorted, with each finding's message and location for the reviewer of a diff (only the model
and the fingerprint are matched).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .errors import ModnormError
from .formats import fingerprint, stable_identity
from .report import relative_path

__all__ = ["SCHEMA", "record", "load", "apply", "model_key"]

SCHEMA = "modnorm-baseline/1"
Key = tuple[str, str]  # (model, fingerprint)


def model_key(target: str, root: str | None) -> str:
    """The model a finding belongs to, as the baseline names it: its file relative to the root, and the entry."""
    from .loading import parse_target

    path, name = parse_target(target)
    return relative_path(str(path), root) + (f":{name}" if name else "")


def _entries(results: Sequence[Any], root: str | None) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        model = model_key(result.target, root)
        for f in result.findings:
            code, module, role = stable_identity(f, result.analysis)
            rows.append({"model": model, "fingerprint": fingerprint(f, result.analysis), "code": code,
                         "module": module, "role": role, "file": relative_path(f.file, root) or None,
                         "line": f.line, "message": f.message})
    return sorted(rows, key=lambda r: (r["model"], r["code"], r["module"], r["role"], r["fingerprint"]))


def record(path: Path, results: Sequence[Any], root: str | None) -> int:
    """Write the findings of `results` as the baseline; returns how many it records."""
    rows = _entries(results, root)
    document = {"schema": SCHEMA, "comment": "modnorm findings accepted as they are; `modnorm check --baseline "
                f"{path.name} --update-baseline` rewrites this file", "findings": rows}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(rows)


def load(path: Path) -> Counter[Key]:
    """The (model, fingerprint) multiset a baseline file records; a file that is not one is an error (exit 2)."""
    remedy = f"delete it and run `modnorm check --baseline {path} --update-baseline` to record it anew"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModnormError(f"the baseline `{path}` is not valid JSON: {exc.msg}", remedy, path, exc.lineno) from exc
    except OSError as exc:
        raise ModnormError(f"cannot read the baseline `{path}`: {exc.strerror}", remedy, path) from exc
    if not isinstance(document, dict) or document.get("schema") != SCHEMA or \
            not isinstance(document.get("findings"), list):
        raise ModnormError(f"`{path}` is not a modnorm baseline (expected \"schema\": \"{SCHEMA}\" and a list of "
                           "findings)", remedy, path)
    try:
        return Counter((row["model"], row["fingerprint"]) for row in document["findings"])
    except (KeyError, TypeError) as exc:
        raise ModnormError(f"a finding in the baseline `{path}` lacks its model or fingerprint", remedy,
                           path) from exc


def apply(results: Sequence[Any], baseline: Counter[Key], root: str | None) -> tuple[list[Any], int]:
    """The results with baselined findings left out (each result counts them in `baselined`), and how many
    baselined findings are no longer reported (fixed: `--update-baseline` drops them)."""
    remaining = Counter(baseline)
    checked = {model_key(result.target, root) for result in results}
    kept = []
    for result in results:
        model = model_key(result.target, root)
        new = []
        for f in result.findings:
            key = (model, fingerprint(f, result.analysis))
            if remaining[key] > 0:
                remaining[key] -= 1
            else:
                new.append(f)
        kept.append(replace(result, findings=tuple(new), baselined=len(result.findings) - len(new)))
    return kept, sum(count for (model, _), count in remaining.items() if model in checked)
