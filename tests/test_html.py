"""`-f html`: one self-contained page, checked in a real headless Chromium (Debian's `chromium`, installed by
.ci/run): it renders with no console message, its own self-check (graph nodes, table rows, sorting, filtering)
passes, and a screenshot shows the graph."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def report(tmp_path, *args):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["check", *map(str, args), "-f", "html", "-o", str(out), "--exit-zero"])
    assert result.exit_code == 0, result.output
    return out


def chromium(tmp_path, page, *extra):
    """Run Chromium on `page` with a fresh profile; (stdout, stderr)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          *extra, page.as_uri()], capture_output=True, text=True, timeout=120)
    return run.stdout, run.stderr


def console_messages(stderr):
    """What the page wrote to the console (console.log/error, uncaught exceptions), as Chromium logs it."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_the_page_is_self_contained(tmp_path):
    page = report(tmp_path, ROOT / "fixtures/nanogpt.py").read_text()
    assert page.startswith("<!doctype html>") and "</html>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no script, style or font fetched
    assert "@import" not in page and "cdn" not in page.lower()
    report_json = json.loads(CliRunner().invoke(app, ["check", str(ROOT / "fixtures/nanogpt.py"), "-f",
                                                      "json"]).stdout)
    # what the browser will check against: every op is drawn, every layer is a row, every finding a card
    assert f'data-expected-nodes="{report_json["model"]["nodes"]}"' in page
    assert f'data-expected-rows="{len(report_json["layers"])}"' in page
    assert page.count('<div class="finding ') == len(report_json["findings"])
    assert page.count('class="stream"') == len(report_json["residual_streams"])


@needs_chromium
@pytest.mark.parametrize("args", [["fixtures/nanogpt.py"],
                                  ["fixtures/sweep_nanogpt.py", "--sweep", "n_embd=32,64"],
                                  ["fixtures/uncertified_ops.py"]],
                         ids=["model", "sweep", "uncertified"])
def test_the_page_renders_in_chromium_with_no_console_message(tmp_path, args):
    page = report(tmp_path, *(ROOT / a if a.startswith("fixtures") else a for a in args))
    dom, stderr = chromium(tmp_path, page, "--dump-dom")
    assert console_messages(stderr) == []
    status = re.search(r'id="modnorm-selfcheck" data-status="(\w+)">([^<]*)<', dom)
    assert status and status.group(1) == "ok", status.group(2) if status else dom[:2000]
    if "--sweep" in args:
        ticks = re.findall(r'<text class="tick"[^>]*text-anchor="middle">([^<]+)</text>', dom)
        assert {"32", "64"} <= set(ticks)  # x ticks at the swept values, not 3.2x10^1
        assert re.search(r"<b>p = [+-]\d\.\d\d</b>", dom)  # the exponents


@needs_chromium
def test_a_broken_page_is_noticed(tmp_path):
    """The check above can fail: a script error reaches the console and the self-check's status."""
    page = report(tmp_path, ROOT / "fixtures/clean_mlp.py")
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("var status = document", "undefinedFunction(); var status = document"))
    dom, stderr = chromium(tmp_path, broken, "--dump-dom")
    assert any("undefinedFunction" in line for line in console_messages(stderr))
    assert 'data-status="ok"' not in dom


@needs_chromium
def test_a_screenshot_shows_the_graph(tmp_path):
    """The picture in docs/ is made this way; here it is checked to be a real rendering, not a blank page."""
    page = report(tmp_path, ROOT / "fixtures/nanogpt.py")
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page, "--window-size=1400,1100", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page compresses to a few kB
