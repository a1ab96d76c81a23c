"""Griffe extension: render the Sphinx roles of our docstrings as Markdown.

The docstrings are written for reading in the source and in ``help()``, with
Sphinx-style cross references (``:class:`~reinhardt_ws.TokenSigner```). In the API
reference a role naming a public name (one of ``reinhardt_ws.__all__``) becomes a
link to its entry; any other role becomes a code span, so a name the reference
does not document never turns into a dangling link under ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

INIT = Path(__file__).resolve().parents[2] / "src" / "reinhardt_ws" / "__init__.py"
ROLE = re.compile(r":(?:class|func|meth|attr|data|exc|mod|obj):`(~?)([^`]+)`")


def _public_names() -> frozenset[str]:
    for node in ast.parse(INIT.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)):
            return frozenset(ast.literal_eval(node.value))
    raise RuntimeError(f"no __all__ in {INIT}")


class SphinxRoles(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        self.public = _public_names()

    def _replace(self, match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2)
        text = target.rsplit(".", 1)[-1] if short else target
        parts = target.removeprefix("reinhardt_ws.").split(".")
        if parts[0] in self.public and (target.startswith("reinhardt_ws.") or len(parts) == 1):
            return f"[`{text}`][reinhardt_ws.{'.'.join(parts)}]"
        return f"`{text}`"

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(self._replace, obj.docstring.value)
