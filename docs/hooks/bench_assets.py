"""MkDocs hook: serve the benchmark charts from where ``bench/report.py`` writes them.

``docs/benchmarks*.md`` include the reports in ``bench/results/`` (pymdownx.snippets),
whose image links are bare file names (``fanout_ratio.png``). This hook adds every
PNG of ``bench/results/`` and its run directories to the site at the docs root, under
the same name, so those links resolve and ``mkdocs build --strict`` checks them; the
charts are never copied into ``docs/``. Two charts with one name would be ambiguous,
so that fails the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def on_files(files: Files, config: Any) -> Files:
    seen: dict[str, Path] = {}
    for png in sorted(RESULTS.rglob("*.png")):
        if png.name in seen:
            raise PluginError(f"two benchmark charts named {png.name}: {seen[png.name]} and {png}")
        seen[png.name] = png
        files.append(File.generated(config, png.name, abs_src_path=str(png)))
    return files
