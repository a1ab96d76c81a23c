"""Turn a ``pytest bench/ --benchmark-json=RUN.json`` file into a Markdown report
and PNG charts, and (``--readme``) the README's performance block.

    python bench/report.py bench/results/run.json [more.json ...] [--out bench/results]
    python bench/report.py bench/results/run.json --readme README.md

Writes ``REPORT.md`` and ``fanout_ratio.png``, ``fanout_cpu.png``, ``idle_memory.png``,
``slow_consumer.png``, ``micro.png`` (those it has data for) into ``--out``.  Every
ratio is computed here from the floor measured in the same run; a scenario whose
floor is missing shows "n/a" rather than a ratio against another run.  Contestants
that could not run are named with their reason (the ``contestants`` list that
bench/conftest.py writes into the JSON), never dropped.

**The README block** (``--readme README.md``, one JSON file only: the README shows
one run) replaces what lies between ``<!-- perf:begin -->`` and ``<!-- perf:end -->``
in README.md's ``## Performance`` section.  It is assembled from *README parts*:

* A part is a function ``part(run: ReadmeRun) -> ReadmePart | None``, registered with
  the decorator ``@readme_part(order)``; it returns None when the run has no data
  for it.  ``ReadmeRun`` carries the loaded JSON (``run.data``, ``run.by_scenario``),
  the report's target rows (``run.targets``) and ``run.contestants`` (id -> the
  conftest record, with ``absent`` set to the reason for a contestant that could not
  run).
* ``ReadmePart.tables`` are complete Markdown tables, each with a caption line
  before it; ``ReadmePart.bullets`` are one-line findings (without the leading "- ").
* The block renders every part's tables in ``order``, then every part's bullets in
  ``order``, then the absent contestants, the machine (pytest-benchmark's
  machine_info) and the exact command (recorded by conftest).
* Orders in use: 10 fan-out, 20 echo (reserved), 30 compression (reserved), 40 flush
  interval (reserved), 50 many small rooms, 60 idle memory, 70 slow consumer,
  80 build_frame, 90 targets.  Add a part next to your report section; do not edit
  other parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = ["floor", "reinhardt-cy", "reinhardt-py", "picows", "socketify", "node-ws",
         "websockets", "aiohttp"]
PEERS = ("picows", "websockets", "aiohttp", "node-ws", "socketify")
SLOW_CONSTANT = 4 << 20  # the "plus a constant" of the slow-consumer target, bytes


def fmt(x: Any, spec: str = ".2f", unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:{spec}}{unit}"


def human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def size_label(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size // 1024} KiB"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "**FAIL**")


def order_key(name: str) -> tuple[int, str]:
    base = name
    for suffix in ("-close", "-drop", "-keepalive"):
        base = base.removesuffix(suffix)
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def load(paths: list[Path]) -> dict[str, Any]:
    """Read one or more --benchmark-json files (later files add to the first)."""
    data = json.loads(paths[0].read_text())
    for extra in paths[1:]:
        more = json.loads(extra.read_text())
        data["benchmarks"] = data.get("benchmarks", []) + more.get("benchmarks", [])
        data["absent"] = {**data.get("absent", {}), **more.get("absent", {})}
    by_scenario: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info", {}))
        info["_name"] = bench["name"]
        info["_stats"] = bench.get("stats", {})
        info["_group"] = bench.get("group") or bench["name"].split("[")[0]
        scenario = info.get("scenario") or ("micro" if "micro" in bench["fullname"] else "other")
        by_scenario[scenario].append(info)
    data["by_scenario"] = by_scenario
    return data


# -- fan-out ---------------------------------------------------------------------------
def floor_ratios(r: dict[str, Any], floor1: dict[str, Any] | None) -> tuple[float, float, bool]:
    """(CPU ratio, throughput ratio, paired?) of a fan-out row against the one-syscall
    floor: the floor rounds run right beside it when there are some (paired), else the
    floor's own test for the same N and size in this run."""
    paired = r.get("floor_paired")
    if paired and paired.get("complete"):
        ratio = r.get("cpu_ratio_to_floor_paired")
        if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
            ratio = r["cpu_us_per_delivery"] / paired["cpu_us_per_delivery"]
        tput = r["deliveries_per_cpu_s"] / paired["deliveries_per_cpu_s"]
        return ratio, tput, True
    if (floor1 and r.get("contestant") != "floor") or (floor1 and r.get("batch", 1) > 1):
        return (r["cpu_us_per_delivery"] / floor1["cpu_us_per_delivery"],
                r["deliveries_per_cpu_s"] / floor1["deliveries_per_cpu_s"], False)
    if floor1:
        return 1.0, 1.0, True
    return math.nan, math.nan, False


