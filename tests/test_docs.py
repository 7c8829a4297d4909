"""The manual's shape: a README of a few screens that indexes docs/, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT

README_MAX_LINES = 200
PAGES = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CHANGELOG.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"(?m)^#{1,6} (.+)$", page.read_text())
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_fits_in_a_few_screens_and_indexes_every_page() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in sorted((PROJECT_ROOT / "docs").glob("*.md")):
        if page.name != "report-template.md":
            assert f"(docs/{page.name})" in readme, f"the README's index lacks docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_link_leads_to_a_file_and_a_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert broken == []
