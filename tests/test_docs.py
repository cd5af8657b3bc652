"""The documentation users own: docs/ carries the theory, the guides and one page per rule, generated from the rule
docstrings; everything the product prints links there, never to a file outside the repository."""

import importlib.util
import re
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.docsite import DOCS_URL, absolute_links, rule_page, rule_url
from modnorm.rules import all_rules
from tests.conftest import ROOT

DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """MkDocs' default heading id (toc's slugify), for headings without an explicit {#id}."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(page) -> set[str]:
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE):
        explicit = re.search(r"\{#([\w-]+)\}\s*$", heading)
        found.add(explicit.group(1) if explicit else slug(heading))
    return found


def assert_link_resolves(target: str, source) -> None:
    path, _, anchor = target.partition("#")
    page = (source.parent / path).resolve() if path else source
    assert page.exists(), f"{source.relative_to(ROOT)} links {target}: no such file"
    if anchor:
        assert anchor in anchors(page), f"{source.relative_to(ROOT)} links {target}: no anchor #{anchor}"


def test_rule_pages_are_up_to_date_with_the_docstrings():
    stale = generator().stale()
    assert not stale, f"stale rule pages {[p.name for p in stale]}: run `python docs/generate.py`"


def test_every_rule_has_a_page_in_the_site_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    for code in all_rules():
        assert (DOCS / rule_page(code)).exists(), code
        assert rule_page(code) in config, f"mkdocs.yml's nav lacks {rule_page(code)}"


def test_site_url_is_the_base_url_the_cli_and_sarif_link_to():
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^site_url: (\S+)$", config, re.MULTILINE).group(1) == DOCS_URL


@pytest.mark.parametrize("code", list(all_rules()))
def test_rule_references_cite_docs_pages_with_existing_anchors(code):
    doc = all_rules()[code].__doc__
    references = doc.split("## References")[1]
    links = LINK.findall(references)
    assert links, f"{code}'s References cite no docs page"
    for target in links:
        if not target.startswith("http"):
            assert_link_resolves(target, DOCS / rule_page(code))


def test_docs_pages_and_readme_links_resolve():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert_link_resolves(target, page)


def test_nothing_shipped_cites_a_file_outside_the_repository():
    shipped = [ROOT / "README.md", *(ROOT / "analyzer").glob("*.py"), *(ROOT / "rules").glob("*.py"),
               *DOCS.rglob("*.md"), ROOT / "mkdocs.yml"]
    for path in shipped:
        text = path.read_text()
        for needle in ("shared/", "theory.md"):
            assert needle not in text, f"{path.relative_to(ROOT)} cites {needle}"


def test_modnorm_rule_prints_the_doc_with_absolute_links_and_the_page_url():
    result = CliRunner().invoke(app, ["rule", "mn201"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# MN201 unscaled-residual (warning)")
    assert f"Online: {DOCS_URL}rules/mn201/" in result.output
    assert "](../" not in result.output  # every relative link was made absolute
    assert f"]({DOCS_URL}theory/modular-norm/#residual)" in result.output


def test_modnorm_rule_json_and_unknown_code():
    import json

    result = CliRunner().invoke(app, ["rule", "MN301", "-f", "json"])
    assert result.exit_code == 0 and json.loads(result.output)["url"] == rule_url("MN301")
    unknown = CliRunner().invoke(app, ["rule", "MN999"])
    assert unknown.exit_code == 2 and "MN999" in unknown.output and "modnorm rules" in unknown.output


def test_modnorm_rules_lists_every_rule_in_each_format():
    import json

    table = CliRunner().invoke(app, ["rules"])
    assert table.exit_code == 0 and all(code in table.output for code in all_rules())
    listed = json.loads(CliRunner().invoke(app, ["rules", "-f", "json"]).output)
    assert [r["code"] for r in listed] == list(all_rules())
    assert listed[0]["name"] == all_rules()[listed[0]["code"]].name
    markdown = CliRunner().invoke(app, ["rules", "-f", "markdown"]).output
    assert markdown.count("\n| MN") == len(all_rules())


def test_absolute_links_resolve_relative_to_the_page():
    assert absolute_links("[a](../theory/dag.md#x) [b](index.md) [c](https://e.org/#y) [d](#z)", "rules/mn201.md") == (
        f"[a]({DOCS_URL}theory/dag/#x) [b]({DOCS_URL}rules/) [c](https://e.org/#y) [d](#z)")


@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason='the docs extra is not installed (pip install -e ".[docs]"); CI builds the site')
def test_site_builds_offline_with_strict_link_checking(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "rules" / "mn201" / "index.html").exists()


def test_sarif_rules_link_their_page_and_carry_absolute_links():
    import json

    result = CliRunner().invoke(app, ["check", str(ROOT / "fixtures/nanogpt.py"), "-f", "sarif", "--exit-zero"])
    rules = json.loads(result.stdout)["runs"][0]["tool"]["driver"]["rules"]
    assert rules
    for rule in rules:
        assert rule["helpUri"] == rule_url(rule["id"])
        assert (DOCS / rule_page(rule["id"])).exists()
        assert "](../" not in rule["help"]["markdown"]
