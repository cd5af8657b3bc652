"""Idioms people write from memory (issue 19): each is read as what it computes, not as an unknown op or a
constant of unknown value. The models are in tests/data/idioms/."""

import json
from pathlib import Path

from typer.testing import CliRunner

from modnorm.cli import app

IDIOMS = Path(__file__).parent / "data" / "idioms"
runner = CliRunner()


def check(name: str, *args: str) -> dict:
    result = runner.invoke(app, ["check", str(IDIOMS / name), "-f", "json", "--exit-zero", "--isolated", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"]}


def test_meta_llama_casts_and_repeat_interleave_keep_the_attention_pattern():
    """softmax(scores.float()).type_as(q) is still attention divided by sqrt(d): MN301 fires as it does without the
    casts; repeat_interleave (GQA) is a known op, so nothing is unknown and the network figure is finite."""
    report = check("meta_llama.py")
    assert "MN301" in codes(report)
    assert "MN901" not in codes(report), [f["message"] for f in report["findings"] if f["code"] == "MN901"]
    mn301 = next(f for f in report["findings"] if f["code"] == "MN301")
    assert "head dim 8" in mn301["message"] and "0.354" in mn301["message"]  # 1/sqrt(8) = 0.3536
    assert report["network"]["sensitivity"] < float("inf")
