"""Where modnorm's documentation lives: the site's base URL and each rule's page on it.

The site is built with MkDocs from the repository's `docs/` folder (`mkdocs build --strict`); `DOCS_URL` is its
`site_url` in mkdocs.yml (a test keeps the two equal). Rule pages are generated from the rule docstrings by
`docs/generate.py`, one per rule at `docs/rules/<code>.md`, served at `DOCS_URL + "rules/<code>/"`.
"""

from __future__ import annotations

import posixpath
import re

__all__ = ["DOCS_URL", "rule_page", "rule_url", "page_url", "absolute_links"]

DOCS_URL = "https://modnorm.github.io/modnorm/"

_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)")


def rule_page(code: str) -> str:
    """The rule's page inside docs/, e.g. `rules/mn201.md`."""
    return f"rules/{code.lower()}.md"


def page_url(page: str) -> str:
    """The published URL of a page of docs/ (`theory/dag.md#x` -> `DOCS_URL/theory/dag/#x`), directory URLs as
    MkDocs writes them."""
    path, _, anchor = page.partition("#")
    if path.endswith("index.md"):
        path = path[: -len("index.md")]
    elif path.endswith(".md"):
        path = path[: -len(".md")] + "/"
    return DOCS_URL + path + (f"#{anchor}" if anchor else "")


def rule_url(code: str) -> str:
    """The published URL of a rule's page: what `modnorm rule` prints and SARIF's `helpUri` carries."""
    return page_url(rule_page(code))


def absolute_links(markdown: str, page: str) -> str:
    """Rewrite the relative links of a docs page (as written in a rule docstring, relative to `page`) into
    published URLs, for text read outside the site: the terminal and SARIF viewers."""
    base = posixpath.dirname(page)

    def absolute(match: re.Match[str]) -> str:
        return f"]({page_url(posixpath.normpath(posixpath.join(base, match.group(1))))})"

    return _LINK.sub(absolute, markdown)
