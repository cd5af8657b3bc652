"""Inline `# modnorm: ignore[CODE]` on the line a finding points at; stale suppressions are MN001."""

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.suppression import scan

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures/suppressed_head.py"
runner = CliRunner()


def report(path, *args):
    result = runner.invoke(app, ["check", str(path), "-f", "json", "--exit-zero", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def line_of(path, text):
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if text in line)


def test_the_comment_finds_its_codes_only_in_comments(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('x = "# modnorm: ignore[MN101]"\ny = 1  # modnorm: ignore[mn101, MN3]\nz = 2  # modnorm: ignore\n')
    found = scan(str(source))
    assert [(s.line, s.codes) for s in found] == [(2, ("MN101", "MN3")), (3, ())]


def test_without_the_comment_the_head_is_reported(tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text(FIXTURE.read_text().replace("  # modnorm: ignore[MN101]", "")
                     .replace("  # modnorm: ignore[MN301]", ""))
    findings = report(plain)["findings"]
    assert [(f["code"], f["module"], f["line"]) for f in findings] == [("MN101", "head", line_of(plain, "self.head(h)"))]


def test_the_comment_suppresses_and_the_stale_one_is_reported():
    findings = report(FIXTURE)["findings"]
    assert [(f["code"], f["line"]) for f in findings] == [("MN001", line_of(FIXTURE, "h = torch.tanh"))]
    assert "MN301" in findings[0]["message"]


def test_unknown_code_in_a_comment_is_reported(tmp_path):
    copy = tmp_path / "m.py"
    copy.write_text(FIXTURE.read_text().replace("ignore[MN301]", "ignore[MN999]"))
    (finding,) = report(copy)["findings"]
    assert finding["code"] == "MN001" and "MN999" in finding["message"]


def test_bare_ignore_covers_every_code_on_the_line(tmp_path):
    copy = tmp_path / "m.py"
    copy.write_text(FIXTURE.read_text().replace("  # modnorm: ignore[MN301]", "")
                    .replace("ignore[MN101]", "ignore"))
    assert report(copy)["findings"] == []


def test_codes_not_selected_are_not_stale():
    assert report(FIXTURE, "--select", "MN001,MN2")["findings"] == []


def test_ignoring_mn001_keeps_stale_comments_quiet(tmp_path):
    assert report(FIXTURE, "--ignore", "MN001")["findings"] == []


def test_full_report_counts_suppressed_findings():
    result = runner.invoke(app, ["check", str(FIXTURE), "--exit-zero"])
    assert "1 finding suppressed" in result.stdout