def fanout_section(rows: list[dict[str, Any]], charts: dict[str, Any]) -> tuple[str, list[str]]:
    if not rows:
        return "", []
    cell: dict[tuple[int, int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cell[(r["n"], r["size"], r["batch"])][r["contestant"]] = r
    floor1 = {(n, s): c.get("floor") for (n, s, b), c in cell.items() if b == 1}
    lines = ["## Fan-out", "",
             "Server CPU per delivery is the server process's user + system CPU time "
             "(getrusage inside it) from the broadcast command until the last client has every "
             "byte, divided by N x messages.  *x floor* divides it by the one-syscall floor "
             "(floor, B = 1) of the same N and size, measured in this run: below 1 beats it.  "
             "*deliv/CPU-s* is deliveries per second of server CPU (the capacity of one core); "
             "*deliv/s* is wall clock, bounded by the clients sharing the machine.  "
             "For the floor, B is the number of frames per send() (B = 8: the coalesced floor).  "
             "Ratios are *paired*: the floor ran one round right before each of the "
             "contestant's rounds, and the ratio is the median of the per-round ratios; "
             "(u) marks an unpaired ratio, against the floor's own test in this run.", ""]
    targets: list[str] = []
    for key in sorted(cell):
        n, size, batch = key
        f1 = floor1.get((n, size))
        contestants = cell[key]
        table = []
        for name in sorted(contestants, key=order_key):
            r = contestants[name]
            cpu = r.get("cpu_us_per_delivery", math.nan)
            ratio, tput, paired = floor_ratios(r, f1)
            complete = r.get("complete")
            floor_cpu = (r.get("floor_paired") or f1 or {}).get("cpu_us_per_delivery")
            table.append([
                name, fmt(cpu, ".3f"), fmt(r.get("sys_us_per_delivery"), ".3f"),
                fmt(floor_cpu, ".3f"),
                fmt(ratio, ".2f", "x") + ("" if paired else " (u)"),
                fmt(tput, ".2f", "x"),
                fmt(r.get("deliveries_per_cpu_s"), ",.0f"), fmt(r.get("deliveries_per_s"), ",.0f"),
                "yes" if complete else "**NO**",
            ])
            charts.setdefault("ratio", {}).setdefault(name, {})[key] = ratio
            charts.setdefault("cpu", {}).setdefault(name, {})[key] = cpu
            if name == "reinhardt-cy":
                if batch == 1 and n >= 1000:
                    ok = None if math.isnan(ratio) else ratio <= 1.10 and bool(complete)
                    targets.append(f"| B=1, N={n}, {size_label(size)}: CPU/delivery <= 1.10x floor "
                                   f"| {fmt(ratio, '.2f', 'x')} | {verdict(ok)} |")
                if batch == 8:
                    ok = None if math.isnan(tput) else tput >= 5.0 and bool(complete)
                    targets.append(f"| B=8, N={n}, {size_label(size)}: deliveries/CPU-s >= 5x "
                                   f"floor | {fmt(tput, '.2f', 'x')} | {verdict(ok)} |")
        title = f"### N = {n}, payload {size_label(size)}, {batch} broadcast(s) per iteration"
        lines += [title, "",
                  md_table(["contestant", "CPU us/delivery", "of which kernel",
                            "floor us (paired)", "x floor (CPU)",
                            "throughput x floor",
                            "deliv/CPU-s", "deliv/s (wall)", "complete"], table), ""]
    # The summary matrix comes first.
    keys = sorted(cell)
    names = sorted({c for k in keys for c in cell[k]}, key=order_key)
    matrix = []
    for name in names:
        row = [name]
        for k in keys:
            f1 = floor1.get((k[0], k[1]))
            r = cell[k].get(name)
            if r is None:
                row.append("n/a")
            else:
                ratio, _tput, paired = floor_ratios(r, f1)
                row.append(fmt(ratio, ".2f") + ("" if paired else " (u)"))
        matrix.append(row)
    header = ["CPU/delivery vs floor"] + [f"N={n} {size_label(s)} B={b}" for n, s, b in keys]
    summary = ["### Summary: server CPU per delivery as a multiple of the one-syscall floor "
               "(lower is better)", "", md_table(header, matrix), ""]
    return "\n".join(lines[:2] + summary + lines[2:]), targets


def fanout_floor_targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 14's fan-out targets beyond the ones above: at B = 8 reinhardt-cy's
    CPU per delivery at most 1.15x the coalesced floor (8 frames per send(),
    paired), and in every cell at least 10 % less than socketify's (n/a while
    socketify is absent from the run)."""
    cell: dict[tuple[int, int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cell[(r["n"], r["size"], r["batch"])][r["contestant"]] = r
    targets: list[str] = []
    for (n, size, batch), contestants in sorted(cell.items()):
        ours = contestants.get("reinhardt-cy")
        if ours is None or n < 1000:
            continue
        cpu = ours.get("cpu_us_per_delivery", math.nan)
        where = f"B={batch}, N={n}, {size_label(size)}"
        if batch > 1:
            ratio = ours.get("cpu_ratio_to_coalesced_floor", math.nan)
            ok = None if math.isnan(ratio) else ratio <= 1.15 and bool(ours.get("complete"))
            targets.append(f"| {where}: CPU/delivery <= 1.15x coalesced floor "
                           f"| {fmt(ratio, '.2f', 'x')} | {verdict(ok)} |")
        peer = contestants.get("socketify")
        peer_cpu = peer.get("cpu_us_per_delivery", math.nan) if peer else math.nan
        rel = cpu / peer_cpu if peer_cpu and not math.isnan(peer_cpu) else math.nan
        ok = None if math.isnan(rel) else rel <= 0.90 and bool(ours.get("complete"))
        targets.append(f"| {where}: CPU/delivery <= 0.90x socketify's "
                       f"| {fmt(rel, '.2f', 'x') if peer else 'socketify absent'} "
                       f"| {verdict(ok)} |")
    return targets


# -- the latency budget (bench/test_flush_interval.py) ---------------------------------
def flush_interval_section(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """RoomManager(flush_interval=...): deliveries per CPU-second against the
    one-syscall floor (target >= 4x) and the added delay at p99 (target: within
    the interval), for a stream of single broadcasts."""
    if not rows:
        return "", []
    lines = ["## Latency budget: `RoomManager(flush_interval=...)`", "",
             "One 64 B broadcast per loop iteration to N clients.  Per round: the floor "
             "(one send() per delivery), reinhardt without an interval, reinhardt with it.  "
             "*x floor* is deliveries per server CPU-second against the floor's (paired, "
             "median of rounds).  Latency is client arrival (50 sockets of each client "
             "process, spread over them) minus the server's time of the broadcast, same "
             "monotonic clock; the "
             "*added delay* is the p99 with the interval minus the p99 without it (median "
             "over rounds; negative: the interval lowered the tail, since the writes it "
             "saves were what the messages queued behind).  These closed-loop latencies "
             "are mostly the clients' backlog; the latency target is checked on the "
             "open-loop measurement below.", ""]
    table, targets = [], []
    for r in sorted(rows, key=lambda r: (r["n"], order_key(r["contestant"]), r["interval"])):
        interval = r["interval"]
        tput = r.get("throughput_ratio_to_floor_paired", math.nan)
        added = r.get("added_delay_p99_s", math.nan)
        complete = bool(r.get("complete"))
        table.append([
            r["contestant"], str(r["n"]), fmt(interval * 1e3, "g", " ms"),
            fmt(r.get("cpu_us_per_delivery"), ".3f"),
            fmt((r.get("floor_paired") or {}).get("cpu_us_per_delivery"), ".3f"),
            fmt(tput, ".2f", "x"),
            fmt(r.get("no_interval_cpu_ratio_to_floor_paired"), ".2f", "x"),
            fmt(r.get("latency_p50_s", math.nan) * 1e3, ".2f"),
            fmt(r.get("latency_p99_s", math.nan) * 1e3, ".2f"),
            fmt(r.get("no_interval_latency_p99_s", math.nan) * 1e3, ".2f"),
            fmt(added * 1e3, ".2f"), "yes" if complete else "**NO**",
        ])
        if r["contestant"] == "reinhardt-cy":
            where = f"flush_interval={interval * 1e3:g} ms, N={r['n']}"
            ok = None if math.isnan(tput) else tput >= 4.0 and complete
            targets.append(f"| {where}: deliveries/CPU-s >= 4x floor "
                           f"| {fmt(tput, '.2f', 'x')} | {verdict(ok)} |")
            if "paced_rate" in r:
                targets.append(paced_target(r, where))
            else:  # a run from before the paced measurement: the closed-loop figure
                ok = None if math.isnan(added) else added <= interval and complete
                targets.append(f"| {where}: added delay p99 <= the interval (closed loop) "
                               f"| {fmt(added * 1e3, '.2f', ' ms')} | {verdict(ok)} |")
    lines.append(md_table(["contestant", "N", "interval", "CPU us/delivery", "floor us",
                           "deliv/CPU-s x floor", "CPU x floor without", "p50 ms", "p99 ms",
                           "p99 ms without", "added p99 ms", "complete"], table))
    lines.append("")
    lines += paced_table([r for r in rows if "paced_rate" in r])
    return "\n".join(lines), targets


def _ms(value: Any, spec: str = ".2f") -> str:
    return fmt(value * 1e3 if isinstance(value, (int, float)) else math.nan, spec)


def paced_ok(r: dict[str, Any]) -> bool | None:
    """The latency target on the paced measurement: the added p99 within the
    interval, every byte delivered, at least one round that kept the pace."""
    added = r.get("paced_added_delay_p99_s", math.nan)
    if not isinstance(added, (int, float)) or math.isnan(added):
        return None if r.get("paced_complete", True) else False
    return added <= r["interval"] and bool(r.get("paced_complete"))


def paced_target(r: dict[str, Any], where: str) -> str:
    flagged = len(r.get("paced_rounds_flagged") or [])
    note = (f"{_ms(r.get('paced_added_delay_p99_s'), '+.2f')} ms at "
            f"{fmt(r.get('paced_rate'), '.0f')} broadcasts/s (open loop; first member "
            f"{_ms(r.get('paced_first_arrival_shift_s'), '+.2f')} ms; server "
            f"lateness p99 {_ms(r.get('paced_late_p99_s'))} ms"
            + (f"; {flagged} of {r.get('paced_rounds')} rounds flagged" if flagged else "")
            + ")")
    return (f"| {where}: added delay p99 <= the interval, paced | {note} "
            f"| {verdict(paced_ok(r))} |")


def paced_table(rows: list[dict[str, Any]]) -> list[str]:
    """The open-loop latency measurement (the ``paced_*`` keys) of test_flush_interval."""
    if not rows:
        return []
    table = []
    for r in sorted(rows, key=lambda r: (r["n"], order_key(r["contestant"]), r["interval"])):
        flagged = len(r.get("paced_rounds_flagged") or [])
        table.append([
            r["contestant"], str(r["n"]), fmt(r["interval"] * 1e3, "g", " ms"),
            f"{fmt(r.get('paced_rate'), '.1f')} "
            f"({fmt(r.get('closed_loop_broadcasts_per_s'), '.1f')}), "
            f"{r.get('paced_messages', '?')}",
            f"{_ms(r.get('paced_no_interval_latency_p50_s'))} / "
            f"{_ms(r.get('paced_no_interval_latency_p99_s'))}",
            f"{_ms(r.get('paced_latency_p50_s'))} / {_ms(r.get('paced_latency_p99_s'))}",
            _ms(r.get("paced_added_delay_p99_s"), "+.2f"),
            _ms(r.get("paced_added_delay_p50_s"), "+.2f"),
            _ms(r.get("paced_first_arrival_shift_s"), "+.2f"),
            f"{_ms(r.get('paced_no_interval_late_p99_s'))} / "
            f"{_ms(r.get('paced_no_interval_late_max_s'))}",
            f"{_ms(r.get('paced_late_p99_s'))} / {_ms(r.get('paced_late_max_s'))}",
            f"{flagged} of {r.get('paced_rounds', 0)}",
            "yes" if r.get("paced_complete") else "**NO**",
        ])
    r0 = rows[0]
    return [
        "Added delay, open loop: after the closed-loop rounds the server broadcasts at a "
        "fixed rate (`PACE`: message j due at t0 + j/rate on a kernel timer, each alone "
        "in its loop iteration, whatever the clients do), latency counted from the due "
        "time.  The rate is "
        f"{r0.get('paced_rate_source', '?')} (in brackets), then the messages per "
        "phase; per round one phase "
        "without the interval and one with it.  *added* = p99 (p50) with minus "
        "without, median over rounds; *first member* = the same for the median first "
        "arrival, the hold itself.  *lateness* = start of a broadcast minus its due "
        "time (p99 / max over the phases); a round where either phase's p99 lateness "
        "passed half a period is flagged and left out.", "",
        md_table(["contestant", "N", "interval", "rate /s (closed loop), messages",
                  "p50 / p99 ms without", "p50 / p99 ms with", "added p99 ms",
                  "added p50 ms", "first member ms", "lateness ms without",
                  "lateness ms with", "flagged", "complete"], table),
        "",
    ]


# -- memory ----------------------------------------------------------------------------
def idle_section(rows: list[dict[str, Any]], charts: dict[str, Any] | None,
                 browser: bool = False) -> tuple[str, list[str]]:
    """The idle-memory table and its targets; *browser*: of the run whose clients
    send a browser's headers (no chart: *charts* is None)."""
    if not rows:
        return "", []
    table = []
    for r in sorted(rows, key=lambda r: order_key(r["contestant"])):
        table.append([r["contestant"], human_bytes(r.get("rss_per_conn_idle")),
                      human_bytes(r.get("rss_per_conn_warm")), human_bytes(r.get("rss_empty")),
                      human_bytes(r.get("rss_connected")), fmt(r.get("connect_s"), ".1f", " s")])
        if charts is not None:
            charts.setdefault("idle", {})[r["contestant"]] = r.get("rss_per_conn_idle")
    by = {r["contestant"]: r for r in rows}
    peers = [by[p]["rss_per_conn_idle"] for p in PEERS if p in by]
    targets = []
    best = min(peers) if peers else None
    clients = ", browser headers" if browser else ""
    for name in ("reinhardt-cy", "reinhardt-py", "reinhardt-cy-keepalive",
                 "reinhardt-py-keepalive"):
        if name in by:
            mine = by[name]["rss_per_conn_idle"]
            ok = None if best is None else mine <= best
            targets.append(f"| idle memory per connection{clients}, {name}: <= best peer "
                           f"({human_bytes(best)}) | {human_bytes(mine)} | {verdict(ok)} |")
    title = (f"## Memory per idle connection, browser headers (N = {rows[0].get('n', 5000)})"
             if browser else f"## Memory per idle connection (N = {rows[0].get('n', 5000)})")
    what = ("The same, with clients whose upgrade requests carry what Chromium sends "
            "(user agent, origin, languages, a session cookie: a head of about 600 bytes): "
            "what a server keeps of the request shows here." if browser else
            "Server RSS with N idle clients minus RSS listening with none (after gc.collect()), "
            "per connection; *warm*: the same after one small broadcast to all.  Kernel socket "
            "memory is in no process's RSS.  The *-keepalive* rows run ours with its keep-alive "
            "on (serve()'s default), the others without pings.")
    text = "\n".join([
        title, "", what, "",
        md_table(["contestant", "idle / conn", "warm / conn", "RSS empty", "RSS connected",
                  "connect time"], table), ""])
    return text, targets


def slow_section(rows: list[dict[str, Any]], charts: dict[str, Any]) -> tuple[str, list[str]]:
    if not rows:
        return "", []
    r0 = rows[0]
    table, targets = [], []
    for r in sorted(rows, key=lambda r: order_key(r["contestant"])):
        growth = r.get("peak_growth_bytes")
        charts.setdefault("slow", {})[r["contestant"]] = growth
        table.append([
            r["contestant"], "yes" if r.get("healthy_complete") else "**NO**",
            fmt(100 * r.get("healthy_completeness", math.nan), ".1f", " %"),
            human_bytes(growth), "yes" if r.get("send_loop_finished") else "**stuck**",
            str(r.get("dropped", "")), human_bytes(r.get("max_write_buffer")),
            fmt(r.get("cpu_us_per_delivery"), ".2f"), fmt(r.get("wall_s"), ".1f", " s"),
        ])
        if r.get("max_write_buffer"):
            limit = r["max_write_buffer"] + SLOW_CONSTANT
            ok = bool(r.get("healthy_complete")) and growth is not None and growth <= limit
            targets.append(f"| slow consumer, {r['contestant']}: healthy complete and peak growth "
                           f"<= max_write_buffer + {human_bytes(SLOW_CONSTANT)} | "
                           f"{human_bytes(growth)} | {verdict(ok)} |")
    text = "\n".join([
        "## Slow consumer", "",
        f"{r0.get('n')} healthy clients and 1 that never reads; {r0.get('messages')} messages of "
        f"{r0.get('size')} B, one per loop iteration (the stalled client would need "
        f"{human_bytes(r0.get('unbounded_backlog_bytes'))} buffered somewhere; the kernel holds "
        "a few MiB of it).  *Peak growth*: the server's peak RSS (VmHWM, reset before the "
        "phase) minus its RSS before the phase.", "",
        md_table(["contestant", "healthy complete", "healthy bytes", "peak growth",
                  "send loop", "dropped", "max_write_buffer", "CPU us/delivery", "wall"], table),
        ""])
    return text, targets


def micro_section(rows: list[dict[str, Any]], charts: dict[str, Any]) -> str:
    if not rows:
        return ""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["_group"]].append(r)
    out = ["## Micro-benchmarks", "",
           "Mean time per call (pytest-benchmark's own timing, so absolute; compare within a "
           "group).", ""]
    for group in sorted(groups):
        table = []
        rs = sorted(groups[group], key=lambda r: r["_stats"].get("mean", math.inf))
        best = rs[0]["_stats"].get("mean", math.nan)
        for r in rs:
            mean = r["_stats"].get("mean", math.nan) / r.get("ops_per_call", 1)
            table.append([r["_name"], fmt(mean * 1e9, ",.0f", " ns"),
                          fmt(r["_stats"].get("mean", math.nan) / best, ".2f", "x")])
            charts.setdefault("micro", {})[r["_name"]] = mean
        out += [f"### {group}", "",
                md_table(["benchmark", "per operation", "vs fastest"], table), ""]
    return "\n".join(out)


