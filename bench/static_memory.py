#!/usr/bin/python3
"""The memory of the self-contained binary (`make php PHP_STATIC=1`: PHP 8.4
linked in) next to the default build (Debian's shared libphp 8.2), run side
by side: the harness's memory measure (bench/harness.py) at N = 10 and 100
for lrpm-host (the zygote) and lrpm-host-no-zygote, each binary in turn,
3 runs, medians. Writes bench/results/static_memory.json; `make
bench-static` runs it and bench/report.py puts it on docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import harness

STATIC = harness.ROOT / "build" / "php-8.4" / "dist-static" / "lrpm-host"
SIZES = [10, 100]
RUNS = 3


def version(binary: Path) -> str:
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    binaries = {"shared libphp (Debian)": harness.LRPM_HOST, "static (make php PHP_STATIC=1)": STATIC}
    for binary in binaries.values():
        if not binary.exists():
            sys.exit(f"{binary} is missing (make build; make php PHP_STATIC=1)")
    harness.APP = harness.stage_app()
    rows = []
    for run in range(RUNS):
        for label, binary in binaries.items():
            harness.LRPM_HOST = binary
            for contender in ("lrpm-host", "lrpm-host-no-zygote"):
                for count in SIZES:
                    harness.log(f"static memory: {label}, {contender}, {count} workers (run {run + 1}/{RUNS})")
                    row = harness.measure_memory(contender, count, settle_s=2.0)
                    rows.append(dict(row, binary=label, contender=contender, run=run))
    env = harness.environment()
    harness.write_result("static_memory", {
        "sizes": SIZES,
        "runs": RUNS,
        "versions": {label: version(binary) for label, binary in binaries.items()},
        "sizes_bytes": {label: binary.stat().st_size for label, binary in binaries.items()},
        "rows": rows,
        "run": {key: env[key] for key in ("date", "commit", "source_changes")},
    })
    for label in binaries:
        for contender in ("lrpm-host", "lrpm-host-no-zygote"):
            totals = {n: statistics.median(r["pss_total_kb"] for r in rows
                                           if r["binary"] == label and r["contender"] == contender and r["workers"] == n)
                      for n in SIZES}
            print(f"{label}, {contender}: {totals[SIZES[0]] / 1024:.1f} MB at {SIZES[0]}, "
                  f"{(totals[SIZES[1]] - totals[SIZES[0]]) / (SIZES[1] - SIZES[0]) / 1024:.2f} MB per worker")


if __name__ == "__main__":
    main()
