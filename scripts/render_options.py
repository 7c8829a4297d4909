"""Writes docs/configuration.md's table of server options from their declarations (server/options.py).

    python scripts/render_options.py          (make docs)

tests/test_config.py fails when the page's table is not what this would write.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predserve.server.option_kinds import BOOLEAN  # noqa: E402
from predserve.server.options import OPTIONS  # noqa: E402

PAGE = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- server-options -->\n", "\n<!-- /server-options -->"


def markdown_table() -> str:
    """docs/configuration.md's table of the options, between its markers."""
    rows = ["| flag | env | default |", "|---|---|---|"]
    for option in OPTIONS:
        flags = ", ".join(f"`{flag}`" for flag in option.flags)
        if option.kind is not BOOLEAN:
            flags = f"`{option.flag} {(option.metavar or option.kind.metavar)}`".replace("|", "\\|")
        rows.append(f"| {flags} | `{option.env}` | `{option.shown_default}`: {option.help} |")
    return "\n".join(rows)


def table_of(page: str) -> str:
    return page.split(BEGIN, 1)[1].split(END, 1)[0]


def with_table(page: str) -> str:
    before, rest = page.split(BEGIN, 1)
    return before + BEGIN + markdown_table() + END + rest.split(END, 1)[1]


if __name__ == "__main__":
    PAGE.write_text(with_table(PAGE.read_text()))
    print(f"{PAGE.relative_to(ROOT)}: the table of server options written")