# -- contestants -------------------------------------------------------------------------
def contestant_records(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every contestant of the run (conftest's ``contestants`` list) by id, plus any
    that appear only in results (a JSON written before the list existed)."""
    out = {c["id"]: dict(c) for c in data.get("contestants", [])}
    for rows in data.get("by_scenario", {}).values():
        for r in rows:
            name = r.get("contestant")
            if isinstance(name, str):
                base = name.removesuffix("-close").removesuffix("-drop")
                out.setdefault(base, {"id": base, "selected": True, "absent": None})
    return out


def absent_reason(records: dict[str, dict[str, Any]], name: str) -> str:
    """'absent: why' / 'not selected in this run' / 'not in this run' for a contestant
    without results."""
    rec = records.get(name)
    if rec is None:
        return "not in this run"
    if rec.get("absent"):
        return f"absent: {rec['absent']}"
    if not rec.get("selected", True):
        return "not selected in this run"
    return "no result in this run"


def contestants_section(data: dict[str, Any]) -> str:
    records = contestant_records(data)
    if not records:
        return ""
    ran = {r.get("contestant") for rows in data["by_scenario"].values() for r in rows}
    table = []
    for name in sorted(records, key=order_key):
        rec = records[name]
        if rec.get("absent"):
            status = f"**absent**: {rec['absent']}"
        elif not rec.get("selected", True):
            status = "not selected"
        else:
            status = "ran" if name in ran or any(
                str(x).startswith(name + "-") for x in ran) else "selected, no result"
        info = next((r.get("server_info") for rows in data["by_scenario"].values()
                     for r in rows if r.get("contestant") == name and r.get("server_info")), {})
        version = ", ".join(f"{k} {v}" for k, v in (info or {}).items()
                            if k in ("version", "implementation", "node", "ws", "bufferutil",
                                     "mode"))
        table.append([name, status, version or ""])
    return "\n".join(["## Contestants", "",
                      md_table(["contestant", "status", "server info"], table), ""])


# -- many small rooms ---------------------------------------------------------------------
def small_rooms_verdict(rows: list[dict[str, Any]],
                        records: dict[str, dict[str, Any]]) -> tuple[str, str, bool | None]:
    """(measured, verdict text, ok) of "reinhardt-cy CPU per delivery <= socketify's"."""
    by = {r["contestant"]: r for r in rows}
    ours = by.get("reinhardt-cy")
    theirs = by.get("socketify")
    if ours is None:
        return "n/a", "n/a (reinhardt-cy not measured)", None
    if theirs is None:
        why = absent_reason(records, "socketify").removeprefix("absent: ")
        return (fmt(ours.get("cpu_us_per_delivery"), ".3f", " us"),
                f"socketify absent ({why})", None)
    a, b = ours.get("cpu_us_per_delivery", math.nan), theirs.get("cpu_us_per_delivery", math.nan)
    if math.isnan(a) or math.isnan(b) or not ours.get("complete") or not theirs.get("complete"):
        return "n/a", "n/a (a contestant did not complete)", None
    ok = a <= b
    return f"{a:.3f} us vs {b:.3f} us ({a / b:.2f}x)", verdict(ok), ok


def small_rooms_section(rows: list[dict[str, Any]],
                        data: dict[str, Any]) -> tuple[str, list[str]]:
    if not rows:
        return "", []
    records = contestant_records(data)
    r0 = rows[0]
    by = {r["contestant"]: r for r in rows}
    ours = by.get("reinhardt-cy", {}).get("cpu_us_per_delivery")
    table = []
    for r in sorted(rows, key=lambda r: order_key(r["contestant"])):
        cpu = r.get("cpu_us_per_delivery", math.nan)
        table.append([r["contestant"], fmt(cpu, ".3f"),
                      fmt(cpu / ours if ours else math.nan, ".2f", "x"),
                      fmt(r.get("deliveries_per_cpu_s"), ",.0f"),
                      fmt(r.get("deliveries_per_s"), ",.0f"),
                      "yes" if r.get("complete") else "**NO**"])
    for name in sorted(records, key=order_key):
        if records[name].get("rooms") and name not in by:
            table.append([name, absent_reason(records, name), "", "", "", ""])
    measured, text, _ok = small_rooms_verdict(rows, records)
    targets = [f"| many small rooms: reinhardt-cy CPU/delivery <= socketify's | {measured} "
               f"| {text} |"]
    body = "\n".join([
        "## Many small rooms", "",
        f"N = {r0.get('n')} clients dealt into {r0.get('rooms')} rooms of {r0.get('room_size')} "
        f"(accept order, connection i into room i % {r0.get('rooms')}); message j of "
        f"{r0.get('size')} B goes to room j % {r0.get('rooms')} only, {r0.get('batch')} "
        f"broadcast per loop iteration, {r0.get('messages')} messages per round.  The fixed "
        "cost of a broadcast is paid every few deliveries here.  *x ours*: CPU per delivery "
        "over reinhardt-cy's.", "",
        md_table(["contestant", "CPU us/delivery", "x ours", "deliv/CPU-s", "deliv/s (wall)",
                  "complete"], table), ""])
    return body, targets


# -- the README's performance block ----------------------------------------------------------
TIMES = "\u00d7"  # the multiplication sign of the README's ratios
README_BEGIN = "<!-- perf:begin -->"
README_END = "<!-- perf:end -->"

#: How the README names each contestant (report.py and the tests use the ids).
README_LABELS = {
    "reinhardt-cy": "**reinhardt-ws, C fan-out**",
    "reinhardt-py": "reinhardt-ws, Python twin",
    "picows": "picows, Python loop over `WSTransport.send`",
    "socketify": "socketify (uWebSockets from Python), `app.publish`",
    "node-ws": "Node `ws` 8 + bufferutil, prepared frame (corked for B > 1)",
    "websockets": "websockets, `broadcast()`",
    "aiohttp": "aiohttp, loop over `send_bytes`",
}


@dataclasses.dataclass
class ReadmeRun:
    """What a README part may read: one run's JSON, loaded."""

    data: dict[str, Any]
    by_scenario: dict[str, list[dict[str, Any]]]
    contestants: dict[str, dict[str, Any]]
    targets: list[str]  # rows of the report's Targets table ("| target | measured | verdict |")


@dataclasses.dataclass
class ReadmePart:
    tables: list[str] = dataclasses.field(default_factory=list)  # caption line + table
    bullets: list[str] = dataclasses.field(default_factory=list)  # one line each, no "- "


ReadmePartFn = Callable[[ReadmeRun], "ReadmePart | None"]
README_PARTS: list[tuple[int, ReadmePartFn]] = []


def readme_part(order: int) -> Callable[[ReadmePartFn], ReadmePartFn]:
    """Register a README part (see the module docstring for the convention)."""

    def register(fn: ReadmePartFn) -> ReadmePartFn:
        README_PARTS.append((order, fn))
        return fn

    return register


def label(name: str) -> str:
    return README_LABELS.get(name, name)


@readme_part(10)
def readme_fanout(run: ReadmeRun) -> ReadmePart | None:
    rows = [r for r in run.by_scenario.get("fanout", []) if r.get("size") == 64]
    if not rows:
        return None
    cell: dict[tuple[int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cell[(r["n"], r["batch"])][r["contestant"]] = r
    ns = sorted({n for n, _b in cell if n >= 1000}) or sorted({n for n, _b in cell})
    batches = sorted({b for _n, b in cell})
    cols = [(n, b) for n in ns for b in batches if (n, b) in cell]

    def floor_value(n: int, b: int) -> dict[str, Any] | None:
        return cell.get((n, b), {}).get("floor")

    def us(x: Any) -> str:
        return fmt(x, ".3f" if x is not None and x < 1 else ".2f", " µs")

    def contestant_cell(name: str, n: int, b: int) -> str:
        r = cell[(n, b)].get(name)
        if r is None:
            return "—"
        if not r.get("complete"):
            return "failed"
        cpu = r.get("cpu_us_per_delivery")
        if b == 1:
            ratio, _tput, paired = floor_ratios(r, floor_value(n, 1))
        else:
            ratio = r.get("cpu_ratio_to_coalesced_floor", math.nan)
            paired = bool(r.get("coalesced_floor_paired"))
            if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
                fk = floor_value(n, b)
                ratio = cpu / fk["cpu_us_per_delivery"] if fk and cpu else math.nan
                paired = False
        return f"{us(cpu)} ({fmt(ratio, '.2f', TIMES)}{'' if paired else ', u'})"

    header = ["contestant"] + [f"N = {n}, {b} per iteration" for n, b in cols]
    table = []
    floor_row1 = ["C floor: one `send()` per delivery"]
    floor_rowk = ["C floor: B frames per `send()` (coalesced)"]
    for n, b in cols:
        f = floor_value(n, b)
        text = us(f.get("cpu_us_per_delivery")) if f and f.get("complete") else "—"
        floor_row1.append(text if b == 1 else "—")
        floor_rowk.append(text if b > 1 else "—")
    table.append(floor_row1)
    if any(b > 1 for _n, b in cols):
        table.append(floor_rowk)
    # The fan-out contestants (conftest's list; other scenarios' variants, such as
    # the compression ones, are not fan-out contestants) and whatever has a row.
    names = ({c for c, rec in run.contestants.items() if "server" in rec}
             | {r["contestant"] for r in rows})
    for name in sorted(names - {"floor"}, key=order_key):
        if any(name in cell[c] for c in cols):
            table.append([label(name)] + [contestant_cell(name, n, b) for n, b in cols])
        else:
            table.append([f"{label(name)} — {absent_reason(run.contestants, name)}"]
                         + ["—" for _ in cols])
    caption = ("Fan-out, 64 B: server CPU per delivery and, in brackets, its ratio to the C "
               "floor of the same N measured in the same run (B = 1: the one-syscall floor; "
               "B > 1: the coalesced floor; lower is better; u: unpaired).")
    part = ReadmePart(tables=[caption + "\n\n" + md_table(header, table)])
    split = kernel_split_table(cell, cols, names)
    if split:
        part.tables.append(split)
    k = max(batches)
    if k > 1:
        for n in ns:
            r = cell.get((n, k), {}).get("reinhardt-cy")
            f1 = floor_value(n, 1)
            if r and f1 and r.get("complete"):
                _ratio, tput, _p = floor_ratios(r, f1)
                part.bullets.append(
                    f"{k} broadcasts in one loop iteration, N = {n}: the C fan-out delivers "
                    f"{fmt(tput, '.1f', TIMES)} as many messages per CPU-second as the "
                    "one-syscall floor.")
    return part


def kernel_split_table(cell: dict[tuple[int, int], dict[str, dict[str, Any]]],
                       cols: list[tuple[int, int]], names: set[str]) -> str:
    """The fan-out's CPU per delivery split into kernel + user, for runs that record it."""

    def split(r: dict[str, Any] | None) -> str:
        if not r or not r.get("complete"):
            return "—"
        cpu, sys_ = r.get("cpu_us_per_delivery"), r.get("sys_us_per_delivery")
        if cpu is None or sys_ is None or math.isnan(cpu) or math.isnan(sys_):
            return "—"
        digits = ".3f" if cpu < 1 else ".2f"
        return f"{sys_:{digits}} + {max(cpu - sys_, 0.0):{digits}}"

    rows = []
    for name in ["floor", *sorted(names - {"floor"}, key=order_key)]:
        cells = [split(cell[c].get(name)) for c in cols]
        if any(text != "—" for text in cells):
            title = "C floor (B frames per `send()`)" if name == "floor" else label(name)
            rows.append([title, *cells])
    if len(rows) < 2:
        return ""
    header = ["kernel + user µs"] + [f"N = {n}, {b} per iteration" for n, b in cols]
    return ("Where that CPU goes: the same medians split into the kernel's (system) and user "
            "time of the server process, µs per delivery.\n\n" + md_table(header, rows))


#: How the README's echo table names each server (the echo servers, not the fan-outs).
ECHO_LABELS = {
    "reinhardt-cy": "**reinhardt-ws** (`apps.echo`, uvloop)",
    "reinhardt-cy-asyncio": "reinhardt-ws on asyncio's loop",
    "reinhardt-py": "reinhardt-ws, Python twin",
    "picows": "picows' own echo listener (the floor of our stack)",
    "socketify": "socketify (uWebSockets from Python) echo",
    "node-ws": "Node `ws` 8 + bufferutil echo",
    "websockets": "websockets, `async for` + `send`",
}


@readme_part(20)
def readme_echo(run: ReadmeRun) -> ReadmePart | None:
    rows = run.by_scenario.get("echo", [])
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: (ECHO_ORDER.index(r["contestant"])
                                       if r["contestant"] in ECHO_ORDER else 99))
    first = rows[0]
    ours = next((r for r in rows if r["contestant"] == "reinhardt-cy" and r.get("paired")), None)
    table = []
    for r in rows:
        ratio = ""
        if ours is not None and r["contestant"] in ours["paired"]:
            p = ours["paired"][r["contestant"]]
            ratio = f"ours {fmt(p.get('cpu_ratio'), '.2f', TIMES)} (paired)"
        table.append([ECHO_LABELS.get(r["contestant"], f"{r['contestant']} ({r.get('loop')})"),
                      fmt(r.get("cpu_us_per_message"), ".2f", " µs"), ratio,
                      fmt(r.get("messages_per_s"), ",.0f"), fmt(r.get("p99_us"), ",.0f", " µs")])
    absent = {k: v for r in rows for k, v in (r.get("absent") or {}).items()}
    for name, why in sorted(absent.items()):
        table.append([f"{ECHO_LABELS.get(name, name)} — absent: {why}", "—", "", "—", "—"])
    caption = (f"Echo, the receive path ({first.get('clients', '?')} clients, each sending a "
               f"{first.get('size', '?')} B text message and waiting for its echo, "
               f"{first.get('seconds', '?')} s rounds): server CPU per echoed message; "
               "*ours / it* pairs each round of reinhardt-cy with a round of the reference.")
    return ReadmePart(tables=[caption + "\n\n" + md_table(
        ["server", "CPU per message", "ours / it", "messages/s", "p99"], table)])


@readme_part(30)
def readme_compression(run: ReadmeRun) -> ReadmePart | None:
    rows = run.by_scenario.get("compression", [])
    if not rows:
        return None
    by = {r["contestant"]: r for r in rows}
    r0 = rows[0]
    table = []
    for name in sorted(by, key=lambda n: COMPRESSION_ORDER.index(n)
                       if n in COMPRESSION_ORDER else 99):
        r = by[name]
        table.append([name, fmt(r.get("cpu_us_per_delivery"), ".2f", " µs"),
                      fmt(r.get("cpu_ratio_to_plain_paired"), ".2f", TIMES),
                      fmt(r.get("wire_bytes_per_delivery"), ",.0f", " B"),
                      "yes" if r.get("complete") else "**no**"])
    caption = (f"permessage-deflate, a room of N = {r0.get('n')} receiving a "
               f"{r0.get('size')} B JSON message: server CPU and bytes on the wire per "
               f"delivery; *{TIMES} plain* against our uncompressed broadcast, paired.")
    return ReadmePart(tables=[caption + "\n\n" + md_table(
        ["variant", "CPU per delivery", f"{TIMES} plain", "wire per delivery", "complete"], table)])


@readme_part(40)
def readme_flush_interval(run: ReadmeRun) -> ReadmePart | None:
    rows = [r for r in run.by_scenario.get("flush_interval", [])
            if r.get("contestant") == "reinhardt-cy"]
    if not rows:
        return None
    bits = []
    for r in sorted(rows, key=lambda r: (r["n"], r["interval"])):
        if "paced_rate" in r:
            delay = (f"p99 delay {_ms(r.get('paced_added_delay_p99_s'), '+.1f')} ms "
                     f"(p50 {_ms(r.get('paced_added_delay_p50_s'), '+.1f')} ms) at "
                     f"{fmt(r.get('paced_rate'), '.0f')} broadcasts/s open loop, server "
                     f"lateness p99 {_ms(r.get('paced_late_p99_s'), '.1f')} ms")
        else:
            delay = (f"p99 delay "
                     f"{fmt(r.get('added_delay_p99_s', math.nan) * 1e3, '+.1f', ' ms')}")
        bits.append(f"N = {r['n']}, {r['interval'] * 1e3:g} ms: "
                    f"{fmt(r.get('throughput_ratio_to_floor_paired'), '.1f', TIMES)} the "
                    f"one-syscall floor's deliveries per CPU-second, {delay}")
    return ReadmePart(bullets=[
        "A latency budget (`RoomManager(flush_interval=...)`, one broadcast per loop "
        "iteration, C fan-out): " + "; ".join(bits) + "."])


@readme_part(50)
def readme_small_rooms(run: ReadmeRun) -> ReadmePart | None:
    rows = run.by_scenario.get("small_rooms", [])
    if not rows:
        return None
    r0 = rows[0]
    by = {r["contestant"]: r for r in rows}
    parts = []
    for name in sorted(by, key=order_key):
        r = by[name]
        value = fmt(r.get("cpu_us_per_delivery"), ".2f", " µs") if r.get("complete") else "failed"
        parts.append(f"**{name} {value}**" if name == "reinhardt-cy" else f"{name} {value}")
    missing = [f"{name} {absent_reason(run.contestants, name)}"
               for name in sorted(run.contestants, key=order_key)
               if run.contestants[name].get("rooms") and name not in by]
    _measured, text, _ok = small_rooms_verdict(rows, run.contestants)
    bullet = (f"Many small rooms ({r0.get('rooms')} rooms of {r0.get('room_size')}, "
              f"N = {r0.get('n')}, {r0.get('size')} B, each broadcast to one room): server CPU "
              f"per delivery {', '.join(parts)}"
              + (f" ({'; '.join(missing)})" if missing else "")
              + f". Target (at most socketify's): {text.replace('**', '')}.")
    return ReadmePart(bullets=[bullet])


@readme_part(60)
def readme_idle_memory(run: ReadmeRun) -> ReadmePart | None:
    rows = run.by_scenario.get("idle_memory", [])
    if not rows:
        return None
    by = {r["contestant"]: r for r in rows}
    ours = [f"**{human_bytes(by[n]['rss_per_conn_idle'])}** ({n})"
            for n in ("reinhardt-cy", "reinhardt-py") if n in by]
    ours += [f"{human_bytes(by[n]['rss_per_conn_idle'])} ({n}: keep-alive on)"
             for n in ("reinhardt-cy-keepalive", "reinhardt-py-keepalive") if n in by]
    peers = [f"{n} {human_bytes(by[n]['rss_per_conn_idle'])}" for n in sorted(by, key=order_key)
             if not n.startswith("reinhardt-") and n != "floor"]
    missing = [f"{n} {absent_reason(run.contestants, n)}" for n in PEERS
               if n in run.contestants and n not in by]
    bullets = [
        f"Memory per idle connection (N = {rows[0].get('n')}): {', '.join(ours) or 'n/a'}, "
        f"against {', '.join(peers) or 'no peer'}"
        + (f" ({'; '.join(missing)})" if missing else "") + "."]
    browser = {r["contestant"]: r for r in run.by_scenario.get("idle_memory_browser", [])}
    if browser:
        mine = [f"**{human_bytes(browser[n]['rss_per_conn_idle'])}** ({n})"
                for n in ("reinhardt-cy", "reinhardt-py", "reinhardt-cy-keepalive",
                          "reinhardt-py-keepalive") if n in browser]
        theirs = [f"{n} {human_bytes(browser[n]['rss_per_conn_idle'])}"
                  for n in sorted(browser, key=order_key)
                  if not n.startswith("reinhardt-") and n != "floor"]
        bullets.append("The same with clients that send a browser's upgrade headers (about "
                       f"600 bytes): {', '.join(mine) or 'n/a'}, against "
                       f"{', '.join(theirs) or 'no peer'}.")
    return ReadmePart(bullets=bullets)


@readme_part(70)
def readme_slow_consumer(run: ReadmeRun) -> ReadmePart | None:
    rows = run.by_scenario.get("slow_consumer", [])
    if not rows:
        return None
    r0 = rows[0]
    bits = []
    for r in sorted(rows, key=lambda r: order_key(r["contestant"])):
        state = ("all healthy complete" if r.get("healthy_complete") else
                 f"{fmt(100 * r.get('healthy_completeness', math.nan), '.0f', ' %')} delivered")
        if not r.get("send_loop_finished"):
            state += ", broadcast loop stuck"
        bits.append(f"{r['contestant']} {human_bytes(r.get('peak_growth_bytes'))} ({state})")
    return ReadmePart(bullets=[
        f"Slow consumer ({r0.get('n')} healthy clients get {r0.get('messages')} {TIMES} "
        f"{size_label(int(r0.get('size', 0)))} messages while one never reads): peak server "
        f"memory growth {', '.join(bits)}."])


@readme_part(80)
def readme_build_frame(run: ReadmeRun) -> ReadmePart | None:
    rows = [r for r in run.by_scenario.get("micro", [])
            if r["_name"].startswith("test_build_frame") and r.get("size") == 64]
    by = {r.get("implementation"): r["_stats"].get("mean", math.nan) for r in rows}
    if "cython" not in by or "python" not in by:
        return None
    return ReadmePart(bullets=[
        f"`build_frame`: {fmt(by['cython'] * 1e9, '.0f')} ns (C) against "
        f"{fmt(by['python'] * 1e9, '.0f')} ns (Python) for 64 B."])


@readme_part(90)
def readme_targets(run: ReadmeRun) -> ReadmePart | None:
    if not run.targets:
        return None
    return ReadmePart(tables=[
        "Targets, checked by `bench/report.py` on this run:\n\n"
        + "\n".join(["| target | measured | verdict |", "|---|---|---|", *run.targets])])


def readme_machine(data: dict[str, Any]) -> str:
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    ci = data.get("commit_info", {})
    rows = [r for rs in data.get("by_scenario", {}).values() for r in rs]
    loops = sorted({str(r.get("loop")) for r in rows if r.get("loop")})
    node = next((r["server_info"] for r in rows
                 if (r.get("server_info") or {}).get("node")), None)
    system = f"{mi.get('system', '?')} {mi.get('release', '')}".strip()
    bits = [f"{mi.get('node', '?')}: {cpu.get('brand_raw', mi.get('processor', '?'))}, "
            f"{cpu.get('count', '?')} CPUs, {system}",
            f"{mi.get('python_implementation', 'Python')} {mi.get('python_version', '?')}"]
    if loops:
        bits.append(f"event loop of the Python servers: {', '.join(loops)}")
    if node:
        bits.append(f"Node {node.get('node')}, ws {node.get('ws')}, "
                    f"bufferutil {node.get('bufferutil') or 'absent'}")
    when = f"run {data.get('datetime', '?')}, commit {str(ci.get('id', '?'))[:10]}"
    if ci.get("dirty"):
        when += " (dirty)"
    return "; ".join(bits) + f"; {when}"


def readme_block(data: dict[str, Any], targets: list[str], source: Path) -> str:
    """The Markdown between the README's perf markers, from one run."""
    run = ReadmeRun(data=data, by_scenario=data["by_scenario"],
                    contestants=contestant_records(data), targets=targets)
    parts = [(order, part) for order, fn in sorted(README_PARTS, key=lambda p: p[0])
             if (part := fn(run)) is not None]
    out: list[str] = []
    for _order, part in parts:
        for table in part.tables:
            out += [table, ""]
    bullets = [b for _order, part in parts for b in part.bullets]
    absent = [f"{name} ({rec['absent']})" for name, rec in
              sorted(run.contestants.items(), key=lambda kv: order_key(kv[0]))
              if rec.get("absent")]
    if absent:
        bullets.append(f"Absent from this run (could not run here): {'; '.join(absent)}.")
    out += [f"- {b}" for b in bullets]
    if bullets:
        out.append("")
    command = data.get("command")
    where = data.get("invocation_dir", "")
    in_bench = where.rstrip("/").endswith("/bench")
    run_line = command or "# (this JSON does not record its command)"
    if command and in_bench:
        run_line = f"(cd bench && {command})"
    out += [f"Machine: {readme_machine(data)}. Every figure above comes from this one run:",
            "", "```sh",
            'pip install ".[bench]" && (cd bench/node && npm ci --no-audit --no-fund)',
            run_line, f"python bench/report.py {source} --readme README.md", "```"]
    return "\n".join(out)


def rewrite_readme(readme: Path, block: str) -> None:
    """Replace the text between the perf markers of the ``## Performance`` section."""
    text = readme.read_text()
    section = re.search(r"^## Performance\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if section is None:
        raise SystemExit(f"{readme}: no '## Performance' section")
    body = section.group(1)
    start, end = body.find(README_BEGIN), body.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: the Performance section has no {README_BEGIN} ... "
                         f"{README_END} markers")
    new_body = body[:start + len(README_BEGIN)] + "\n" + block.strip() + "\n" + body[end:]
    readme.write_text(text[:section.start(1)] + new_body + text[section.end(1):])


# -- compression -------------------------------------------------------------------------
COMPRESSION_ORDER = ["reinhardt-cy-deflate", "reinhardt-cy-plain", "reinhardt-py-deflate",
                     "websockets-deflate", "websockets-deflate-nct", "socketify-shared"]


def compression_section(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """test_compression.py: the table, and the three targets of issue 12."""
    if not rows:
        return "", []
    by = {r["contestant"]: r for r in rows}

    def rank(name: str) -> int:
        return COMPRESSION_ORDER.index(name) if name in COMPRESSION_ORDER else 99

    table = []
    for name in sorted(by, key=rank):
        r = by[name]
        table.append([
            name, fmt(r.get("cpu_us_per_delivery"), ".2f"),
            fmt(r.get("cpu_ratio_to_plain_paired"), ".2f", "x"),
            fmt(r.get("wire_bytes_per_delivery"), ",.0f"),
            f"{r.get('compressed_deliveries', 0):,} / {r.get('delivered', 0):,}",
            f"`{r.get('negotiated', '?')}`", "yes" if r.get("complete") else "**NO**",
        ])
    r0 = rows[0]
    text = "\n".join([
        f"## Compression (N = {r0.get('n')}, {r0.get('size')} B JSON, one broadcast per "
        "iteration)", "",
        f"The clients offer `{r0.get('offer')}`, inflate every compressed message and compare "
        "it with the payload.  *x plain*: CPU per delivery over reinhardt-cy with "
        "compression=None, paired (its rounds alternate with this one's).  *wire B*: bytes of "
        "the frames per delivery.", "",
        md_table(["variant", "CPU us/delivery", "x plain (paired)", "wire B/delivery",
                  "compressed", "negotiated", "complete"], table), ""])
    targets: list[str] = []
    ours = by.get("reinhardt-cy-deflate")
    if ours is None:
        return text, targets
    done = bool(ours.get("complete"))
    ratio = ours.get("cpu_ratio_to_plain_paired", math.nan)
    ok = None if ratio is None or math.isnan(ratio) else ratio <= 1.3 and done
    targets.append(f"| compression, N={ours.get('n')}: reinhardt-cy compressed CPU/delivery <= "
                   f"1.3x uncompressed | {fmt(ratio, '.2f', 'x')} | {verdict(ok)} |")
    ws = by.get("websockets-deflate")
    if ws is not None:
        less = ws["cpu_us_per_delivery"] / ours["cpu_us_per_delivery"]
        ok = None if math.isnan(less) else less >= 10 and done and bool(ws.get("complete"))
        targets.append(f"| compression: >= 10x less CPU/delivery than websockets' compressed "
                       f"broadcast | {fmt(less, '.1f', 'x')} less | {verdict(ok)} |")
    nct = by.get("websockets-deflate-nct")
    if nct is not None:
        mine, theirs = ours["wire_bytes_per_delivery"], nct["wire_bytes_per_delivery"]
        ok = None if math.isnan(mine) or math.isnan(theirs) else mine <= theirs and done
        targets.append(f"| compression: wire bytes/delivery <= websockets no-context-takeover "
                       f"({fmt(theirs, ',.0f')} B) | {fmt(mine, ',.0f')} B | {verdict(ok)} |")
    return text, targets




# -- charts ------------------------------------------------------------------------------
ECHO_ORDER = ["reinhardt-cy", "reinhardt-baseline", "reinhardt-cy-asyncio", "reinhardt-py",
              "picows", "socketify", "node-ws", "websockets"]
ECHO_REFERENCES = ("socketify", "node-ws")  # target 1: at most their CPU per message


def echo_section(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """bench/test_echo.py: the receive path (issue 14, target 1)."""
    if not rows:
        return "", []
    rows = sorted(rows, key=lambda r: (ECHO_ORDER.index(r["contestant"])
                                       if r["contestant"] in ECHO_ORDER else 99))
    first = rows[0]
    out = ["## Echo: the receive path", "",
           f"{first.get('clients', '?')} clients, each sending a {first.get('size', '?')} B "
           f"text message and waiting for its echo, {first.get('seconds', '?')} s per round; "
           "server CPU per echoed message (getrusage in the server). Medians of the rounds.",
           ""]
    table = []
    for r in rows:
        table.append([r["contestant"], str(r.get("loop", "?")),
                      fmt(r.get("cpu_us_per_message"), ".2f", " us"),
                      fmt(r.get("messages_per_s"), ",.0f"),
                      fmt(r.get("p50_us"), ",.0f", " us"), fmt(r.get("p99_us"), ",.0f", " us")])
    out += [md_table(["contestant", "loop", "CPU per message", "messages/s", "p50", "p99"],
                     table), ""]
    targets: list[str] = []
    absent: dict[str, str] = {}
    paired_rows = [r for r in rows if r.get("paired")]
    if paired_rows:
        out += ["Paired: before each round of ours, one round of each reference on its own "
                "arena; the ratio is the median of the per-round ratios of CPU per message.",
                ""]
        refs = sorted({ref for r in paired_rows for ref in r["paired"]},
                      key=lambda x: ECHO_ORDER.index(x) if x in ECHO_ORDER else 99)
        ptable = []
        for r in paired_rows:
            absent.update(r.get("absent") or {})
            cells = [r["contestant"], fmt(r.get("cpu_us_per_message"), ".2f", " us")]
            for ref in refs:
                p = r["paired"].get(ref)
                cells.append("absent" if p is None else
                             f"{fmt(p.get('cpu_us_per_message'), '.2f')} us "
                             f"({fmt(p.get('cpu_ratio'), '.2f')}x)")
            ptable.append(cells)
        out += [md_table(["ours", "CPU per message", *[f"{ref} (ours / it)" for ref in refs]],
                         ptable), ""]
    ours = next((r for r in paired_rows if r["contestant"] == "reinhardt-cy"), None)
    if ours is not None:
        for ref in ECHO_REFERENCES:
            p = ours["paired"].get(ref)
            if p is None:
                targets.append(f"| echo: reinhardt-cy CPU per message <= {ref}'s | absent "
                               f"({absent.get(ref, 'not measured')}) | n/a |")
                continue
            ratio = p.get("cpu_ratio", math.nan)
            ok = None if math.isnan(ratio) else ratio <= 1.0
            targets.append(f"| echo: reinhardt-cy CPU per message <= {ref}'s (paired) | "
                           f"{fmt(ratio, '.2f')}x | {verdict(ok)} |")
        floor = ours["paired"].get("picows")
        if floor is not None:
            out += [f"Above picows' own echo (the floor of our stack): "
                    f"{fmt(floor.get('cpu_ratio'), '.2f')}x its CPU per message.", ""]
    if absent:
        out += ["Absent: " + "; ".join(f"{k}: {v}" for k, v in sorted(absent.items())), ""]
    return "\n".join(out), targets


def draw_charts(charts: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts", file=sys.stderr)
        return []
    written = []

    def grouped(metric: str, fname: str, ylabel: str, title: str, hline: float | None) -> None:
        data = charts.get(metric)
        if not data:
            return
        keys = sorted({k for v in data.values() for k in v})
        names = sorted(data, key=order_key)
        width = 0.8 / max(1, len(names))
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(keys)), 4.8))
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(keys))]
            ys = [data[name].get(k, math.nan) for k in keys]
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
        ax.set_xticklabels([f"N={n}\n{size_label(s)}\nB={b}" for n, s, b in keys], fontsize=8)
        if hline is not None:
            ax.axhline(hline, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)

    grouped("ratio", "fanout_ratio.png", "server CPU per delivery / one-syscall floor",
            "Fan-out cost relative to the floor (lower is better; dashed: the floor)", 1.0)
    grouped("cpu", "fanout_cpu.png", "server CPU us per delivery", "Fan-out cost", None)

    def bars(metric: str, fname: str, ylabel: str, title: str, scale: float) -> None:
        data = {k: v for k, v in charts.get(metric, {}).items() if v is not None}
        if not data:
            return
        names = sorted(data, key=order_key)
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4.2))
        ax.bar(names, [data[n] / scale for n in names], color="tab:blue")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)

    bars("idle", "idle_memory.png", "KiB per idle connection",
         "Server memory per idle connection", 1024)
    bars("slow", "slow_consumer.png", "MiB",
         "Peak server memory growth, one slow consumer", 1 << 20)
    micro = charts.get("micro")
    if micro:
        bars("micro", "micro.png", "ns per operation", "Micro-benchmarks", 1e-9)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, nargs="+",
                    help="the --benchmark-json file(s) of one run (several are merged)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also rewrite the perf block of this README.md (one JSON file only)")
    args = ap.parse_args(argv)
    if args.readme is not None and len(args.json) != 1:
        ap.error("--readme shows one run: give exactly one JSON file")
    data = load(args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    by = data["by_scenario"]
    charts: dict[str, Any] = {}

    fan, t1 = fanout_section(by.get("fanout", []), charts)
    idle, t2 = idle_section(by.get("idle_memory", []), charts)
    idle_browser, t2b = idle_section(by.get("idle_memory_browser", []), None, browser=True)
    t2 += t2b
    slow, t3 = slow_section(by.get("slow_consumer", []), charts)
    micro = micro_section(by.get("micro", []), charts)
    rooms, t4 = small_rooms_section(by.get("small_rooms", []), data)
    comp, t5 = compression_section(by.get("compression", []))
    echo, t_echo = echo_section(by.get("echo", []))
    t1 += fanout_floor_targets(by.get("fanout", []))
    held, t_held = flush_interval_section(by.get("flush_interval", []))
    written = draw_charts(charts, args.out)

    mi = data.get("machine_info", {})
    ci = data.get("commit_info", {})
    cpu = mi.get("cpu", {})
    any_info = next((r for rows in by.values() for r in rows if r.get("server_info")), {})
    head = [
        "# reinhardt-ws benchmark report", "",
        f"- run: {data.get('datetime', '?')}; commit {str(ci.get('id', '?'))[:10]}"
        f"{' (dirty)' if ci.get('dirty') else ''}",
        f"- machine: {mi.get('node', '?')}, {cpu.get('brand_raw', mi.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} CPUs; Python {mi.get('python_version', '?')}",
        f"- event loop of the Python servers: {any_info.get('loop', '?')}",
        f"- source: {', '.join(f'`{p}`' for p in args.json)}", "",
        "Numbers from one noisy shared machine: compare ratios within this run, not absolute "
        "values across runs.", "",
    ]
    targets = t1 + t2 + t3 + t4 + t5 + t_echo + t_held
    tsec = (["## Targets", "", "| target | measured | verdict |", "|---|---|---|", *targets, ""]
            if targets else [])
    charts_md = ["## Charts", "", *[f"![{w}]({w})" for w in written], ""] if written else []
    report = "\n".join([*head, contestants_section(data), *tsec,
                        fan, held, rooms, idle, idle_browser, slow, comp, echo, micro,
                        *charts_md])
    (args.out / "REPORT.md").write_text(report)
    print(f"wrote {args.out / 'REPORT.md'} and {len(written)} chart(s)")
    if args.readme is not None:
        rewrite_readme(args.readme, readme_block(data, targets, args.json[0]))
        print(f"rewrote the performance block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
