import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = sorted(p for p in (ROOT / "fixtures").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


pytest_plugins = ["pytester"]


def pytest_terminal_summary(terminalreporter) -> None:
    """The adversarial verifier's table: the tightest measured/bound ratio per registry entry (tests/adversary.py)."""
    adversary = sys.modules.get("tests.adversary")
    if adversary is not None and adversary.WORST:
        terminalreporter.write_sep("-", "adversarial verifier: worst measured / certified bound per registry entry")
        terminalreporter.write_line(adversary.table())
