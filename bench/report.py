"""Turn a ``pytest bench/ --benchmark-json=RUN.json`` file into a Markdown report
and PNG charts.

    python bench/report.py bench/results/run.json [more.json ...] [--out bench/results]

Writes ``REPORT.md`` and ``fanout_ratio.png``, ``fanout_cpu.png``, ``idle_memory.png``,
``slow_consumer.png``, ``micro.png`` (those it has data for) into ``--out``.  Every
ratio is computed here from the floor measured in the same run; a scenario whose
floor is missing shows "n/a" rather than a ratio against another run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = ["floor", "reinhardt-cy", "reinhardt-py", "picows", "websockets", "aiohttp"]
PEERS = ("picows", "websockets", "aiohttp")
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
    for suffix in ("-close", "-drop"):
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
        data["benchmarks"] = data.get("benchmarks", []) + json.loads(extra.read_text()).get(
            "benchmarks", [])
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
                name, fmt(cpu, ".3f"), fmt(floor_cpu, ".3f"),
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
                  md_table(["contestant", "CPU us/delivery", "floor us (paired)", "x floor (CPU)",
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
             "saves were what the messages queued behind).", ""]
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
            ok = None if math.isnan(added) else added <= interval and complete
            targets.append(f"| {where}: added delay p99 <= the interval "
                           f"| {fmt(added * 1e3, '.2f', ' ms')} | {verdict(ok)} |")
    lines.append(md_table(["contestant", "N", "interval", "CPU us/delivery", "floor us",
                           "deliv/CPU-s x floor", "CPU x floor without", "p50 ms", "p99 ms",
                           "p99 ms without", "added p99 ms", "complete"], table))
    lines.append("")
    return "\n".join(lines), targets


# -- memory ----------------------------------------------------------------------------
def idle_section(rows: list[dict[str, Any]], charts: dict[str, Any]) -> tuple[str, list[str]]:
    if not rows:
        return "", []
    table = []
    for r in sorted(rows, key=lambda r: order_key(r["contestant"])):
        table.append([r["contestant"], human_bytes(r.get("rss_per_conn_idle")),
                      human_bytes(r.get("rss_per_conn_warm")), human_bytes(r.get("rss_empty")),
                      human_bytes(r.get("rss_connected")), fmt(r.get("connect_s"), ".1f", " s")])
        charts.setdefault("idle", {})[r["contestant"]] = r.get("rss_per_conn_idle")
    by = {r["contestant"]: r for r in rows}
    peers = [by[p]["rss_per_conn_idle"] for p in PEERS if p in by]
    targets = []
    best = min(peers) if peers else None
    for name in ("reinhardt-cy", "reinhardt-py"):
        if name in by:
            mine = by[name]["rss_per_conn_idle"]
            ok = None if best is None else mine <= best
            targets.append(f"| idle memory per connection, {name}: <= best peer "
                           f"({human_bytes(best)}) | {human_bytes(mine)} | {verdict(ok)} |")
    text = "\n".join([
        f"## Memory per idle connection (N = {rows[0].get('n', 5000)})", "",
        "Server RSS with N idle clients minus RSS listening with none (after gc.collect()), "
        "per connection; *warm*: the same after one small broadcast to all.  Kernel socket "
        "memory is in no process's RSS.", "",
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


# -- charts ------------------------------------------------------------------------------
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
    args = ap.parse_args(argv)
    data = load(args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    by = data["by_scenario"]
    charts: dict[str, Any] = {}

    fan, t1 = fanout_section(by.get("fanout", []), charts)
    idle, t2 = idle_section(by.get("idle_memory", []), charts)
    slow, t3 = slow_section(by.get("slow_consumer", []), charts)
    micro = micro_section(by.get("micro", []), charts)
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
    targets = t1 + t2 + t3 + t_held
    tsec = (["## Targets", "", "| target | measured | verdict |", "|---|---|---|", *targets, ""]
            if targets else [])
    charts_md = ["## Charts", "", *[f"![{w}]({w})" for w in written], ""] if written else []
    report = "\n".join(head + tsec + [fan, held, idle, slow, micro] + charts_md)
    (args.out / "REPORT.md").write_text(report)
    print(f"wrote {args.out / 'REPORT.md'} and {len(written)} chart(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
