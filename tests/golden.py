"""The JSON report of every fixture, frozen: `python tests/golden.py --update` writes tests/data/golden/<fixture>.json.

tests/test_golden.py compares the current report with these files (floats to rel 1e-9), so a refactoring that changes
what modnorm prints fails loudly. A deliberate change (a fixed defect) updates the goldens in the same commit, whose
message names the fields that changed and why. Volatile fields (timings, absolute paths) are dropped.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
FIXTURES = sorted(p for p in (ROOT / "fixtures").glob("*.py") if not p.name.startswith("_"))
VOLATILE_KEYS = {"seconds", "elapsed", "duration", "time", "timings"}


def declared_args(path: Path) -> list[str]:
    """Command-line options a fixture is checked with (`Args: --hidden-mass 200` in its docstring)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Args:\s*(.+)$", doc, re.MULTILINE)
    return match.group(1).split() if match else []


def _stable(value: Any) -> Any:
    """Drop volatile keys and make absolute paths relative to the repository, recursively."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, str) and str(ROOT) in value:
        return value.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return value


def report_of(fixture: Path) -> dict[str, Any]:
    """The `modnorm check --output-format json` report of one fixture, with volatile fields dropped."""
    import torch
    from typer.testing import CliRunner

    from modnorm.cli import app

    torch.manual_seed(0)
    args = ["check", str(fixture.relative_to(ROOT)), "--output-format", "json", "--exit-zero",
            *declared_args(fixture)]
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise RuntimeError(f"{fixture.name}: exit {result.exit_code}\n{result.output}")
    return _stable(json.loads(result.stdout))


def golden_path(fixture: Path) -> Path:
    return GOLDEN / f"{fixture.stem}.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the golden files from the current code")
    parser.add_argument("fixtures", nargs="*", help="fixture stems (default: all)")
    ns = parser.parse_args(argv)
    chosen = [f for f in FIXTURES if not ns.fixtures or f.stem in ns.fixtures]
    changed = 0
    for fixture in chosen:
        current = report_of(fixture)
        path = golden_path(fixture)
        old = json.loads(path.read_text()) if path.exists() else None
        if old != current:
            changed += 1
            print(f"{fixture.stem}: {'differs' if old is not None else 'new'}")
            if ns.update:
                path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    print(f"{len(chosen)} fixtures, {changed} {'updated' if ns.update else 'differ'}")
    return 0 if ns.update or changed == 0 else 1


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
