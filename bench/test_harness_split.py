"""The kernel/user split of the server's CPU (``sys_us_per_delivery``): recorded
per phase from the server's own getrusage, never more than the total, and the
kernel's part of a fan-out that is nothing but ``send()`` calls (the C floor)
most of it, so the two halves are not swapped.  ``report.py`` renders the split
as the README's second fan-out table, and leaves it out for runs that predate
it."""

from __future__ import annotations

from pathlib import Path

import pytest
import report
from harness.arena import Arena
from harness.scenarios import SPECS, FloorBuild, summarize


@pytest.mark.parametrize("contestant", ["floor", "reinhardt-cy"])
def test_phase_records_the_kernel_part(contestant: str, floor_build: FloorBuild,
                                       tmp_path: Path) -> None:
    spec = SPECS[contestant]
    if contestant == "floor" and floor_build.path is None:
        pytest.skip(floor_build.reason)
    if spec.absent_reason():
        pytest.skip(str(spec.absent_reason()))
    with Arena(spec, 200, floor_binary=floor_build.path, log_dir=tmp_path) as arena:
        results = [arena.phase(2000, 64, 8, timeout=60) for _ in range(2)]
    for r in results:
        assert r.complete, r.reason
        assert 0.0 <= r.sys_s <= r.cpu_s
        assert r.sys_us_per_delivery <= r.cpu_us_per_delivery
    summary = summarize(results)
    assert 0.0 <= summary["sys_us_per_delivery"] <= summary["cpu_us_per_delivery"]
    if contestant == "floor":
        # 1000s of send() calls and a loop around them: the kernel's time.
        assert summary["sys_us_per_delivery"] > 0.5 * summary["cpu_us_per_delivery"]


def _row(contestant: str, batch: int, cpu: float, sys_: float | None) -> dict[str, object]:
    row: dict[str, object] = {"scenario": "fanout", "contestant": contestant, "n": 1000,
                              "size": 64, "batch": batch, "complete": True,
                              "cpu_us_per_delivery": cpu}
    if sys_ is not None:
        row["sys_us_per_delivery"] = sys_
    return row


def test_report_renders_the_split_and_skips_old_runs() -> None:
    cols = [(1000, 1), (1000, 8)]
    cell = {(1000, 1): {"floor": _row("floor", 1, 9.0, 8.9),
                        "reinhardt-cy": _row("reinhardt-cy", 1, 10.0, 8.5)},
            (1000, 8): {"floor": _row("floor", 8, 1.25, 1.24),
                        "reinhardt-cy": _row("reinhardt-cy", 8, 1.8, 1.55)}}
    table = report.kernel_split_table(cell, cols, {"floor", "reinhardt-cy"})
    lines = table.splitlines()
    assert any(line.startswith("| C floor") and "8.90 + 0.10" in line and "1.24 + 0.01" in line
               for line in lines), table
    assert any("reinhardt-ws, C fan-out" in line and "8.50 + 1.50" in line
               and "1.55 + 0.25" in line for line in lines), table
    old = {k: {name: _row(name, k[1], r["cpu_us_per_delivery"], None)  # type: ignore[arg-type]
               for name, r in v.items()} for k, v in cell.items()}
    assert report.kernel_split_table(old, cols, {"floor", "reinhardt-cy"}) == ""
