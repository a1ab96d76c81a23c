"""MkDocs hook: include a section of the README, which stays the source of truth.

A page line ``<!-- readme: NAME -->`` becomes the README's lines between
``<!-- --8<-- [start:NAME] -->`` and ``<!-- --8<-- [end:NAME] -->``. A missing
section fails the build.

The README is written for GitHub, whose Markdown nests a list item's paragraphs
and code blocks under 3 spaces (``1. `` plus the text's column); Python-Markdown
needs 4. Inside an ordered list (and outside a code fence that starts at column
0), continuation lines indented by exactly 3 spaces get a fourth.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

README = Path(__file__).resolve().parents[2] / "README.md"
DIRECTIVE = re.compile(r"^<!-- readme: ([\w-]+) -->$", re.MULTILINE)
LIST_ITEM = re.compile(r"^\d+\. ")


def section(name: str) -> str:
    lines = README.read_text(encoding="utf-8").splitlines()
    try:
        first = lines.index(f"<!-- --8<-- [start:{name}] -->") + 1
        last = lines.index(f"<!-- --8<-- [end:{name}] -->", first)
    except ValueError:
        raise PluginError(f"README.md has no section {name!r} "
                          f"(<!-- --8<-- [start:{name}] --> ... [end:{name}])") from None
    return "\n".join(reindent_lists(lines[first:last]))


def reindent_lists(lines: list[str]) -> list[str]:
    out, in_list, in_fence = [], False, False
    for line in lines:
        if not in_list and line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence:
            if LIST_ITEM.match(line):
                in_list = True
            elif line and not line.startswith(" "):
                in_list = False
                in_fence = line.startswith("```")
            elif in_list and re.match(r"^ {3}\S", line):
                line = " " + line
        out.append(line)
    return out


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return DIRECTIVE.sub(lambda m: section(m.group(1)), markdown)
