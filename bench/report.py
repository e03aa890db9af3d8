#!/usr/bin/python3
"""Turns bench/results/*.json into docs/benchmarks.md and its PNG plots.

Every figure in the page is computed here from the stored results, so the
page and the plots always show the results committed next to them. The
hand-written analysis comes from bench/notes.md, included as it is.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

try:
    import matplotlib
except ModuleNotFoundError:
    # matplotlib comes from Debian's python3-matplotlib (make bench-deps): a
    # pyenv or venv python3 first on PATH does not see it.
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    raise

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
PLOTS = DOCS / "benchmarks"
BASE = "lrpm-host"
CONTENDERS = ["lrpm-host", "lrpm-host-cold", "lrpm-host-no-zygote", "lrpm-host-preload", "supervisord", "fork-parent"]
COLOURS = {"lrpm-host": "#2ca02c", "lrpm-host-cold": "#98df8a", "lrpm-host-no-zygote": "#1f77b4",
           "lrpm-host-preload": "#17becf", "supervisord": "#d62728", "fork-parent": "#ff7f0e"}

# The targets the benchmark issue set.
TARGET_MEMORY_RATIO_VS_SUPERVISORD = 20.0
TARGET_REPLACEMENT_MS = 10.0
TARGET_IDLE_WAKEUPS_PER_S = 0.1
# The zygote issue's targets (lrpm-host, the default, against them).
TARGET_WARM_MB_PER_WORKER = 0.40
TARGET_COLD_MB_PER_WORKER = 0.80
TARGET_SPAWN_MS = 2.0
TARGET_ZYGOTE_REACTION_MS = 3.0
TARGET_UP_500_S = 1.0


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def ratio(value: float, base: float) -> str:
    return "1.0x" if base == 0 and value == 0 else "n/a" if base == 0 else f"{value / base:.1f}x"


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


class Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        self.add(*("| " + " | ".join(row) + " |" for row in rows))
        self.add("")


# --------------------------------------------------------------------------


def memory_section(page: Page, memory: dict, summary: dict) -> None:
    rows = memory["rows"]
    sizes = memory["sizes"]

    def median_of(contender: str, workers: int, key) -> float:
        picked = [key(r) for r in rows if r["contender"] == contender and r["workers"] == workers]
        return statistics.median(picked)

    totals = {c: {n: median_of(c, n, lambda r: r["pss_total_kb"]) for n in sizes} for c in CONTENDERS}
    slopes = {c: slope([(n, totals[c][n]) for n in sizes]) for c in CONTENDERS}
    summary["slopes"] = slopes
    largest = max(sizes)

    page.add("## Memory", "")
    page.add(
        f"Total PSS (`/proc/PID/smaps_rollup`) of the whole process tree (manager, workers, and lrpm-host's "
        f"configuration process and zygote), in MB, median of {memory['runs']} runs; in brackets the ratio to "
        "lrpm-host" + (f". Commit {memory['run']['commit']}." if memory.get("run") else "."),
        "",
    )
    page.table(
        ["workers"] + CONTENDERS,
        [[str(n)] + [f"{mb(totals[c][n])} ({ratio(totals[c][n], totals[BASE][n])})" for c in CONTENDERS] for n in sizes],
    )
    page.add(
        "Marginal cost of one more worker (least-squares slope of total PSS over N; the slope between the two "
        "largest farms; and the page tables (VmPTE) of the tree, which PSS does not count, per worker):",
        "",
    )
    big = sorted(sizes)[-2:]
    slopes_large = {c: (totals[c][big[1]] - totals[c][big[0]]) / (big[1] - big[0]) for c in CONTENDERS}
    has_tables = all("page_tables_kb" in r for r in rows)
    table_rows = [["MB per worker"] + [f"{slopes[c] / 1024:.2f}" for c in CONTENDERS],
                  ["ratio to lrpm-host"] + [ratio(slopes[c], slopes[BASE]) for c in CONTENDERS],
                  [f"MB per worker, {big[0]} to {big[1]}"] + [f"{slopes_large[c] / 1024:.2f}" for c in CONTENDERS]]
    if has_tables:
        tables = {c: slope([(n, median_of(c, n, lambda r: r["page_tables_kb"])) for n in sizes]) for c in CONTENDERS}
        summary["page_table_slopes"] = tables
        table_rows.append(["page tables, kB per worker"] + [f"{tables[c]:.0f}" for c in CONTENDERS])
    summary["slopes_large"] = slopes_large
    page.table(["", *CONTENDERS], table_rows)
    floor_rows = memory.get("floor_rows") or []
    if floor_rows:
        floor_sizes = memory["floor_sizes"]
        floor_contenders = sorted({r["contender"] for r in floor_rows}, key=CONTENDERS.index)

        def floor_median(c: str, n: int, key) -> float:
            return statistics.median(key(r) for r in floor_rows if r["contender"] == c and r["workers"] == n)

        floors = {c: slope([(n, floor_median(c, n, lambda r: r["pss_total_kb"])) for n in floor_sizes])
                  for c in floor_contenders}
        summary["floor"] = floors
        page.add(
            f"The empty-worker floor: the same farms with a `start()` that does nothing, at N = "
            f"{' and '.join(str(n) for n in floor_sizes)} (medians of {memory['runs']} runs): marginal PSS per worker, "
            f"and a worker's Private_Dirty by mapping at N = {floor_sizes[-1]} (kB).",
            "",
        )
        floor_keys = list(floor_rows[0]["private_dirty_by_mapping_kb"])
        page.table(
            ["", "MB per worker", "private dirty", *floor_keys],
            [[c, f"{floors[c] / 1024:.2f}",
              f"{floor_median(c, floor_sizes[-1], lambda r: r['private_dirty_per_worker_kb']):.0f}",
              *[f"{floor_median(c, floor_sizes[-1], lambda r, k=k: r['private_dirty_by_mapping_kb'][k]):.0f}"
                for k in floor_keys]]
             for c in floor_contenders],
        )
    reference = 100 if 100 in sizes else largest
    page.add(
        f"Where a worker's private memory goes, at N = {reference} (medians over up to 100 workers, kB): "
        "Private_Dirty split by mapping, and PHP's own `memory_get_usage()` / `memory_get_peak_usage()` "
        "at the first cycle.",
        "",
    )
    keys = list(next(r for r in rows if r["contender"] == BASE)["private_dirty_by_mapping_kb"])
    table_rows = []
    for c in CONTENDERS:
        dirty = median_of(c, reference, lambda r: r["private_dirty_per_worker_kb"])
        parts = [f"{median_of(c, reference, lambda r, k=k: r['private_dirty_by_mapping_kb'][k]):.0f}" for k in keys]
        heap = median_of(c, reference, lambda r: r["php_heap_kb"])
        peak = median_of(c, reference, lambda r: r["php_heap_peak_kb"])
        table_rows.append([c, f"{dirty:.0f}", *parts, f"{heap:.0f}", f"{peak:.0f}"])
    page.table(["", "private dirty", *keys, "PHP heap", "PHP peak"], table_rows)
    page.add("![Total PSS against the number of workers](benchmarks/memory.png)", "")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c in CONTENDERS:
        ax.plot(sizes, [totals[c][n] / 1024 for n in sizes], marker="o", label=c, color=COLOURS[c])
    ax.set_xlabel("workers")
    ax.set_ylabel("total PSS of the process tree (MB)")
    ax.set_title("Memory of a farm of Symfony workers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "memory.png", dpi=110)
    plt.close(fig)

    page.add(f"### Bringing {largest} workers up and stopping them", "")
    page.add(
        f"Up: from starting the manager to the last of {largest} first cycles. Stop: from SIGTERM to the manager "
        "to its exit with every worker gone (each worker finishes its cycle). Seconds, median of "
        f"{memory['runs']} runs.",
        "",
    )
    up = {c: median_of(c, largest, lambda r: r["up_s"]) for c in CONTENDERS}
    stop = {c: median_of(c, largest, lambda r: r["stop_s"]) for c in CONTENDERS}
    summary["up"], summary["stop"] = up, stop
    page.table(
        ["", *CONTENDERS],
        [["up (s)"] + [f"{up[c]:.2f} ({ratio(up[c], up[BASE])})" for c in CONTENDERS],
         ["stop (s)"] + [f"{stop[c]:.2f} ({ratio(stop[c], stop[BASE])})" for c in CONTENDERS]],
    )


def spawn_section(page: Page, spawn: dict, summary: dict) -> None:
    count = spawn[BASE]["spawns"]
    page.add("## Spawn", "")
    page.add(
        f"One job, stopped and started {count} times through each manager's own interface (lrpm-host's control "
        "socket, supervisord's XML-RPC `startProcess`, a line on the fork parent's stdin). Measured from the "
        "start request to the new worker's first `cycle()`, and to the entry of its `start()`; ms.",
        "",
    )
    rows = []
    for c in CONTENDERS:
        total, to_start = spawn[c]["latencies_ms"], spawn[c]["request_to_start_ms"]
        rows.append([
            c,
            f"{statistics.median(total):.1f} ({ratio(statistics.median(total), statistics.median(spawn[BASE]['latencies_ms']))})",
            f"{percentile(total, 0.99):.1f}",
            f"{statistics.median(to_start):.1f}",
            f"{percentile(to_start, 0.99):.1f}",
        ])
    summary["spawn"] = {c: (statistics.median(spawn[c]["latencies_ms"]), percentile(spawn[c]["latencies_ms"], 0.99))
                        for c in CONTENDERS if c in spawn}
    page.table(["", "first cycle, median", "p99", "start() entered, median", "p99"], rows)
    page.add("![Spawn latency distribution](benchmarks/spawn.png)", "")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c in CONTENDERS:
        values = sorted(spawn[c]["latencies_ms"])
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=c, color=COLOURS[c])
    ax.set_xscale("log")
    ax.set_xlabel("start request to first cycle() (ms, log scale)")
    ax.set_ylabel("fraction of spawns")
    ax.set_title(f"Spawn latency, {count} spawns each")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOTS / "spawn.png", dpi=110)
    plt.close(fig)


def reaction_section(page: Page, reaction: dict, summary: dict) -> None:
    page.add("## Reaction to a crash", "")
    first = next(iter(reaction.values()))[BASE]
    page.add(
        f"{first['workers']} workers; {first['kills']} times, a worker that has run longer than its "
        "`shortRunTimeSeconds` (so no backoff applies) is killed with SIGKILL. Measured from the kill to the "
        "replacement's first `cycle()`, and to the entry of its `start()`; ms. The framework workload wires "
        "Symfony in `start()`; the empty one does nothing there, which leaves the managers' own share.",
        "",
    )
    rows = []
    for workload, per_contender in reaction.items():
        base = statistics.median(per_contender[BASE]["latencies_ms"])
        for c in CONTENDERS:
            values, to_start = per_contender[c]["latencies_ms"], per_contender[c]["kill_to_start_ms"]
            rows.append([
                workload,
                c,
                f"{statistics.median(values):.1f} ({ratio(statistics.median(values), base)})",
                f"{percentile(values, 0.99):.1f}",
                f"{statistics.median(to_start):.1f}",
            ])
        summary.setdefault("reaction", {})[workload] = {
            c: (statistics.median(per_contender[c]["latencies_ms"]), percentile(per_contender[c]["latencies_ms"], 0.99))
            for c in CONTENDERS
        }
    page.table(["workload", "", "first cycle, median", "p99", "start() entered, median"], rows)
    page.add("![Reaction time](benchmarks/reaction.png)", "")

    fig, axes = plt.subplots(1, len(reaction), figsize=(9, 4.2), sharey=True)
    for ax, (workload, per_contender) in zip(axes, reaction.items()):
        ax.boxplot([per_contender[c]["latencies_ms"] for c in CONTENDERS], showfliers=True)
        ax.set_xticks(range(1, len(CONTENDERS) + 1), CONTENDERS, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(workload)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("kill -9 to replacement's first cycle() (ms, log scale)")
    fig.tight_layout()
    fig.savefig(PLOTS / "reaction.png", dpi=110)
    plt.close(fig)


def loop_section(page: Page, loop: dict, summary: dict) -> None:
    sides = loop["sides"]
    page.add("## Loop overhead", "")
    page.add(
        "An empty `cycle()` run in a loop: lrpm-host's worker loop (`lrpm-host worker --cycles N`) against a "
        "plain `while` loop over `cycle()` in php-cli (bench/app/bin/loop.php). Each side runs "
        f"{loop['short_cycles']:,} and {loop['long_cycles']:,} cycles, {loop['runs']} times each; the "
        "difference of the median times over the difference of the counts cancels process start-up"
        + (f". Commit {loop['run']['commit']}." if loop.get("run") else "."),
        "",
    )
    base = sides["lrpm-host"]["cycles_per_second"]
    page.table(
        ["", "cycles per second", "ns per cycle", "ratio to lrpm-host"],
        [[side, f"{v['cycles_per_second'] / 1e6:.1f} M", f"{1e9 / v['cycles_per_second']:.0f}",
          ratio(v["cycles_per_second"], base)] for side, v in sides.items()],
    )
    summary["loop"] = sides


def idle_section(page: Page, idle: dict, summary: dict) -> None:
    runs = idle["runs"]
    page.add("## Idle cost", "")
    page.add(
        f"{runs[0]['workers']} workers per manager, each sleeping in `cycle()`; over {runs[0]['seconds']:.0f} s, "
        "the manager processes' CPU time (utime + stime from `/proc/PID/stat`) and wakeups (voluntary plus "
        f"involuntary context switches from `/proc/PID/status`). Median of {len(runs)} runs. The four farms "
        "run at the same time: the counters are per process, and a farm's workers do not wake another "
        "farm's manager.",
        "",
    )
    rows = []
    for c in CONTENDERS:
        for role in runs[0]["processes"][c]:
            cpu = statistics.median(r["processes"][c][role]["cpu_ms_per_minute"] for r in runs)
            wakeups = statistics.median(r["processes"][c][role]["wakeups_per_second"] for r in runs)
            rows.append([c, role, f"{cpu:.1f}", f"{wakeups:.2f}"])
            summary.setdefault("idle", {})[(c, role)] = (cpu, wakeups)
    page.table(["", "process", "CPU ms per minute", "wakeups per second"], rows)


def output_section(page: Page, output: dict, summary: dict) -> None:
    rows = output["rows"]
    run = output.get("run", {})
    page.add("## Worker output", "")
    page.add(
        "Workers that print 80-byte lines as fast as PHP can (1,000 `echo`s per cycle), one job with "
        "`replicas` 2 or 50; the host's stdout is /dev/null, so what is measured is the supervisor's "
        "forwarding (read, cut into lines, prefix with `[name#slot]`, write), not a reader. `capture` is the "
        "default (`--worker-output=capture`); `inherit` lets the workers write to /dev/null themselves, the "
        "ceiling. Lines per second are all the workers' lines (each counts what it printed) over the run; "
        "supervisor CPU is its utime + stime over the run, as a share of one CPU. Median of "
        f"{output['runs']} runs" + (f", commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    table = []
    for workers in sorted({r["workers"] for r in rows}):
        for mode in ("capture", "inherit"):
            mine = [r for r in rows if r["workers"] == workers and r["mode"] == mode]
            if not mine:
                continue
            rate = statistics.median(r["lines_per_second"] for r in mine)
            cpu = statistics.median(r["supervisor_cpu_percent"] for r in mine)
            table.append([str(workers), mode, f"{rate / 1000:.0f} k", f"{cpu:.1f} %"])
            summary.setdefault("output", {})[(workers, mode)] = (rate, cpu)
    page.table(["workers", "output", "lines per second", "supervisor CPU"], table)


def sharing_section(page: Page, sharing: dict, summary: dict) -> None:
    rows = sharing["rows"]
    run = sharing.get("run", {})
    page.add("## Sharing after 1,000 cycles", "")
    page.add(
        f"{rows[0]['workers']} Symfony workers that each dispatch a message through the framework's bus every cycle "
        "(1 ms sleeps). PSS per worker and the shared part of the workers' resident set (Shared_Clean + "
        "Shared_Dirty over Rss, from smaps_rollup) at the first cycle and once every worker ran "
        f"{rows[0]['cycles']} cycles. With the zygote (lrpm-host) the bench app's bootstrap builds the framework "
        "once, in the zygote, and the workers use that copy; with --no-zygote each worker builds its own in start()"
        + (f". Commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    page.table(
        ["", "PSS per worker, first cycle", f"after {rows[0]['cycles']} cycles", "shared, first cycle",
         f"shared after {rows[0]['cycles']} cycles"],
        [[r["contender"], f"{r['pss_per_worker_kb']['first_cycle'] / 1024:.2f} MB",
          f"{r['pss_per_worker_kb']['after'] / 1024:.2f} MB", f"{r['shared_fraction']['first_cycle'] * 100:.0f} %",
          f"{r['shared_fraction']['after'] * 100:.0f} %"] for r in rows],
    )


def upgrade_section(page: Page, upgrade: dict, summary: dict) -> None:
    rows = upgrade["rows"]
    run = upgrade.get("run", {})
    page.add("## Upgrade in place", "")
    page.add(
        f"`lrpmctl upgrade` of a {rows[0]['workers']}-worker Symfony farm (the same binary on disk: a trial run, "
        "the exec, a fresh PHP boot, then every job recycled onto it): from the request to the last replacement's "
        "first cycle, and the starts beyond one per job (none expected)"
        + (f". Commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    page.table(
        ["", "all workers new after", "extra starts"],
        [[r["contender"], f"{r['all_new_s']:.2f} s", str(r["extra_starts"])] for r in rows],
    )


def messenger_section(page: Page, messenger: dict, summary: dict) -> None:
    rows = messenger["rows"]
    run = messenger.get("run", {})
    page.add("## Symfony Messenger on Redis", "")
    page.add(
        "examples/messenger's consumers on a redis-server on loopback: "
        f"{messenger['messages']:,} messages published first, then consumed by 4 consumers running Symfony's "
        "`Worker` with the listeners FrameworkBundle wires for `messenger:consume` (SIGTERM, pcntl dispatch), "
        "the same transport, bus and handler (SETNX of the message id, in Redis) everywhere: **lrpm-host** runs "
        "them as one job with `replicas: 4` (a batch per `cycle()`), **php-cli** as 4 `php bin/consume.php "
        "consumer-N` processes (one `Worker::run()` each, what `bin/console messenger:consume` does; php-cli "
        "with Debian's defaults, OPcache off). Messages per second from the first message handled to the last "
        "(start-up excluded); PSS is the sum over the consumers (and lrpm-host's supervisor and configuration "
        f"process) halfway through. Median of {messenger['runs']} runs"
        + (f", commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    table = []
    for name in ("lrpm-host", "php-cli"):
        mine = [r for r in rows if r["contender"] == name]
        if not mine:
            continue
        rate = statistics.median(r["messages_per_second"] for r in mine)
        pss = statistics.median(r["pss_kb"] for r in mine)
        dups = sum(r["duplicates"] for r in mine)
        table.append([name, f"{rate:,.0f}", f"{mb(pss)} MB", str(dups)])
        summary.setdefault("messenger", {})[name] = (rate, pss)
    page.table(["contender", "messages per second", "PSS (4 consumers)", "duplicates"], table)
    page.add(
        "Throughput is the same within noise: the work is Redis round trips (ZCOUNT, XREADGROUP, the "
        "handler's SET/EVAL/DEL, XACK, XDEL per message) from the same PHP code, and lrpm-host adds nothing per "
        "message. The soak with recycles, SIGTERMs and SIGKILLs (exactly once, none lost) is "
        "tests/example_messenger.rs; its figures are in the README.",
        "",
    )


def tasks_section(page: Page, tasks: dict, summary: dict) -> None:
    rows = tasks["rows"]
    run = tasks.get("run", {})
    page.add("## Tasks (`Lrpm\\Task`)", "")
    page.add(
        f"One worker runs {rows[0]['tasks']:,} tasks one after the other (`Task::run(fn () => hrtime(true))->wait()`, "
        "after 50 to warm up), then as many round trips written the way apps do without the host: "
        "`pcntl_fork()`, a socket pair, `serialize()` and `exit()` in the copy, `pcntl_waitpid()` in the worker. "
        "*First line* is from `Task::run()` to the task's first line of user code (CLOCK_MONOTONIC on both "
        "sides), *round trip* until `wait()` returned the answer. The median and the 90th percentile of each run, the "
        f"median of {tasks['runs']} runs"
        + (f", commit {run['commit']}." if run.get("commit") else "."),
        "",
    )

    def med(key: str, field: str = "median") -> float:
        return statistics.median(r[key][field] for r in rows)

    first, round_trip, raw = med("first_line_ms"), med("round_trip_ms"), med("pcntl_round_trip_ms")
    page.table(
        ["", "median", "p90"],
        [
            ["Task::run() to the task's first line", f"{first:.3f} ms", f"{med('first_line_ms', 'p90'):.3f} ms"],
            ["Task::run() to wait()'s answer", f"{round_trip:.3f} ms", f"{med('round_trip_ms', 'p90'):.3f} ms"],
            ["pcntl_fork() + socket pair + exit()", f"{raw:.3f} ms", f"{med('pcntl_round_trip_ms', 'p90'):.3f} ms"],
        ],
    )
    summary["tasks"] = (first, round_trip, raw)
    if all("pool_calls_per_second" in r for r in rows):
        rate = statistics.median(r["pool_calls_per_second"] for r in rows)
        pss = statistics.median(r["pool_helper_pss_kb"] for r in rows)
        page.add(
            f"A pool of 4 helpers (`Lrpm\\Pool`, a method returning its argument, {rows[0]['tasks'] * 10:,} calls "
            f"with up to 256 outstanding): **{rate:,.0f} calls per second**; each helper's PSS meanwhile: "
            f"{pss / 1024:.2f} MB (median of the helpers and runs).",
            "",
        )
    page.add(
        f"A task's round trip is {raw / round_trip:.1f}x faster than the hand-written one: the task closes its "
        "end of the socket as soon as its answer is written and leaves through `_exit`, so the worker neither "
        "waits for the task's memory to be torn down nor for the destructors and shutdown functions that "
        "`exit()` runs in the copy (and that close the worker's connections, docs/tasks.md). Most of what is "
        "left is `fork()` itself, which copies the worker's page tables.",
        "",
    )


def dashboard_section(page: Page, dashboard: dict, summary: dict) -> None:
    rows = dashboard["rows"]
    run = dashboard.get("run", {})
    workers, seconds = rows[0]["workers"], rows[0]["seconds"]

    def med(pick) -> float:
        return statistics.median(pick(r) for r in rows)

    idle = med(lambda r: r["supervisor_cpu_ms_per_minute_idle"])
    open_ = med(lambda r: r["supervisor_cpu_ms_per_minute_page_open"])
    status_ms = med(lambda r: r["requests"]["/api/status"]["median_ms"])
    status_p99 = med(lambda r: r["requests"]["/api/status"]["p99_ms"])
    farm_ms = med(lambda r: r["requests"]["/api/farm"]["median_ms"])
    control_p99 = med(lambda r: r["control_socket"]["p99_ms"])
    size = med(lambda r: r["bytes"]["/api/status"])
    page.add("## The dashboard's cost", "")
    page.add(
        f"A farm of {workers:,} idle workers with `--dashboard`: the supervisor's CPU over {seconds:.0f} s with "
        f"nobody looking, then over {seconds:.0f} s with what an open page asks for (`/api/status` every 2 s, "
        "`/api/farm` every 5 s) and a control-socket `version` every 100 ms meanwhile. Medians of "
        f"{dashboard['runs']} runs" + (f", commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    page.table(
        ["", "figure"],
        [
            ["supervisor CPU, nobody looking", f"{idle:.0f} ms per minute"],
            ["supervisor CPU, the page open", f"{open_:.0f} ms per minute ({(open_ - idle) / 600:.2f}% of one CPU more)"],
            ["`/api/status` (the whole farm's document)", f"{status_ms:.1f} ms median, {status_p99:.1f} ms p99, {size / 1024:,.0f} KB"],
            ["`/api/farm` (history included)", f"{farm_ms:.1f} ms median"],
            ["control socket p99 meanwhile", f"{control_p99:.1f} ms"],
        ],
    )
    summary["dashboard"] = (idle, open_, control_p99)


def release_section(page: Page, tasks: dict, summary: dict) -> None:
    rows = [r for r in tasks["rows"] if "release" in r]
    if not rows:
        return
    before = statistics.median(r["release"]["before_kb"] for r in rows)
    after = statistics.median(r["release"]["after_kb"] for r in rows)
    page.add("## What `start()` frees", "")
    page.add(
        "A worker whose `start()` builds 1,000,000 short strings (about 50 MB of Zend heap) and drops them: its "
        f"private dirty memory right after (**{before / 1024:.1f} MB**), and a second after the runner gave the free "
        f"heap back (`zend_mm_gc()` and `malloc_trim()` once `start()` returned): **{after / 1024:.1f} MB**. Median "
        f"of {len(rows)} runs (`make bench-tasks`). The rest is the chunks Zend MM keeps cached and free pages "
        "inside chunks still in use.",
        "",
    )
    summary["release"] = (before, after)


def cluster_section(page: Page, cluster: dict, summary: dict) -> None:
    page.add("## One farm over many hosts (`--cluster`)", "")
    page.add(
        f"`make bench-cluster` (bench/cluster.py): {cluster['units']:,} units (single-process jobs of the empty "
        f"workload, a 1 s cycle) over members on one machine ({cluster['cpus']} CPUs), each a whole lrpm-host "
        f"(supervisor, agent, zygote, workers) with the same configuration, on one etcd on loopback; "
        f"`--cluster-ttl {cluster['ttl_s']}`. Times run from the event (start, SIGKILL, SIGTERM) to the last "
        "affected unit's first `cycle()` on its new member, as the workers report it. The control probe's "
        "thread runs at nice -20 as root, so that its figures are the supervisor's answers rather than its own "
        "wait for a CPU among thousands of workers (\"client late\" says how late it still woke). A `kill -9`'s "
        "time is the rest of the victim's lease (renewed every TTL/4, so it ends 0.75 to 1 TTL after the kill) "
        "plus the survivors' claims and starts. One run, commit "
        f"{cluster['commit']}, {cluster['date']}.",
        "",
    )
    kill, drain, join, rejoin = cluster["kill9"], cluster["drain"], cluster["join"], cluster["rejoin"]
    control = cluster["control_ms"]
    rows = [
        ["3 members started at once: every unit running where placement puts it",
         f"{cluster['bring_up_s']:.1f} s ({cluster['bring_up_starts']:,} worker starts; shares "
         + ", ".join(f"{k} {v}" for k, v in sorted(cluster["shares"].items())) + ")"],
        ["etcd requests per second, steady state (lease renewals; no polling)",
         f"{cluster['etcd_requests_per_s']:.2f}"],
        [f"`kill -9` of a member: its {kill['units']:,} units running on the others",
         f"{kill['seconds']:.1f} s (TTL {cluster['ttl_s']} s; target TTL + 2 s)"],
        ["control round trips on a survivor during that move",
         f"p50 {control['p50']:.2f} ms, p99 {control['p99']:.1f} ms, max {control['max']:.1f} ms "
         f"({control['samples']:,} samples; the client thread itself woke up to "
         f"{control.get('client_late_max', 0):.0f} ms late, p99 {control.get('client_late_p99', 0):.0f} ms)"],
        [f"the killed member back: its {rejoin['units']:,} units running on it again", f"{rejoin['seconds']:.1f} s"],
        [f"SIGTERM to a member (drain): its {drain['units']:,} units running elsewhere", f"{drain['seconds']:.1f} s"],
        ["a 4th member joins: units moved (a quarter expected)",
         f"{join['moved']:,} of {cluster['units']:,} ({join['moved'] / cluster['units']:.0%}), "
         f"{join['to_joiner']:,} of them to the new member, in {join['seconds']:.1f} s"],
    ]
    page.table(["measure", "result"], rows)
    summary["cluster"] = cluster


SCALE_COLOURS = {"lrpm-host": COLOURS["lrpm-host"], "supervisord": COLOURS["supervisord"],
                 "fork-parent": COLOURS["fork-parent"]}


def scale_groups(rows: list[dict]) -> list[list[dict]]:
    """The runs of each (manager, size), lrpm-host first, by size."""
    order = {"lrpm-host": 0, "supervisord": 1, "fork-parent": 2}
    keys = sorted({(r["contender"], r["workers"]) for r in rows}, key=lambda k: (order.get(k[0], 9), k[1]))
    return [[r for r in rows if (r["contender"], r["workers"]) == key] for key in keys]


def scale_section(page: Page, scale: dict, summary: dict, env: dict) -> None:
    rows = scale["rows"]
    cpus = scale.get("cpus", env["cpus"])
    groups = scale_groups(rows)
    lrpm = [g for g in groups if g[0]["contender"] == BASE]
    largest = lrpm[-1]
    top = largest[0]["workers"]
    repeated = max(len(g) for g in groups)
    deadline = scale.get("stop_watch_deadline_s", 9.8)

    def med(group: list[dict], key) -> float:
        return statistics.median(key(r) for r in group)

    def spread(group: list[dict], key, fmt: str) -> str:
        """The median, with the range when there were several runs."""
        values = [key(r) for r in group]
        text = format(statistics.median(values), fmt)
        if len(values) > 1:
            text += f" ({format(min(values), fmt)}-{format(max(values), fmt)})"
        return text

    page.add("## Scale", "")
    run = scale.get("run", {})
    where = ""
    if run and run.get("commit") != env.get("commit"):
        where = (f" Measured on {run['date']} at commit {run['commit']} with `make bench-scale`"
                 + (" in quick mode" if run.get("quick") else "") + ".")
    if run.get("source_changes"):
        where += " The source tree had uncommitted changes to " + ", ".join(run["source_changes"]) + "."
    nice = largest[0].get("nice") or {}
    budget = scale.get("fork_budget") or ""
    budget_ms = budget.removeprefix("Duration::from_millis(").removesuffix(")")
    setup = ""
    if nice.get("manager") is not None:
        setup += (f" Started as root, the supervisor ran at nice {nice['manager']} and its workers at nice "
                  f"{nice['worker']} (`process::raise_supervisor_priority`)")
        if budget_ms.isdigit():
            setup += f"; it stops forking for a loop turn once forks took {budget_ms} ms (`FORK_BUDGET`)"
        setup += "."
    runs_text = (f"One run per size, {repeated} at {top:,} workers (median, and the range in brackets)"
                 if repeated > 1 else "One run per size")
    page.add(
        f"lrpm-host bringing up to {top:,} workers on {cpus} CPUs, and stopping them. The worker is the "
        "benchmark workload with `\"framework\": false`: `start()` does nothing and `cycle()` sleeps "
        f"{scale['cycle_sleep_ms']} ms, so the figures are the manager's and PHP's start-up, not the app's. "
        "Up: from starting the manager to the last first `cycle()` (the same first-cycle reports as above). "
        f"Control: while the farm comes up, the harness sends one request every "
        f"{rows[0]['probe']['interval_s'] * 1000:.0f} ms (after the previous answer) over the manager's Unix "
        "socket, from a thread of its own with a raw socket (no client program to start), and times it to "
        "the whole answer; the harness runs at nice 0 like the workers, and \"client late\" is how late its "
        "thread woke from the pause between requests, a share of every latency that is the client's own wait "
        "for a CPU. Stop: SIGTERM to the manager to its exit, every worker gone; \"stop timeouts\" counts the "
        "workers the log says were killed after their 10 s stop timeout (lrpm-host's \"did not stop within\", "
        f"supervisord's \"with SIGKILL\"), and \"exiting at {deadline} s\" how many workers had not finished "
        f"exiting {deadline} s after the SIGTERM, just before that timeout. Memory: total PSS of the tree with "
        "every worker up (the farm's peak: it only grows during bring-up), and the page tables (VmPTE), which "
        f"PSS leaves out.{setup} {runs_text}.{where}",
        "",
    )

    def probe_cells(group: list[dict]) -> list[str]:
        if not group[0]["probe"]["request"]:
            return ["no control interface", "", "", "", ""]
        latencies = [ms for r in group for _, ms in r["probe"]["samples"]]
        late = [ms for r in group for ms in r["probe"].get("client_late_ms", [])]
        failures = sum(len(r["probe"]["failures"]) for r in group)
        count = f"{len(latencies)}" + (f" ({failures} failed)" if failures else "")
        if not latencies:
            return ["no answer", "", "", count, ""]
        return [f"{statistics.median(latencies):.1f}", f"{percentile(latencies, 0.99):.1f}",
                f"{max(latencies):.1f}", count,
                f"{statistics.median(late):.1f} / {percentile(late, 0.99):.1f}" if late else ""]

    page.add("Bring-up, and the manager's answers meanwhile (ms; the runs of a size pooled):", "")
    page.table(
        ["manager", "workers", "up (s)", "workers/s", "control median", "p99", "max", "requests",
         "client late, median / p99"],
        [[g[0]["contender"], f"{g[0]['workers']:,}", spread(g, lambda r: r["up_s"], ".1f"),
          f"{g[0]['workers'] / med(g, lambda r: r['up_s']):.0f}", *probe_cells(g)] for g in groups],
    )

    def left_at(r: dict, seconds: float) -> int | None:
        """Workers not done exiting `seconds` after SIGTERM (the last count before)."""
        counts = r.get("stop_workers_left")
        if counts is None:
            return None
        if r["stop_s"] <= seconds:
            return 0
        before = [n for t, n in counts if t <= seconds + 0.1]
        return before[-1] if before else None

    def left_cell(group: list[dict]) -> str:
        if any(left_at(r, deadline) is None for r in group):
            return "n/a"
        return spread(group, lambda r: left_at(r, deadline), ".0f")

    def stop_cpu_cell(group: list[dict]) -> str:
        if any("cpu_s_during_stop_by" not in r for r in group):
            return "n/a"
        return " / ".join(f"{med(group, lambda r, k=k: r['cpu_s_during_stop_by'][k]):.1f}"
                          for k in ("farm", "kernel threads", "other processes"))

    page.add("Stop and memory:", "")
    page.table(
        ["manager", "workers", "stop (s)", "stop timeouts", f"exiting at {deadline} s",
         "CPU during the stop (s): farm / kernel threads / other", "PSS of the tree (MB)",
         "PSS per worker (MB)", "page tables (MB)", "manager's anonymous RSS (MB)"],
        [[g[0]["contender"], f"{g[0]['workers']:,}", spread(g, lambda r: r["stop_s"], ".1f"),
          "n/a" if g[0]["stop_timeouts_logged"] is None else spread(g, lambda r: r["stop_timeouts_logged"], ".0f"),
          left_cell(g), stop_cpu_cell(g),
          f"{med(g, lambda r: r['pss_total_kb']) / 1024:,.0f}",
          f"{med(g, lambda r: r['pss_kb']['workers'] / r['workers']) / 1024:.2f}",
          f"{med(g, lambda r: r['page_tables_kb']) / 1024:,.0f}",
          f"{med(g, lambda r: r['supervisor_rss_anon_kb_at_up']) / 1024:.0f}"] for g in groups],
    )
    page.add(
        f"Where the bring-up time goes: the machine's busy CPU time over the bring-up (all {cpus} CPUs, "
        "`/proc/stat`; in brackets the share of the time available) split by who ran (`/proc/PID/schedstat` "
        "of every process and kernel thread at the start and at the last first cycle): the manager (user and "
        "system time from `/proc/PID/stat`; forks are system time), its workers (including their few "
        "sleeping cycles), kernel threads (the busiest named), and the rest (lrpm-host's configuration "
        "process, the harness, other processes, interrupts, processes that exited meanwhile). Seconds of "
        "CPU, medians; per worker in ms.",
        "",
    )

    def cpu_cells(group: list[dict]) -> list[str]:
        def by(key: str) -> float:
            return med(group, lambda r: r["cpu_s_during_up_by"][key])

        rest = med(group, lambda r: sum(v for k, v in r["cpu_s_during_up_by"].items()
                                        if k not in ("manager", "workers", "kernel threads")))
        tops = [dict(r.get("busiest_kernel_threads_during_up") or []) for r in group]
        names = [next(iter(t)) for t in tops if t]
        kthreads = f"{by('kernel threads'):.1f}"
        if names:
            name = max(set(names), key=names.count)
            kthreads += f" ({name} {statistics.median(t.get(name, 0.0) for t in tops):.1f})"
        n = group[0]["workers"]
        return [
            f"{med(group, lambda r: r['machine_cpu_s_during_up']):.1f} "
            f"({med(group, lambda r: r['cpu_busy_fraction_during_up']) * 100:.0f}%)",
            f"{by('manager'):.1f} ({med(group, lambda r: r['supervisor_cpu_s']['user']):.1f} user, "
            f"{med(group, lambda r: r['supervisor_cpu_s']['system']):.1f} system)",
            f"{by('workers'):.1f}",
            kthreads,
            f"{rest:.1f}",
            f"{by('manager') * 1000 / n:.2f}",
            f"{by('workers') * 1000 / n:.2f}",
        ]

    page.table(
        ["manager", "workers", "machine busy", "manager", "workers", "kernel threads", "rest",
         "manager per worker (ms)", "workers per worker (ms)"],
        [[g[0]["contender"], f"{g[0]['workers']:,}", *cpu_cells(g)] for g in groups],
    )
    if len(lrpm) >= 2:
        a, b = lrpm[-2], lrpm[-1]
        na, nb = a[0]["workers"], b[0]["workers"]
        marginal = (med(b, lambda r: r["pss_total_kb"]) - med(a, lambda r: r["pss_total_kb"])) / (nb - na) / 1024
        tables = (med(b, lambda r: r["page_tables_kb"]) - med(a, lambda r: r["page_tables_kb"])) / (nb - na)
        page.add(
            f"One more lrpm-host worker between {na:,} and {nb:,} costs {marginal:.2f} MB of PSS and "
            f"{tables:.0f} kB of page tables.",
            "",
        )
        summary["scale_marginal_mb"] = marginal
    tried = scale.get("others_tried", [])
    notes = []
    for name in ("supervisord", "fork-parent"):
        attempts = [a for a in scale.get("attempts", []) if a["contender"] == name]
        if not attempts:
            continue
        failed = [a for a in attempts if a["error"]]
        reached = [a for a in attempts if not a["error"]]
        text = f"**{name}**: "
        text += "; ".join(f"{a['workers']:,} workers failed ({a['error']})" for a in failed)
        if reached:
            text += ("; then " if failed else "") + f"measured at {reached[0]['workers']:,} workers"
        else:
            text += "; skipped"
        notes.append(text + ".")
    if tried:
        page.add(
            f"supervisord and the fork parent (php-cli processes) are not run at {top:,}; the analysis below "
            f"says what {top:,} would take. The harness tries them at {tried[0]:,} workers"
            + (f", and at {', then '.join(f'{n:,}' for n in tried[1:])} if that fails" if len(tried) > 1 else "")
            + " (each try bounded in time). " + " ".join(notes),
            "",
        )
    page.add("![Bring-up of large farms](benchmarks/scale.png)", "")
    summary["scale"] = largest

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = ["-", "--", "-.", ":"]
    for i, g in enumerate(lrpm):
        r = sorted(g, key=lambda r: r["up_s"])[len(g) // 2]  # the run with the median bring-up
        left.plot(r["ramp_s"], [k * r["workers"] / 100 for k in range(101)], color=COLOURS[BASE],
                  linestyle=styles[i % len(styles)],
                  label=f"lrpm-host, {r['workers']:,}" + (" (median run)" if len(g) > 1 else ""))
    for g in groups:
        r = g[0]
        if r["contender"] != BASE:
            left.plot(r["ramp_s"], [k * r["workers"] / 100 for k in range(101)],
                      color=SCALE_COLOURS[r["contender"]], label=f"{r['contender']}, {r['workers']:,}")
    left.set_xlabel("seconds since the manager started")
    left.set_ylabel("workers past their first cycle()")
    left.set_title("Bring-up")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for i, r in enumerate(largest):
        samples = r["probe"]["samples"]
        right.plot([t for t, _ in samples], [ms for _, ms in samples], ".", markersize=3,
                   color=COLOURS[BASE] if i == 0 else COLOURS["lrpm-host-preload"] if i == 1 else "#7f7f7f",
                   label=f"run {i + 1}")
    right.set_yscale("log")
    right.set_title(f"Control requests while lrpm-host brings up {top:,}")
    right.set_xlabel("seconds since the manager started")
    right.set_ylabel("request to answer (ms, log scale)")
    right.grid(alpha=0.3, which="both")
    if len(largest) > 1:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "scale.png", dpi=110)
    plt.close(fig)


def static_memory_section(page: Page, result: dict, summary: dict) -> None:
    rows = result["rows"]
    sizes = result["sizes"]
    run = result.get("run", {})
    page.add("## The self-contained binary", "")
    page.add(
        "`make bench-static`: the memory measure above (Symfony workload) with the default build (Debian's shared "
        "libphp) and with the self-contained binary (`make php PHP_STATIC=1`: PHP built from source and linked "
        f"in), run side by side, at N = {' and '.join(str(n) for n in sizes)}, median of {result['runs']} runs: "
        "total PSS of the tree, and the marginal cost of a worker between the two sizes; each binary's file size "
        "as built (the shared build's with line tables and without libphp, which is 5.6 MB more; "
        "php-src-config/README.md compares stripped sizes)"
        + (f". Commit {run['commit']}." if run.get("commit") else "."),
        "",
    )
    table = []
    for binary, version in result["versions"].items():
        for contender in ("lrpm-host", "lrpm-host-no-zygote"):
            totals = {n: statistics.median(r["pss_total_kb"] for r in rows if r["binary"] == binary
                                           and r["contender"] == contender and r["workers"] == n) for n in sizes}
            per_worker = (totals[sizes[-1]] - totals[sizes[0]]) / (sizes[-1] - sizes[0])
            table.append([f"{binary}: {version}, {result['sizes_bytes'][binary] / 1e6:.1f} MB", contender,
                          *[mb(totals[n]) for n in sizes], f"{per_worker / 1024:.2f}"])
    page.table(["binary", "", *[f"PSS at {n} (MB)" for n in sizes], "MB per worker"], table)


def targets_section(page: Page, summary: dict) -> None:
    page.add("## Targets", "")
    rows = []
    if "slopes" in summary:
        s = summary["slopes"]
        vs_supervisord = s["supervisord"] / s[BASE]
        rows.append([
            f"marginal memory per worker at least {TARGET_MEMORY_RATIO_VS_SUPERVISORD:.0f}x below supervisord + php-cli",
            f"{s[BASE] / 1024:.2f} MB vs {s['supervisord'] / 1024:.2f} MB: {vs_supervisord:.1f}x "
            f"(without the warm-up {s['supervisord'] / s['lrpm-host-cold']:.1f}x, with --no-zygote "
            f"{s['supervisord'] / s['lrpm-host-no-zygote']:.1f}x)",
            verdict(vs_supervisord >= TARGET_MEMORY_RATIO_VS_SUPERVISORD),
        ])
        rows.append([
            "marginal memory per worker below the pcntl_fork parent",
            f"{s[BASE] / 1024:.2f} MB vs {s['fork-parent'] / 1024:.2f} MB: {s['fork-parent'] / s[BASE]:.1f}x",
            verdict(s[BASE] < s["fork-parent"]),
        ])
    for workload, figures in summary.get("reaction", {}).items():
        median, p99 = figures[BASE]
        rows.append([
            f"a worker replaced within {TARGET_REPLACEMENT_MS:.0f} ms of its death ({workload})",
            f"median {median:.1f} ms, p99 {p99:.1f} ms to the first cycle",
            verdict(median <= TARGET_REPLACEMENT_MS),
        ])
    if "slopes" in summary and "lrpm-host-cold" in summary["slopes"]:
        s = summary["slopes"]
        rows.append([
            f"with the zygote and a warm-up, at most {TARGET_WARM_MB_PER_WORKER:.2f} MB per worker",
            f"{s[BASE] / 1024:.2f} MB",
            verdict(s[BASE] / 1024 <= TARGET_WARM_MB_PER_WORKER),
        ])
        rows.append([
            f"with the zygote and no warm-up, at most {TARGET_COLD_MB_PER_WORKER:.2f} MB per worker",
            f"{s['lrpm-host-cold'] / 1024:.2f} MB (each worker's start() builds the framework: see the analysis)",
            verdict(s["lrpm-host-cold"] / 1024 <= TARGET_COLD_MB_PER_WORKER),
        ])
    if BASE in summary.get("spawn", {}):
        median, p99 = summary["spawn"][BASE]
        rows.append([
            f"a spawn (start request to first cycle) under {TARGET_SPAWN_MS:.0f} ms",
            f"median {median:.2f} ms, p99 {p99:.2f} ms",
            verdict(median < TARGET_SPAWN_MS),
        ])
    if "framework" in summary.get("reaction", {}):
        median, p99 = summary["reaction"]["framework"][BASE]
        rows.append([
            f"kill -9 to the replacement's first cycle under {TARGET_ZYGOTE_REACTION_MS:.0f} ms (framework)",
            f"median {median:.2f} ms, p99 {p99:.2f} ms",
            verdict(median < TARGET_ZYGOTE_REACTION_MS),
        ])
    if "up" in summary and BASE in summary["up"]:
        rows.append([
            f"the largest farm of the memory measure up in under {TARGET_UP_500_S:.0f} s",
            f"{summary['up'][BASE]:.2f} s",
            verdict(summary["up"][BASE] < TARGET_UP_500_S),
        ])
    if "idle" in summary:
        cpu, wakeups = summary["idle"][(BASE, "supervisor")]
        rows.append([
            "the supervisor asleep when nothing happens",
            f"{wakeups:.2f} wakeups/s, {cpu:.1f} ms CPU per minute",
            verdict(wakeups <= TARGET_IDLE_WAKEUPS_PER_S),
        ])
    page.table(["target", "measured", "verdict"], rows)


def main() -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    env = load("environment")
    if env is None:
        raise SystemExit("bench/results/environment.json is missing: run `make bench` first")
    # Results from before a contender joined the harness do not name it.
    memory = load("memory")
    if memory is not None:
        measured = {r["contender"] for r in memory["rows"]}
        CONTENDERS[:] = [c for c in CONTENDERS if c in measured]
    page = Page()
    page.add(
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py from bench/results/*.json; edit bench/notes.md instead. -->",
        "",
        "lrpm-host against the usual ways of running long-lived PHP workers, side by side in one run on one "
        "machine. Rerun with `make bench` (about 33 minutes; `make bench-quick` for a smoke run, `make bench-scale` "
        "for the scale measure alone); it rewrites bench/results/*.json, this page and its plots.",
        "",
        "Contenders:",
        "",
        "- **lrpm-host**: the release build as it runs by default: workers forked from the zygote, a process "
        "that started a PHP request and ran the bootstrap once; the bench app's bootstrap builds the framework "
        "there (its warm-up), and workers share it, with OPcache;",
        "- **lrpm-host-cold**: the same without that warm-up: the zygote only autoloads, each worker's `start()` "
        "builds the framework;",
        "- **lrpm-host-no-zygote**: `--no-zygote`: workers forked by the supervisor, each starting its own PHP "
        "request and running the bootstrap and `start()` (OPcache shared);",
        "- **lrpm-host-preload**: `--no-zygote` with `--preload bench/app/preload.php`, which preloads the "
        "framework classes the workload uses;",
        "- **supervisord**: Debian's supervisor running one `php bench/app/bin/worker.php` per worker "
        "(one program, `numprocs=N`), php-cli with Debian's defaults (OPcache off in the CLI);",
        "- **fork-parent**: bench/app/bin/fork-parent.php, the php-lrpm model: a php-cli parent that loads "
        "nothing of the app and forks one child per job; each child loads the app itself.",
        "",
        "Workload, the same PHP code everywhere (bench/app/src/SymfonyWorker.php): `start()` wires Symfony "
        "from Debian's php-symfony-* packages through their autoloaders (a compiled DependencyInjection "
        "container, a Messenger bus with a Serializer and an in-memory transport, a Console application, a "
        "Validator: about 240 classes from 257 files), then `cycle()` sleeps "
        f"{env['cycle_sleep_ms']} ms. Each worker reports its first `cycle()` with a CLOCK_MONOTONIC timestamp "
        "over a Unix datagram socket, so the harness never polls.",
        "",
        f"Machine: {env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB, Linux {env['kernel']}; {env['php']}; "
        f"supervisord {env['supervisord']}. Run on {env['date']} at commit {env['commit']}"
        + (" in quick mode (fewer repetitions)." if env.get("quick") else "."),
        "",
    )
    # The measures fill `summary` as they render, and the targets table that
    # sums them up goes above them.
    summary: dict = {}
    body = Page()
    renderers = [
        ("memory", memory_section), ("spawn", spawn_section), ("reaction", reaction_section),
        ("loop", loop_section), ("idle", idle_section), ("output", output_section),
        ("sharing", sharing_section), ("upgrade", upgrade_section),
        ("messenger", messenger_section), ("tasks", tasks_section), ("tasks", release_section), ("dashboard", dashboard_section),
        ("static_memory", static_memory_section),
        ("cluster", cluster_section),
    ]
    for name, render in renderers:
        result = load(name)
        if result is not None:
            render(body, result, summary)
    scale = load("scale")
    if scale is not None:
        scale_section(body, scale, summary, env)
    targets_section(page, summary)
    page.add(*body.lines)
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        page.add(notes.read_text().rstrip(), "")
    (DOCS / "benchmarks.md").write_text("\n".join(page.lines).rstrip() + "\n")
    print("wrote docs/benchmarks.md and docs/benchmarks/*.png")


if __name__ == "__main__":
    main()
