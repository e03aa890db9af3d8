#!/usr/bin/python3
"""Benchmarks lrpm-host against the usual ways of running PHP workers.

Contenders, run one after the other in this one run on this one machine:
  lrpm-host           the release binary as it runs by default: workers forked from the
                      zygote, whose bootstrap (the bench app's) builds the framework once
  lrpm-host-cold      the same without that warm-up: each worker's start() builds the framework
  lrpm-host-no-zygote --no-zygote: workers forked by the supervisor, each starting its own
                      request (OPcache shared)
  lrpm-host-preload   --no-zygote with --preload bench/app/preload.php
  supervisord         Debian's supervisor running one `php bin/worker.php` per job
  fork-parent         bench/app/bin/fork-parent.php, a php-cli parent that forks
                      one child per job after loading nothing of the app

All of them run the same workload (bench/app/src/SymfonyWorker.php). Each
worker reports its first cycle() to the harness over a Unix datagram socket
with a CLOCK_MONOTONIC timestamp, so nothing here polls.

The scale measure (--only scale, `make bench-scale`) brings up to 10,000
workers with an empty start() up and down under lrpm-host, and the php-cli
contenders at up to 2,000, timing control requests meanwhile.

Writes bench/results/*.json; bench/report.py turns them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The workload app; main() points this at a world-readable copy.
APP = ROOT / "bench" / "app"
LRPM_HOST = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "lrpm-host"
RESULTS = ROOT / "bench" / "results"
WORKLOAD = "Bench\\SymfonyWorker"
CYCLE_SLEEP_MS = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 300.0
# The scale measure: a worker whose start() does nothing and whose cycle()
# sleeps this long, so that bring-up and stop time the managers, not the app,
# and 10,000 sleeping workers do not load 2 CPUs with 100,000 wakeups a second.
SCALE_CYCLE_SLEEP_MS = 1000
# How often the harness sends a request to the manager's control interface
# during a scale bring-up.
PROBE_INTERVAL_S = 0.05
# When the scale measure counts the workers still exiting, in seconds after
# SIGTERM: just before their 10 s stop timeout (shutdownTimeoutSeconds) ends.
STOP_WATCH_DEADLINE_S = 9.8
# The php-cli contenders are tried at no more than 2,000 workers (supervisord
# takes about 5 MB per php-cli worker: 10,000 would not fit in 24 GB), each
# try bounded by this.
SCALE_OTHERS_TIMEOUT_S = 240.0

CONTENDERS = ["lrpm-host", "lrpm-host-cold", "lrpm-host-no-zygote", "lrpm-host-preload", "supervisord", "fork-parent"]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc readings


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children = children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """Pss, Private_Dirty, ... in kB; empty when the process is gone."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return values
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return values


ZEND_MM_CHUNK = 2 << 20


def private_dirty_by_mapping_kb(pid: int) -> dict[str, int]:
    """Private_Dirty of one process split by what the mapping is: the malloc
    heap, the Zend heap (anonymous mappings of whole 2 MiB chunks on a 2 MiB
    boundary: zend_alloc's chunks), .bss (the anonymous mapping that follows
    a binary's or library's data), PCRE JIT code (anonymous, executable),
    other anonymous mappings, the stack and everything else (file-backed)."""
    totals = {"malloc heap": 0, "Zend heap": 0, ".bss": 0, "PCRE JIT": 0, "other anonymous": 0, "stack": 0,
              "other": 0}
    kind = "other"
    previous_name = ""
    previous_end = -1
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return totals
    for line in lines:
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            start_s, end_s = head[0].split("-")
            start, end = int(start_s, 16), int(end_s, 16)
            perms = head[1]
            name = head[5].strip() if len(head) > 5 else ""
            if name == "[heap]":
                kind = "malloc heap"
            elif name == "[stack]":
                kind = "stack"
            elif name:
                kind = "other"
            elif "x" in perms:
                kind = "PCRE JIT"
            # Before .bss: a Zend chunk mapped right after a library's data
            # would look like its .bss.
            elif start % ZEND_MM_CHUNK == 0 and (end - start) % ZEND_MM_CHUNK == 0:
                kind = "Zend heap"
            elif start == previous_end and previous_name.startswith("/"):
                kind = ".bss"
            else:
                kind = "other anonymous"
            previous_name, previous_end = name, end
        elif line.startswith("Private_Dirty:"):
            totals[kind] += int(line.split()[1])
    return totals


def cpu_seconds(pid: int) -> float:
    """Time on a CPU, from /proc/PID/schedstat (nanoseconds): /proc/PID/stat
    counts in 10 ms ticks and reports 0 for a process that uses a few ms a
    minute."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def context_switches(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def nice_value(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def source_constant(path: str, name: str) -> str | None:
    """The value of a `const NAME: T = VALUE;` in the source the binary was built from."""
    match = re.search(rf"const {name}: [^=]+= ([^;]+);", (ROOT / path).read_text())
    return match.group(1).strip() if match else None


def cpu_split_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process; zeros when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS


def run_seconds(pid: int) -> float:
    """Time on a CPU (ns-precise, /proc/PID/schedstat); 0 when the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except OSError:
        return 0.0


def all_run_seconds() -> dict[int, float]:
    """run_seconds of every process and kernel thread now."""
    return {int(e): run_seconds(int(e)) for e in os.listdir("/proc") if e.isdigit()}


def thread_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kernel_threads() -> set[int]:
    """kthreadd and its children."""
    return {2, *children_map().get(2, [])}


def machine_busy_fraction(seconds: float) -> float:
    busy0, total0 = machine_cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_cpu_seconds()
    return (busy1 - busy0) / max(total1 - total0, 1e-9)


def wait_until_quiet(limit: float = 0.15, patience_s: float = 120.0) -> float:
    """Waits (up to patience_s) until the machine is below `limit` busy over a
    second: the previous farm's teardown is over, and nothing else runs.
    Returns the last reading."""
    deadline = time.monotonic() + patience_s
    busy = machine_busy_fraction(1.0)
    while busy > limit and time.monotonic() < deadline:
        busy = machine_busy_fraction(1.0)
    if busy > limit:
        log(f"the machine is still {busy * 100:.0f}% busy; measuring anyway")
    return busy


def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmPTE, RssAnon, ...); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# --------------------------------------------------------------------------
# First-cycle events


@dataclass
class FirstCycle:
    job: str
    pid: int
    at_ns: int  # first cycle()
    start_ns: int  # entry of start()
    heap: int  # memory_get_usage() at the first cycle
    heap_peak: int  # memory_get_peak_usage() at the first cycle


class EventSocket:
    """The Unix datagram socket workers report their first cycle() to."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(str(path))

    def next(self, deadline: float) -> FirstCycle:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no first-cycle event before the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(256).decode()
        except socket.timeout as exc:
            raise TimeoutError("no first-cycle event before the deadline") from exc
        kind, job, *numbers = data.split()
        assert kind == "first" and len(numbers) == 5, data
        pid, at_ns, start_ns, heap, heap_peak = map(int, numbers)
        return FirstCycle(job, pid, at_ns, start_ns, heap, heap_peak)

    def wait_for(self, jobs: set[str], timeout: float) -> dict[str, FirstCycle]:
        deadline = time.monotonic() + timeout
        seen: dict[str, FirstCycle] = {}
        while not jobs <= seen.keys():
            event = self.next(deadline)
            seen[event.job] = event
        return seen

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------
# Contenders


def make_jobs(
    count: int,
    events: Path,
    short_run_seconds: int = 5,
    framework: bool = True,
    sleep_ms: int = CYCLE_SLEEP_MS,
    use_bus: bool = False,
) -> dict[str, dict]:
    return {
        str(i): {
            "name": f"bench worker {i}",
            "workerClass": WORKLOAD,
            "mtime": 1,
            "shortRunTimeSeconds": short_run_seconds,
            "workerConfig": {"events": str(events), "id": str(i), "sleepMs": sleep_ms, "framework": framework,
                             "useBus": use_bus},
        }
        for i in range(1, count + 1)
    }


class Contender:
    """One process manager running a farm in its own scratch folder."""

    name = ""

    def __init__(self, work: Path, jobs: dict[str, dict]):
        self.work = work
        self.jobs = jobs
        self.proc: subprocess.Popen | None = None
        self.log = open(work / f"{self.name}.log", "wb")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def stop_job(self, job: str) -> None:
        raise NotImplementedError

    def start_job(self, job: str) -> None:
        raise NotImplementedError

    def supervisor_pids(self) -> dict[str, int]:
        """The processes whose idle cost counts: role name -> pid."""
        return {"supervisor": self.pid}

    # The request the scale measure times during bring-up, None when the
    # manager has no control interface. It must be callable from another
    # thread and fail with OSError when the manager is not listening yet.
    probe_request: str | None = None

    def probe(self, timeout: float) -> None:
        raise NotImplementedError

    def stop_timeouts(self) -> int | None:
        """How many workers the manager's log says it killed after its stop timeout."""
        return None

    def stop(self, timeout: float = 120.0, then=None) -> None:
        """SIGTERM to the manager, then (after calling `then`, if given) wait
        for it, and so its workers, to exit."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if then is not None:
            then()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not stop within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid in reversed(process_tree(self.proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.log.close()


class LrpmHost(Contender):
    name = "lrpm-host"
    preload = False

    def start(self) -> None:
        (self.work / "jobs.json").write_text(json.dumps(self.jobs))
        farm = self.work / "farm.php"
        farm.write_text(f"<?php\nreturn new Bench\\JsonJobs({json.dumps(str(self.work / 'jobs.json'))});\n")
        self.socket_path = self.work / "control.sock"
        command = [str(LRPM_HOST), "--bootstrap", str(APP / "vendor/autoload.php")]
        command += ["--control-socket", str(self.socket_path)]
        if self.preload:
            command += ["--preload", str(APP / "preload.php")]
        if getattr(self, "no_zygote", False):
            command.append("--no-zygote")
        command += getattr(self, "extra_args", [])
        command.append(str(farm))
        env = dict(os.environ, LRPM_LOG="warn")
        if getattr(self, "cold", False):
            env["BENCH_NO_WARMUP"] = "1"
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def control(self, message: str) -> str:
        return once_listening(lambda: control_exchange(self.socket_path, message))

    probe_request = "`version` on the control socket"

    def probe(self, timeout: float) -> None:
        if not control_exchange(self.socket_path, "version", timeout).strip():
            raise ConnectionError("empty answer to version")

    def stop_timeouts(self) -> int:
        self.log.flush()
        return (self.work / f"{self.name}.log").read_text(errors="replace").count("did not stop within")

    def stop_job(self, job: str) -> None:
        self.control(f"stop {job}")

    def start_job(self, job: str) -> None:
        self.control(f"start {job}")

    def supervisor_pids(self) -> dict[str, int]:
        workers = {int(p) for p in self.worker_pids()}
        others = [p for p in process_tree(self.pid)[1:] if p not in workers]
        roles = {"supervisor": self.pid}
        for pid in others:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("lrpm-host: config"):
                roles["config process"] = pid
            elif title.startswith("lrpm-host: zygote"):
                roles["zygote"] = pid
        return roles

    def worker_pids(self) -> list[int]:
        status = json.loads(self.control("jsonstatus"))
        return [job["state"]["pid"] for job in status.values() if job["state"].get("pid")]


class LrpmHostCold(LrpmHost):
    """The default (the zygote) with a bootstrap that only autoloads: each
    worker's start() builds the framework."""

    name = "lrpm-host-cold"
    cold = True


class LrpmHostNoZygote(LrpmHost):
    """--no-zygote: each worker starts its own request and runs the bootstrap."""

    name = "lrpm-host-no-zygote"
    no_zygote = True


class LrpmHostPreload(LrpmHostNoZygote):
    name = "lrpm-host-preload"
    preload = True


class Supervisord(Contender):
    name = "supervisord"

    def start(self) -> None:
        self.socket_path = self.work / "supervisor.sock"
        lines = [
            "[unix_http_server]",
            f"file={self.socket_path}",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={self.work / 'supervisord.log'}",
            f"pidfile={self.work / 'supervisord.pid'}",
            f"childlogdir={self.work}",
            "minfds=16384",
            "minprocs=4096",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        ]
        # One program with numprocs, the usual way to run N copies of a
        # worker: one process group, so supervisord stops them all at once.
        # Every job differs only by its id, which %(process_num)d supplies.
        template = dict(self.jobs["1"])
        template["workerConfig"] = {k: v for k, v in template["workerConfig"].items() if k != "id"}
        job_json = json.dumps(template)
        assert "'" not in job_json and "%" not in job_json
        lines += [
            "[program:jobs]",
            f"command=/usr/bin/php {APP / 'bin/worker.php'} '{template['workerClass']}' '{job_json}' %(process_num)d",
            "process_name=%(program_name)s_%(process_num)d",
            f"numprocs={len(self.jobs)}",
            "numprocs_start=1",
            "autorestart=true",
            "startsecs=0",
            "stopsignal=TERM",
            f"stopwaitsecs={template.get('shutdownTimeoutSeconds', 10)}",
            "redirect_stderr=true",
            f"stdout_logfile={self.work / 'jobs_%(process_num)d.log'}",
        ]
        conf = self.work / "supervisord.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            ["/usr/bin/supervisord", "-n", "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.rpc = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=UnixStreamTransport(str(self.socket_path))
        )

    def call(self, method: str, *args):
        return once_listening(lambda: getattr(self.rpc.supervisor, method)(*args))

    probe_request = "XML-RPC `supervisor.getAPIVersion` on its Unix socket"

    def probe(self, timeout: float) -> None:
        proxy = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=UnixStreamTransport(str(self.socket_path), timeout)
        )
        proxy.supervisor.getAPIVersion()

    def stop_timeouts(self) -> int:
        log = self.work / "supervisord.log"
        return log.read_text(errors="replace").count("with SIGKILL") if log.exists() else 0

    def stop_job(self, job: str) -> None:
        self.call("stopProcess", f"jobs:jobs_{job}", False)

    def start_job(self, job: str) -> None:
        self.call("startProcess", f"jobs:jobs_{job}", False)


class ForkParent(Contender):
    name = "fork-parent"

    def start(self) -> None:
        (self.work / "jobs.json").write_text(json.dumps(self.jobs))
        self.proc = subprocess.Popen(
            ["/usr/bin/php", str(APP / "bin/fork-parent.php"), str(self.work / "jobs.json")],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop_job(self, job: str) -> None:
        self.command(f"stop {job}")

    def start_job(self, job: str) -> None:
        self.command(f"start {job}")


class LrpmHostDashboard(LrpmHost):
    """The default, with --dashboard on a metrics listener of its own."""

    name = "lrpm-host-dashboard"

    def __init__(self, work: Path, jobs: dict[str, dict]):
        super().__init__(work, jobs)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.extra_args = ["--metrics-listen", f"127.0.0.1:{self.port}", "--dashboard"]


CONTENDER_CLASSES = {c.name: c for c in (LrpmHost, LrpmHostCold, LrpmHostNoZygote, LrpmHostPreload, Supervisord,
                                         ForkParent, LrpmHostDashboard)}


class UnixStreamTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's Unix socket."""

    def __init__(self, path: str, timeout: float | None = None):
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_connection(self, host):
        path, timeout = self.path, self.timeout

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        return Connection("localhost")


def once_listening(request, timeout: float = 10.0):
    """Runs `request`, retrying while the manager's socket is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return request()
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def control_exchange(path: Path, message: str, timeout: float | None = None) -> str:
    """One request on lrpm-host's control socket: a length-prefixed frame each way."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        payload = message.encode()
        client.sendall(struct.pack(">Q", len(payload)) + payload)
        header = recv_exactly(client, 8)
        return recv_exactly(client, struct.unpack(">Q", header)[0]).decode()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("control socket closed early")
        data += chunk
    return data


class Farm:
    """A contender running `count` jobs, with its event socket, in a scratch folder."""

    def __init__(
        self,
        contender: str,
        count: int,
        short_run_seconds: int = 5,
        framework: bool = True,
        sleep_ms: int = CYCLE_SLEEP_MS,
        use_bus: bool = False,
    ):
        self.work = Path(tempfile.mkdtemp(prefix=f"lrpm-bench-{contender}-"))
        os.chmod(self.work, 0o755)
        self.events = EventSocket(self.work / "events.sock")
        self.jobs = make_jobs(count, self.events.path, short_run_seconds, framework, sleep_ms, use_bus)
        self.contender: Contender = CONTENDER_CLASSES[contender](self.work, self.jobs)

    def __enter__(self) -> "Farm":
        return self

    def __exit__(self, *exc) -> None:
        self.contender.close()
        self.events.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def start_and_wait(self) -> tuple[int, dict[str, FirstCycle]]:
        """Starts the farm; returns its start time (ns) and every job's first cycle."""
        started_ns = time.monotonic_ns()
        self.contender.start()
        first = self.events.wait_for(set(self.jobs), START_TIMEOUT_S)
        return started_ns, first


# --------------------------------------------------------------------------
# Measures


def measure_memory(contender: str, count: int, settle_s: float, framework: bool = True) -> dict:
    """Total PSS of the process tree, per role, and its page tables; bring-up
    and graceful stop times. `framework=False`: workers whose start() does
    nothing (the empty-worker floor)."""
    with Farm(contender, count, framework=framework) as farm:
        started_ns, first = farm.start_and_wait()
        up_s = (max(e.at_ns for e in first.values()) - started_ns) / 1e9
        time.sleep(settle_s)
        worker_pids = {e.pid for e in first.values()}
        tree = process_tree(farm.contender.pid)
        missing = worker_pids - set(tree)
        if missing:
            raise RuntimeError(f"{contender}: workers {sorted(missing)} left the tree before the reading")
        pss = {"supervisor": 0, "workers": 0, "other": 0}
        private_dirty = []
        for pid in tree:
            rollup = smaps_rollup_kb(pid)
            role = "supervisor" if pid == farm.contender.pid else "workers" if pid in worker_pids else "other"
            pss[role] += rollup.get("Pss", 0)
            if role == "workers":
                private_dirty.append(rollup.get("Private_Dirty", 0))
        # Up to 100 workers spread over the start order: the first ones to
        # start may have compiled the app themselves before OPcache had it.
        page_tables_kb = tree_page_tables_kb(farm.contender.pid)
        ordered = sorted(worker_pids)
        sample = ordered[:: max(1, len(ordered) // 100)]
        breakdown = [private_dirty_by_mapping_kb(pid) for pid in sample]
        private_dirty_by_mapping = {key: statistics.median(b[key] for b in breakdown) for key in breakdown[0]}
        stop_started = time.monotonic()
        farm.contender.stop()
        stop_s = time.monotonic() - stop_started
        stragglers = [pid for pid in worker_pids if alive(pid)]
        if stragglers:
            raise RuntimeError(f"{contender}: workers {stragglers} outlived their manager")
        return {
            "workers": count,
            "processes": len(tree),
            "pss_total_kb": sum(pss.values()),
            "pss_kb": pss,
            "page_tables_kb": page_tables_kb,
            "private_dirty_per_worker_kb": statistics.median(private_dirty),
            "private_dirty_by_mapping_kb": private_dirty_by_mapping,
            "php_heap_kb": statistics.median(e.heap for e in first.values()) / 1024,
            "php_heap_peak_kb": statistics.median(e.heap_peak for e in first.values()) / 1024,
            "up_s": up_s,
            "stop_s": stop_s,
        }


def worker_memory_kb(pids: set[int]) -> dict[str, float]:
    """PSS and the shared part of the resident set, summed over `pids`."""
    totals = {"pss": 0, "rss": 0, "shared": 0}
    for pid in pids:
        rollup = smaps_rollup_kb(pid)
        totals["pss"] += rollup.get("Pss", 0)
        totals["rss"] += rollup.get("Rss", 0)
        totals["shared"] += rollup.get("Shared_Clean", 0) + rollup.get("Shared_Dirty", 0)
    return totals


def measure_sharing(contender: str, count: int, cycles: int) -> dict:
    """Workers that dispatch a message through the framework's bus every
    cycle (1 ms sleeps): their PSS and the shared share of their resident
    set at the first cycle and once each has run `cycles` cycles (read from
    lrpm-host's status: each slot's cycle counter)."""
    with Farm(contender, count, sleep_ms=1, use_bus=True) as farm:
        _, first = farm.start_and_wait()
        worker_pids = {e.pid for e in first.values()}
        time.sleep(0.5)
        at_first = worker_memory_kb(worker_pids)
        deadline = time.monotonic() + 300
        while True:
            status = json.loads(farm.contender.control("jsonstatus"))
            done = [job["state"].get("cycles") or 0 for job in status.values()]
            if min(done) >= cycles:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{contender}: workers did not reach {cycles} cycles ({min(done)})")
            time.sleep(0.5)
        after = worker_memory_kb(worker_pids)
        farm.contender.stop()
    share = lambda m: m["shared"] / m["rss"] if m["rss"] else 0.0
    return {
        "workers": count,
        "cycles": cycles,
        "pss_per_worker_kb": {"first_cycle": at_first["pss"] / count, "after": after["pss"] / count},
        "shared_fraction": {"first_cycle": share(at_first), "after": share(after)},
    }


def measure_upgrade(contender: str, count: int) -> dict:
    """`lrpmctl upgrade` of a `count`-worker farm (the same binary: a fresh
    PHP boot): from the request to the last replacement's first cycle, and
    that every job got exactly one new process."""
    with Farm(contender, count) as farm:
        _, first = farm.start_and_wait()
        old = {job: e.pid for job, e in first.items()}
        asked_ns = time.monotonic_ns()
        reply = farm.contender.control("upgrade")
        if not reply.startswith("Upgrade started"):
            raise RuntimeError(f"{contender}: upgrade refused: {reply}")
        new = farm.events.wait_for(set(old), timeout=120)
        if any(new[job].pid == old[job] for job in old):
            raise RuntimeError(f"{contender}: a worker was not replaced")
        all_new_s = (max(e.at_ns for e in new.values()) - asked_ns) / 1e9
        time.sleep(1.0)
        extra = []
        while True:
            try:
                extra.append(farm.events.next(time.monotonic() + 0.2))
            except TimeoutError:
                break
        farm.contender.stop()
    return {"workers": count, "all_new_s": all_new_s, "extra_starts": len(extra)}


class Probe(threading.Thread):
    """Times one request to the manager every PROBE_INTERVAL_S (from the end of
    one answer to the next request) until stopped."""

    def __init__(self, contender: Contender, started_ns: int, timeout: float = 60.0):
        super().__init__(daemon=True)
        self.contender = contender
        self.started_ns = started_ns
        self.timeout = timeout
        self.done = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (seconds since the manager started, latency ms)
        self.failures: list[str] = []
        # How late the probe thread woke from its pause between requests: the
        # client's own wait for a CPU, which every latency above includes.
        self.late_ms: list[float] = []

    def run(self) -> None:
        listening = False
        if not self.contender.probe_request:
            return
        while not self.done.is_set():
            sent_ns = time.monotonic_ns()
            try:
                self.contender.probe(self.timeout)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if listening:  # it was listening: that is a failed request
                    self.failures.append(f"{(sent_ns - self.started_ns) / 1e9:.1f} s: {exc!r}")
                else:  # not listening yet: try again soon
                    self.done.wait(0.005)
                    continue
            except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
                self.failures.append(f"{(sent_ns - self.started_ns) / 1e9:.1f} s: {exc!r}")
            else:
                answered_ns = time.monotonic_ns()
                listening = True
                self.samples.append(((sent_ns - self.started_ns) / 1e9, (answered_ns - sent_ns) / 1e6))
            paused_ns = time.monotonic_ns()
            if not self.done.wait(PROBE_INTERVAL_S):
                self.late_ms.append((time.monotonic_ns() - paused_ns) / 1e6 - PROBE_INTERVAL_S * 1000)

    def finish(self) -> None:
        self.done.set()
        self.join()


class StopWatch(threading.Thread):
    """Counts the workers that have not finished exiting (not yet zombies or
    gone) at fixed times after the manager got SIGTERM: every second, and at
    STOP_WATCH_DEADLINE_S, just before the 10 s stop timeout ends.

    Each count is one epoll_wait over pidfds (readable once the process has
    exited): when thousands of workers wake at once on SIGTERM, even a nice
    -20 thread gets about 1% of the CPUs (scheduler weights: 88761 against
    1024 per nice-0 worker), so reading /proc for each worker would take
    seconds and miss the deadline. This thread runs at nice -20 when allowed."""

    def __init__(self, worker_pids: set[int]):
        super().__init__(daemon=True)
        self.epoll = select.epoll()
        self.pidfds: list[int] = []
        for pid in worker_pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            self.pidfds.append(fd)
            self.epoll.register(fd, select.EPOLLIN)
        self.total = len(worker_pids)
        self.done = threading.Event()
        self.started = time.monotonic()
        self.counts: list[tuple[float, int]] = []

    def sample(self) -> int:
        exited = len(self.epoll.poll(0, maxevents=len(self.pidfds) or 1))
        left = len(self.pidfds) - exited
        self.counts.append((round(time.monotonic() - self.started, 2), left))
        return left

    def run(self) -> None:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
        marks = sorted({float(k) for k in range(1, 300)} | {STOP_WATCH_DEADLINE_S})
        for mark in marks:
            if self.done.wait(max(0.0, self.started + mark - time.monotonic())):
                return
            if not self.sample():
                return

    def finish(self) -> None:
        """After the manager's exit: the last count (0 unless workers outlived it)."""
        self.done.set()
        self.join()
        self.sample()
        self.epoll.close()
        for fd in self.pidfds:
            os.close(fd)


@contextlib.contextmanager
def thread_priority(nice: int):
    """Runs the calling thread at `nice` (when allowed: root), then at its old value."""
    tid = threading.get_native_id()
    old = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, old)


def tree_pss_kb(root: int, worker_pids: set[int]) -> dict[str, int]:
    """PSS of a manager's process tree split into supervisor, workers and other (kB)."""
    pss = {"supervisor": 0, "workers": 0, "other": 0}
    for pid in process_tree(root):
        role = "supervisor" if pid == root else "workers" if pid in worker_pids else "other"
        pss[role] += smaps_rollup_kb(pid).get("Pss", 0)
    return pss


def tree_page_tables_kb(root: int) -> int:
    return sum(status_kb(pid, "VmPTE") for pid in process_tree(root))


def measure_scale(contender: str, count: int, timeout_s: float, settle_s: float = 2.0) -> dict:
    """Bring-up of `count` workers with an empty start(), the manager's
    responsiveness meanwhile, memory with all of them up, and the stop."""
    busy_before = wait_until_quiet()
    with Farm(contender, count, framework=False, sleep_ms=SCALE_CYCLE_SLEEP_MS) as farm:
        manager = farm.contender
        run0 = all_run_seconds()
        busy0, total0 = machine_cpu_seconds()
        started_ns = time.monotonic_ns()
        manager.start()
        probe = Probe(manager, started_ns)
        probe.start()
        try:
            return dict(scale_run(farm, probe, started_ns, settle_s, timeout_s, run0, busy0, total0),
                        machine_busy_before=busy_before)
        finally:
            probe.finish()


def scale_run(farm: Farm, probe: Probe, started_ns: int, settle_s: float, timeout_s: float,
              run0: dict[int, float], busy0: float, total0: float) -> dict:
    """measure_scale once the manager runs and the probe pings it."""
    manager, contender, count = farm.contender, farm.contender.name, len(farm.jobs)
    try:
        first = farm.events.wait_for(set(farm.jobs), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"{count} workers were not all up within {timeout_s:.0f} s") from None
    up_ns = max(e.at_ns for e in first.values())
    probe.finish()
    busy1, total1 = machine_cpu_seconds()
    run1 = all_run_seconds()
    supervisor_cpu = cpu_split_seconds(manager.pid)
    worker_pids = {e.pid for e in first.values()}
    workers_run_s = [run1.get(pid, 0.0) for pid in worker_pids]
    tree_now = set(process_tree(manager.pid))
    # CPU time over the bring-up of everything that ran, by who ran it; what
    # is left of the machine's busy time went to processes that exited
    # meanwhile, interrupts, and the idle-time rounding of /proc/stat.
    used = {pid: run1[pid] - run0.get(pid, 0.0) for pid in run1}
    kthreads = kernel_threads()
    cpu_by = {
        "manager": used.get(manager.pid, 0.0),
        "workers": sum(used.get(pid, 0.0) for pid in worker_pids),
        "manager's other children": sum(used[p] for p in tree_now if p != manager.pid and p not in worker_pids and p in used),
        "harness": used.get(os.getpid(), 0.0),
        "kernel threads": sum(v for p, v in used.items() if p in kthreads),
    }
    cpu_by["other processes"] = sum(
        v for p, v in used.items() if p not in tree_now and p not in kthreads and p != os.getpid()
    )
    cpu_by["unattributed"] = (busy1 - busy0) - sum(cpu_by.values())
    busiest_kthreads = sorted(((used[p], p) for p in kthreads if p in used), reverse=True)[:3]
    kthread_top = [[thread_name(p), round(v, 2)] for v, p in busiest_kthreads if v >= 0.1]
    supervisor_rss_anon = status_kb(manager.pid, "RssAnon")
    nice = {"manager": nice_value(manager.pid), "worker": nice_value(next(iter(worker_pids)))}
    up_s = (up_ns - started_ns) / 1e9
    # When each whole percent of the farm had run its first cycle.
    at = sorted((e.at_ns - started_ns) / 1e9 for e in first.values())
    ramp_s = [round(at[max(0, -(-k * count // 100) - 1)], 3) for k in range(101)]

    time.sleep(settle_s)
    tree = process_tree(manager.pid)
    missing = worker_pids - set(tree)
    if missing:
        raise RuntimeError(f"{contender}: {len(missing)} workers left the tree before the reading")
    pss = tree_pss_kb(manager.pid, worker_pids)
    page_tables = tree_page_tables_kb(manager.pid)

    outside0 = {p: v for p, v in all_run_seconds().items() if p not in tree_now}
    busy2, _ = machine_cpu_seconds()
    stop_started = time.monotonic()
    watch = StopWatch(worker_pids)
    # This thread only waits for the manager's exit, but the watch thread
    # needs the GIL from it: at nice 0 among thousands of exiting workers it
    # could hold the GIL, preempted, for seconds.
    with thread_priority(-20):
        manager.stop(timeout=300.0, then=watch.start)
    stop_s = time.monotonic() - stop_started
    busy3, _ = machine_cpu_seconds()
    outside1 = all_run_seconds()
    watch.finish()
    stop_by = {
        "kernel threads": sum(outside1.get(p, v) - v for p, v in outside0.items() if p in kthreads),
        "other processes": sum(outside1.get(p, v) - v for p, v in outside0.items()
                               if p not in kthreads and p != os.getpid()),
    }
    # The rest: the farm, the harness, and processes started meanwhile.
    stop_by["farm"] = (busy3 - busy2) - sum(stop_by.values())
    stragglers = [pid for pid in worker_pids if alive(pid)]
    if stragglers:
        raise RuntimeError(f"{contender}: {len(stragglers)} workers outlived their manager")
    latencies = [ms for _, ms in probe.samples]
    return {
        "workers": count,
        "processes": len(tree),
        "up_s": up_s,
        "ramp_s": ramp_s,
        "cpu_busy_fraction_during_up": (busy1 - busy0) / (total1 - total0),
        "machine_cpu_s_during_up": busy1 - busy0,
        "supervisor_cpu_s": {"user": supervisor_cpu[0], "system": supervisor_cpu[1], "total": cpu_by["manager"]},
        "workers_cpu_s_at_up": cpu_by["workers"],
        "workers_cpu_ms_at_up_median": statistics.median(workers_run_s) * 1000,
        "cpu_s_during_up_by": cpu_by,
        "busiest_kernel_threads_during_up": kthread_top,
        "supervisor_rss_anon_kb_at_up": supervisor_rss_anon,
        "nice": nice,
        "probe": {
            "request": manager.probe_request,
            "interval_s": PROBE_INTERVAL_S,
            "samples": [[round(t, 3), round(ms, 3)] for t, ms in probe.samples],
            "failures": probe.failures,
            "median_ms": statistics.median(latencies) if latencies else None,
            "max_ms": max(latencies) if latencies else None,
            "client_late_ms": [round(ms, 3) for ms in probe.late_ms],
        },
        "pss_total_kb": sum(pss.values()),
        "pss_kb": pss,
        "page_tables_kb": page_tables,
        "stop_s": stop_s,
        "stop_workers_left": watch.counts,
        "machine_cpu_s_during_stop": busy3 - busy2,
        "cpu_s_during_stop_by": stop_by,
        "stop_timeouts_logged": manager.stop_timeouts(),
    }


def measure_spawns(contender: str, spawns: int) -> dict:
    """Start request -> first cycle() of the new worker, over `spawns` stop/start rounds."""
    with Farm(contender, 1) as farm:
        _, first = farm.start_and_wait()
        pid = first["1"].pid
        latencies_ms, to_start_ms = [], []
        for _ in range(spawns):
            farm.contender.stop_job("1")
            deadline = time.monotonic() + 30
            while alive(pid):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{contender}: worker {pid} did not stop")
                time.sleep(0.001)
            requested_ns = time.monotonic_ns()
            farm.contender.start_job("1")
            event = farm.events.next(time.monotonic() + 30)
            if event.pid == pid:
                raise RuntimeError(f"{contender}: a stopped worker reported a first cycle")
            pid = event.pid
            latencies_ms.append((event.at_ns - requested_ns) / 1e6)
            to_start_ms.append((event.start_ns - requested_ns) / 1e6)
        farm.contender.stop()
        return {"spawns": spawns, "latencies_ms": latencies_ms, "request_to_start_ms": to_start_ms}


def measure_reaction(contender: str, kills: int, framework: bool, workers: int = 10) -> dict:
    """kill -9 of a worker that outlived its short-run time -> replacement's first cycle()."""
    short_run_s = 1
    with Farm(contender, workers, short_run_seconds=short_run_s, framework=framework) as farm:
        _, current = farm.start_and_wait()
        latencies_ms, to_start_ms = [], []
        for n in range(kills):
            victim = current[str(n % workers + 1)]
            ran_s = (time.monotonic_ns() - victim.at_ns) / 1e9
            if ran_s < short_run_s + 0.5:
                time.sleep(short_run_s + 0.5 - ran_s)
            killed_ns = time.monotonic_ns()
            os.kill(victim.pid, signal.SIGKILL)
            event = farm.events.next(time.monotonic() + 30)
            if event.job != victim.job:
                raise RuntimeError(f"{contender}: job {event.job} restarted, expected {victim.job}")
            current[event.job] = event
            latencies_ms.append((event.at_ns - killed_ns) / 1e6)
            to_start_ms.append((event.start_ns - killed_ns) / 1e6)
        farm.contender.stop()
        return {"kills": kills, "workers": workers, "latencies_ms": latencies_ms, "kill_to_start_ms": to_start_ms}


def measure_idle(seconds: float, workers: int) -> dict:
    """CPU time and wakeups of each manager process while its workers idle.

    All contenders run at once: the figures are per-process counters, which
    the other farms do not change, and this keeps the run at `seconds`.
    """
    with contextlib.ExitStack() as stack:
        farms = [stack.enter_context(Farm(name, workers)) for name in CONTENDERS]
        for farm in farms:
            farm.start_and_wait()
        time.sleep(2)
        roles = {farm.contender.name: farm.contender.supervisor_pids() for farm in farms}
        before = {(n, r): (cpu_seconds(p), context_switches(p)) for n, rp in roles.items() for r, p in rp.items()}
        time.sleep(seconds)
        result: dict[str, dict] = {}
        for (name, role), (cpu0, switches0) in before.items():
            pid = roles[name][role]
            result.setdefault(name, {})[role] = {
                "cpu_ms_per_minute": (cpu_seconds(pid) - cpu0) * 1000 * 60 / seconds,
                "wakeups_per_second": (context_switches(pid) - switches0) / seconds,
            }
        for farm in farms:
            farm.contender.stop()
        return {"seconds": seconds, "workers": workers, "processes": result}


def time_command(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def measure_loop(short_cycles: int, long_cycles: int, runs: int) -> dict:
    """Empty cycle() throughput: lrpm-host's worker loop vs a bare php-cli while loop.

    Each side runs `short_cycles` and `long_cycles`; the difference of the
    median times over the difference of the counts cancels process start-up.
    """
    autoload = str(APP / "vendor/autoload.php")
    sides = {
        "lrpm-host": lambda n: [str(LRPM_HOST), "worker", "Bench\\EmptyWorker", "--bootstrap", autoload,
                                "--cycles", str(n)],
        "php-cli": lambda n: ["/usr/bin/php", str(APP / "bin/loop.php"), "Bench\\EmptyWorker", str(n)],
    }
    result = {}
    for side, command in sides.items():
        short = [time_command(command(short_cycles)) for _ in range(runs)]
        long = [time_command(command(long_cycles)) for _ in range(runs)]
        per_cycle_s = (statistics.median(long) - statistics.median(short)) / (long_cycles - short_cycles)
        result[side] = {"short_s": short, "long_s": long, "cycles_per_second": 1 / per_cycle_s}
    return {"short_cycles": short_cycles, "long_cycles": long_cycles, "runs": runs, "sides": result}


OUTPUT_FARM = r"""<?php
// Workers that print as fast as they can: 1,000 lines of 80 bytes per cycle.
// Each writes how many lines it printed to COUNTS/<pid> when it stops.
final class Chatty implements Lrpm\Worker, Lrpm\Stoppable
{
    private int $lines = 0;
    public function start(array $job): void {}
    public function cycle(): void
    {
        for ($i = 0; $i < 1000; $i++) {
            echo 'chatty line ', str_pad((string) $this->lines++, 12, '0', STR_PAD_LEFT), ' ', str_repeat('.', 53), "\n";
        }
    }
    public function stop(): void
    {
        file_put_contents(getenv('COUNTS') . '/' . getmypid(), (string) $this->lines);
    }
}
return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        $replicas = (int) getenv('WORKERS');
        return ['chatty' => ['name' => 'chatty', 'workerClass' => 'Chatty', 'mtime' => 1, 'workerConfig' => [],
            'replicas' => $replicas]];
    }
};
"""


def measure_output(workers: int, seconds: float, mode: str) -> dict:
    """Lines per second that `workers` chatty workers get through the host,
    and the CPU the supervisor spends, with the host's stdout on /dev/null
    (so the supervisor's forwarding, not a reader, is what is measured).
    `mode` is --worker-output: capture (forwarded line by line) or inherit
    (the workers write to /dev/null themselves: the baseline)."""
    work = Path(tempfile.mkdtemp(prefix="lrpm-bench-output-"))
    try:
        counts = work / "counts"
        counts.mkdir()
        farm = work / "farm.php"
        farm.write_text(OUTPUT_FARM)
        socket_path = work / "control.sock"
        env = dict(os.environ, COUNTS=str(counts), WORKERS=str(workers))
        with open(os.devnull, "wb") as devnull:
            proc = subprocess.Popen(
                [str(LRPM_HOST), "--worker-output", mode, "--control-socket", str(socket_path), str(farm)],
                stdout=devnull, stderr=subprocess.PIPE, env=env, cwd=work,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    doc = json.loads(control_exchange(socket_path, "status", timeout=5))
                    if doc["chatty"]["state"].get("status") == "running":
                        break
                except (OSError, KeyError, ValueError):
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the chatty farm did not come up")
                time.sleep(0.05)
            started = time.monotonic()
            cpu0 = cpu_seconds(proc.pid)
            time.sleep(seconds)
            cpu1 = cpu_seconds(proc.pid)
            elapsed = time.monotonic() - started
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        written = [int(p.read_text() or 0) for p in counts.iterdir()]
        if len(written) != workers:
            raise RuntimeError(f"{len(written)} of {workers} workers reported their line count")
        total = sum(written)
        return {
            "workers": workers,
            "mode": mode,
            "seconds": elapsed,
            "lines": total,
            # Counted over the measured window plus start-up and the stop's
            # last cycle, which are short next to it.
            "lines_per_second": total / elapsed,
            "supervisor_cpu_percent": (cpu1 - cpu0) / elapsed * 100,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


TASK_FARM = r"""<?php
// One worker timing Lrpm\Task: from Task::run() to the task's first line of
// user code, and back to the worker with its small answer; then the same
// round trip written the way apps do without the host (pcntl_fork, a
// socket pair, exit()), side by side in the same worker. Writes RESULT.
final class TaskBench implements Lrpm\Worker
{
    private bool $done = false;
    public function start(array $job): void {}
    public function cycle(): void
    {
        if ($this->done) {
            usleep(100000);
            return;
        }
        $this->done = true;
        $n = (int) getenv('TASKS');
        $first = $round = $raw = [];
        for ($i = 0; $i < $n + 50; $i++) {  // 50 to warm up
            $t0 = hrtime(true);
            $t1 = Lrpm\Task::run(static fn (): int => hrtime(true))->wait();
            $t2 = hrtime(true);
            if ($i >= 50) {
                $first[] = ($t1 - $t0) / 1e6;
                $round[] = ($t2 - $t0) / 1e6;
            }
        }
        for ($i = 0; $i < $n + 50; $i++) {
            $t0 = hrtime(true);
            [$a, $b] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
            $pid = pcntl_fork();
            if ($pid === 0) {
                fclose($a);
                fwrite($b, serialize(hrtime(true)));
                exit(0);
            }
            fclose($b);
            $answer = unserialize(stream_get_contents($a));
            fclose($a);
            pcntl_waitpid($pid, $status);
            if ($i >= 50 && is_int($answer)) {
                $raw[] = (hrtime(true) - $t0) / 1e6;
            }
        }
        // A pool of 4 helpers: calls per second of a trivial method with up
        // to 256 calls outstanding, and each helper's PSS meanwhile.
        $pool = Lrpm\Pool::start(Echoer::class, 4, [], ['queue' => 1000]);
        $calls = 10 * $n;
        $t0 = hrtime(true);
        $pending = [];
        for ($i = 0; $i < $calls; $i++) {
            $pending[] = $pool->call('echo', $i);
            if (count($pending) >= 256) {
                foreach ($pending as $handle) {
                    $handle->wait();
                }
                $pending = [];
            }
        }
        foreach ($pending as $handle) {
            $handle->wait();
        }
        $seconds = (hrtime(true) - $t0) / 1e9;
        $pss = [];
        foreach ($pool->pids() as $pid) {
            preg_match('/^Pss:\s+(\d+) kB/m', (string) @file_get_contents("/proc/{$pid}/smaps_rollup"), $m);
            $pss[] = (int) ($m[1] ?? 0);
        }
        $pool->stop();
        file_put_contents(getenv('RESULT'), json_encode(['first_line_ms' => $first, 'round_trip_ms' => $round,
            'pcntl_round_trip_ms' => $raw, 'pool_calls' => $calls, 'pool_seconds' => $seconds,
            'pool_helper_pss_kb' => $pss]));
    }
}
final class Echoer
{
    public function echo(int $n): int
    {
        return $n;
    }
}
return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        return ['tasks' => ['name' => 'tasks', 'workerClass' => 'TaskBench', 'mtime' => 1, 'workerConfig' => []]];
    }
};
"""


RELEASE_FARM = r"""<?php
// A cold app's start(): 1,000,000 short strings built and dropped. The
// worker's private dirty memory right after (before the runner gives the
// free heap back) and a second later go to RESULT.
final class Churn implements Lrpm\Worker
{
    private float $at = 0.0;
    private int $before = 0;
    private static function dirty(): int
    {
        preg_match('/^Private_Dirty:\s+(\d+) kB/m', (string) file_get_contents('/proc/self/smaps_rollup'), $m);
        return (int) $m[1];
    }
    public function start(array $job): void
    {
        $built = [];
        for ($i = 0; $i < 1000000; $i++) {
            $built[] = str_repeat('x', 16) . $i;
        }
        unset($built);
        $this->before = self::dirty();
        $this->at = microtime(true);
    }
    public function cycle(): void
    {
        if ($this->at > 0 && microtime(true) - $this->at >= 1.0) {
            file_put_contents(getenv('RESULT'), json_encode(['before_kb' => $this->before, 'after_kb' => self::dirty()]));
            $this->at = 0;
        }
        usleep(50000);
    }
}
return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        return ['churn' => ['name' => 'churn', 'workerClass' => 'Churn', 'mtime' => 1, 'workerConfig' => []]];
    }
};
"""


def run_farm_until_result(farm_text: str, prefix: str, env_extra: dict) -> dict:
    """Runs a single-file farm until it writes the JSON file named by its
    RESULT variable, stops it, and returns what it wrote."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (work / "farm.php").write_text(farm_text)
        result_file = work / "result.json"
        env = dict(os.environ, RESULT=str(result_file), **env_extra)
        with open(os.devnull, "wb") as devnull:
            proc = subprocess.Popen([str(LRPM_HOST), "--control-socket", str(work / "control.sock"),
                                     str(work / "farm.php")], stdout=devnull, stderr=devnull, env=env, cwd=work)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not result_file.exists() or not result_file.read_text().endswith("}"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the farm of {prefix} did not finish")
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return json.loads(result_file.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_release() -> dict:
    """Private dirty memory of a worker whose start() built and dropped
    1,000,000 short strings: right after start() dropped them, and a
    second after the runner gave the free heap back."""
    return run_farm_until_result(RELEASE_FARM, "lrpm-bench-release-", {})


def measure_tasks(tasks: int) -> dict:
    """Lrpm\Task's cost in one worker: medians (and p90) of the time from
    Task::run() to the task's first line and of the whole round trip with a
    small answer, next to a pcntl_fork() + socket pair + exit() round trip
    in the same worker and run."""
    data = run_farm_until_result(TASK_FARM, "lrpm-bench-tasks-", {"TASKS": str(tasks)})

    def summary(values: list) -> dict:
        ordered = sorted(values)
        return {"median": statistics.median(ordered), "p90": ordered[int(len(ordered) * 0.9)], "n": len(ordered)}

    first, round_trip, raw = (summary(data[k]) for k in ("first_line_ms", "round_trip_ms", "pcntl_round_trip_ms"))
    return {"tasks": tasks, "first_line_ms": first, "round_trip_ms": round_trip, "pcntl_round_trip_ms": raw,
            "tasks_per_second": 1000 / round_trip["median"],
            "ratio_to_pcntl": round_trip["median"] / raw["median"],
            "pool_calls_per_second": data["pool_calls"] / data["pool_seconds"],
            "pool_helper_pss_kb": statistics.median(data["pool_helper_pss_kb"])}


MESSENGER = ROOT / "examples" / "messenger"


class Redis:
    """A redis-server on a free loopback port in `work`, and one RESP connection to it."""

    def __init__(self, work: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.file = self.sock.makefile("rb")
                if self.command("PING") == "PONG":
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not come up")
                time.sleep(0.02)

    def command(self, *args: str):
        out = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        self.sock.sendall(out)
        return self.read()

    def read(self):
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:].decode()
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            data = self.file.read(int(rest) + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self.read() for _ in range(int(rest))] if int(rest) >= 0 else None
        raise RuntimeError(f"bad reply {line!r}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def http_get_ms(port: int, path: str) -> tuple[float, int]:
    """One GET on loopback: (milliseconds, body bytes)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200, (path, response.status, body[:200])
    return (time.monotonic() - started) * 1000, len(body)


def measure_dashboard(workers: int, seconds: float) -> dict:
    """The supervisor's CPU on a farm of `workers` idle workers, first with
    nobody looking, then with the dashboard open: what the page asks for
    (/api/status every 2 s, /api/farm every 5 s), from a poller thread, with
    each request's latency and the control socket's meanwhile."""
    with Farm("lrpm-host-dashboard", workers, framework=False, sleep_ms=SCALE_CYCLE_SLEEP_MS) as farm:
        farm.start_and_wait()
        host = farm.contender
        pid = host.supervisor_pids()["supervisor"]
        http_get_ms(host.port, "/")
        time.sleep(2)
        cpu0 = cpu_seconds(pid)
        time.sleep(seconds)
        idle_cpu = cpu_seconds(pid) - cpu0
        latencies = {"/api/status": [], "/api/farm": []}
        sizes = {}
        control_ms = []
        stop = threading.Event()

        def page() -> None:
            next_farm = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_farm:
                    ms, size = http_get_ms(host.port, "/api/farm")
                    latencies["/api/farm"].append(ms)
                    sizes["/api/farm"] = size
                    next_farm = now + 5.0
                ms, size = http_get_ms(host.port, "/api/status")
                latencies["/api/status"].append(ms)
                sizes["/api/status"] = size
                stop.wait(2.0)

        poller = threading.Thread(target=page, daemon=True)
        cpu1 = cpu_seconds(pid)
        poller.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            host.control("version")
            control_ms.append((time.monotonic() - started) * 1000)
            time.sleep(0.1)
        stop.set()
        poller.join()
        open_cpu = cpu_seconds(pid) - cpu1
        host.stop()

        def summary(values: list[float]) -> dict:
            ordered = sorted(values)
            return {"n": len(values), "median_ms": statistics.median(ordered),
                    "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], "max_ms": ordered[-1]}

        return {
            "workers": workers,
            "seconds": seconds,
            "supervisor_cpu_ms_per_minute_idle": idle_cpu * 1000 * 60 / seconds,
            "supervisor_cpu_ms_per_minute_page_open": open_cpu * 1000 * 60 / seconds,
            "requests": {path: summary(values) for path, values in latencies.items()},
            "bytes": sizes,
            "control_socket": summary(control_ms),
        }


def measure_messenger(contender: str, messages: int) -> dict:
    """examples/messenger's consumers, 4 of them, on `messages` published
    messages: under lrpm-host (one job, replicas 4) or as 4 php-cli
    processes running the same Symfony Worker (bin/consume.php, what
    `bin/console messenger:consume` does). Throughput is counted from the
    first message handled to the last (start-up excluded); PSS is the sum
    over the consumers (and lrpm-host's supervisor) halfway through."""
    # The example's vendor/ comes from its composer.json (offline: a path
    # repository to php/ and Debian's Symfony autoloaders).
    subprocess.run(["composer", "install", "--no-interaction", "--no-progress", "--quiet"], cwd=MESSENGER, check=True,
                   env=dict(os.environ, COMPOSER_DISABLE_NETWORK="1", COMPOSER_ALLOW_SUPERUSER="1"))
    work = Path(tempfile.mkdtemp(prefix="lrpm-bench-messenger-"))
    redis = Redis(work)
    procs: list[subprocess.Popen] = []
    try:
        dsn = f"redis://127.0.0.1:{redis.port}/messages"
        env = dict(os.environ, MESSENGER_DSN=dsn)
        subprocess.run(["/usr/bin/php", str(MESSENGER / "bin" / "publish.php"), str(messages)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        if contender == "lrpm-host":
            procs.append(subprocess.Popen(
                [str(LRPM_HOST), "--control-socket", str(work / "control.sock"), str(MESSENGER / "farm.php")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work))
        else:
            for slot in range(4):
                procs.append(subprocess.Popen(
                    ["/usr/bin/php", str(MESSENGER / "bin" / "consume.php"), f"consumer-{slot}"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work))
        started = time.monotonic()
        first = None
        pss_kb = None
        deadline = started + 600
        while True:
            handled = int(redis.command("GET", "handled") or 0)
            now = time.monotonic()
            if first is None and handled > 0:
                first = (now, handled)
            if pss_kb is None and handled >= messages // 2:
                pids = [p for proc in procs for p in [proc.pid, *process_tree(proc.pid)]]
                pss_kb = sum(smaps_rollup_kb(p).get("Pss", 0) for p in set(pids))
            if handled >= messages:
                break
            if now > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"messenger: {contender} stopped at {handled} of {messages}")
            time.sleep(0.01)
        finished = time.monotonic()
        duplicates = int(redis.command("GET", "duplicates") or 0)
        return {
            "contender": contender,
            "consumers": 4,
            "messages": messages,
            "seconds": finished - first[0],
            "messages_per_second": (messages - first[1]) / (finished - first[0]),
            "first_message_s": first[0] - started,
            "pss_kb": pss_kb,
            "duplicates": duplicates,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        redis.close()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------


def environment() -> dict:
    php = subprocess.run(["/usr/bin/php", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    supervisord = subprocess.run(["/usr/bin/supervisord", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    # Uncommitted changes to what goes into the binary or the workload.
    changes = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "csrc", "php", "build.rs", "Cargo.toml",
         "Cargo.lock", "bench/app"],
        capture_output=True, text=True,
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip(),
        "source_changes": sorted(line[3:] for line in changes.stdout.splitlines()),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "php": php,
        "supervisord": supervisord,
        "cycle_sleep_ms": CYCLE_SLEEP_MS,
    }


def stage_app() -> Path:
    """Copies bench/app to a world-readable temp folder: as root, OPcache runs
    the preload script as `nobody`, which may not reach a checkout under
    /root. php-lrpm's interfaces go into its vendor/php-lrpm, where an app
    that depends on php-lrpm has them. The copy is removed at exit."""
    staged = Path(tempfile.mkdtemp(prefix="lrpm-bench-app-"))
    atexit.register(shutil.rmtree, staged, ignore_errors=True)
    target = staged / "app"
    shutil.copytree(ROOT / "bench" / "app", target)
    (target / "vendor" / "php-lrpm").mkdir()
    for interface in ("Worker", "ConfigurationSource"):
        shutil.copy(ROOT / "php" / "interfaces" / f"PHPLRPM_{interface}.php", target / "vendor" / "php-lrpm")
    for folder in [staged, *(p for p in staged.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    for file in (p for p in target.rglob("*") if p.is_file()):
        file.chmod(0o644)
    return target


def write_result(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote bench/results/{name}.json")


def measure_scale_all(quick: bool) -> dict:
    """lrpm-host at up to 10,000 workers, one run per size; the php-cli
    contenders at 2,000 workers, or 1,000 if 2,000 fails (each try bounded by
    SCALE_OTHERS_TIMEOUT_S), and the reason of every failed try."""
    sizes = [100, 500, 1000] if quick else [1000, 2000, 5000, 10_000]
    # The largest farm, whose stop varies most, runs more than once.
    largest_runs = 1 if quick else 3
    others_tries = [200] if quick else [2000, 1000]
    rows, attempts = [], []
    for count in sizes:
        runs = largest_runs if count == sizes[-1] else 1
        for run in range(runs):
            log(f"scale: lrpm-host, {count} workers (run {run + 1}/{runs})")
            row = measure_scale("lrpm-host", count, timeout_s=START_TIMEOUT_S)
            rows.append(dict(row, contender="lrpm-host", run=run))
            log(f"scale: lrpm-host, {count} workers up in {row['up_s']:.1f} s, stopped in {row['stop_s']:.1f} s "
                f"({row['stop_timeouts_logged']} stop timeouts logged)")
    for name in ("supervisord", "fork-parent"):
        for count in others_tries:
            log(f"scale: {name}, {count} workers")
            try:
                row = measure_scale(name, count, timeout_s=SCALE_OTHERS_TIMEOUT_S)
            except (TimeoutError, RuntimeError, OSError) as exc:
                log(f"scale: {name} failed at {count} workers: {exc}")
                attempts.append({"contender": name, "workers": count, "error": str(exc)})
                continue
            rows.append(dict(row, contender=name, run=0))
            attempts.append({"contender": name, "workers": count, "error": None})
            log(f"scale: {name}, {count} workers up in {row['up_s']:.1f} s, stopped in {row['stop_s']:.1f} s")
            break
    return {
        "sizes": sizes,
        "others_tried": others_tries,
        "cycle_sleep_ms": SCALE_CYCLE_SLEEP_MS,
        "stop_watch_deadline_s": STOP_WATCH_DEADLINE_S,
        "fork_budget": source_constant("src/supervisor/mod.rs", "FORK_BUDGET"),
        "cpus": os.cpu_count(),
        "rows": rows,
        "attempts": attempts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repetitions, for trying the harness out")
    parser.add_argument("--only", nargs="+", choices=["memory", "spawn", "reaction", "loop", "idle", "output",
                                                         "sharing", "upgrade", "scale", "messenger", "tasks",
                                                         "dashboard"])
    args = parser.parse_args()
    if not LRPM_HOST.exists():
        sys.exit(f"{LRPM_HOST} is missing: run `make build` first")
    # 500 workers under supervisord hold three pipes each.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    global APP
    APP = stage_app()
    quick = args.quick
    measures = args.only or ["memory", "spawn", "reaction", "loop", "idle", "output", "sharing", "upgrade", "scale",
                             "messenger", "tasks", "dashboard"]
    sizes = [10, 50, 100] if quick else [10, 50, 100, 500]
    runs = 1 if quick else 3
    parameters = {"quick": quick, "runs": runs}
    env = dict(environment(), **parameters)
    if args.only and (RESULTS / "environment.json").exists():
        # A partial run: environment.json keeps describing the run of the
        # other results; each result this run writes names its own commit.
        log("partial run: bench/results/environment.json kept")
    else:
        write_result("environment", env)
    # Which commit each result ran on (the memory loops below count runs in `n`).
    stamp = {key: env[key] for key in ("date", "commit", "source_changes", "quick")}

    if "memory" in measures:
        rows = []
        for n in range(runs):
            for count in sizes:
                for name in CONTENDERS:
                    log(f"memory: {name} with {count} workers (run {n + 1}/{runs})")
                    rows.append(dict(measure_memory(name, count, settle_s=2.0), contender=name, run=n))
        # The empty-worker floor: what the host itself costs per worker.
        floor_sizes = [10, 100]
        floor_rows = []
        for n in range(runs):
            for count in floor_sizes:
                for name in ("lrpm-host", "lrpm-host-no-zygote"):
                    log(f"memory: {name} with {count} empty workers (run {n + 1}/{runs})")
                    floor_rows.append(dict(measure_memory(name, count, settle_s=2.0, framework=False), contender=name,
                                           run=n))
        write_result("memory", {"sizes": sizes, "runs": runs, "rows": rows, "floor_sizes": floor_sizes,
                                "floor_rows": floor_rows, "run": stamp})

    if "spawn" in measures:
        spawns = 100 if quick else 1000
        result = {}
        for name in CONTENDERS:
            log(f"spawn: {name}, {spawns} spawns")
            result[name] = measure_spawns(name, spawns)
        write_result("spawn", result)

    if "reaction" in measures:
        kills = 20 if quick else 100
        result: dict[str, dict] = {"framework": {}, "empty start()": {}}
        for workload, framework in (("framework", True), ("empty start()", False)):
            for name in CONTENDERS:
                log(f"reaction: {name}, {kills} kills, {workload}")
                result[workload][name] = measure_reaction(name, kills, framework)
        write_result("reaction", result)

    if "loop" in measures:
        log("loop overhead")
        write_result("loop", dict(measure_loop(1_000_000, 21_000_000 if quick else 41_000_000, runs=3 if quick else 5),
                                  run=stamp))

    if "idle" in measures:
        seconds = 10.0 if quick else 60.0
        result = []
        for n in range(runs):
            log(f"idle: all contenders, 100 workers each, {seconds:.0f} s (run {n + 1}/{runs})")
            result.append(measure_idle(seconds, 100))
        write_result("idle", {"runs": result})

    if "output" in measures:
        seconds = 3.0 if quick else 10.0
        rows = []
        for n in range(runs):
            for workers in (2, 50):
                for mode in ("capture", "inherit"):
                    log(f"output: {workers} chatty workers, {mode} (run {n + 1}/{runs})")
                    rows.append(dict(measure_output(workers, seconds, mode), run=n))
        write_result("output", {"runs": runs, "rows": rows, "run": stamp})

    if "sharing" in measures:
        rows = []
        for name in ("lrpm-host", "lrpm-host-no-zygote"):
            log(f"sharing: {name}, 20 workers, 1000 cycles using the bus")
            rows.append(dict(measure_sharing(name, 20, 1000), contender=name))
        write_result("sharing", {"rows": rows, "run": stamp})

    if "upgrade" in measures:
        rows = []
        for name in ("lrpm-host", "lrpm-host-no-zygote"):
            log(f"upgrade: {name}, 100 workers")
            rows.append(dict(measure_upgrade(name, 100), contender=name))
        write_result("upgrade", {"rows": rows, "run": stamp})

    if "scale" in measures:
        write_result("scale", dict(measure_scale_all(quick), run=stamp))

    if "messenger" in measures:
        messages = 20_000 if quick else 100_000
        rows = []
        for n in range(runs):
            for name in ("lrpm-host", "php-cli"):
                log(f"messenger: {name}, 4 consumers, {messages} messages (run {n + 1}/{runs})")
                rows.append(dict(measure_messenger(name, messages), run=n))
                log(f"messenger: {name}: {rows[-1]['messages_per_second']:.0f} messages/s, "
                    f"PSS {rows[-1]['pss_kb'] / 1024:.1f} MB")
        write_result("messenger", {"runs": runs, "messages": messages, "rows": rows, "run": stamp})

    if "tasks" in measures:
        count = 200 if quick else 2000
        rows = []
        for n in range(runs):
            log(f"tasks: {count} tasks and {count} pcntl_fork round trips in one worker (run {n + 1}/{runs})")
            rows.append(dict(measure_tasks(count), release=measure_release(), run=n))
            log(f"tasks: first line {rows[-1]['first_line_ms']['median']:.3f} ms, round trip "
                f"{rows[-1]['round_trip_ms']['median']:.3f} ms, pcntl_fork {rows[-1]['pcntl_round_trip_ms']['median']:.3f} ms; "
                f"pool: {rows[-1]['pool_calls_per_second']:,.0f} calls/s, {rows[-1]['pool_helper_pss_kb']:.0f} kB PSS per helper")
        write_result("tasks", {"runs": runs, "rows": rows, "run": stamp})

    if "dashboard" in measures:
        workers, seconds = (200, 10.0) if quick else (1000, 30.0)
        rows = []
        for n in range(runs):
            log(f"dashboard: {workers} workers, {seconds:.0f} s unwatched then {seconds:.0f} s with the page open "
                f"(run {n + 1}/{runs})")
            rows.append(dict(measure_dashboard(workers, seconds), run=n))
            log(f"dashboard: supervisor {rows[-1]['supervisor_cpu_ms_per_minute_idle']:.0f} -> "
                f"{rows[-1]['supervisor_cpu_ms_per_minute_page_open']:.0f} ms CPU per minute; /api/status "
                f"{rows[-1]['requests']['/api/status']['median_ms']:.1f} ms, {rows[-1]['bytes']['/api/status']:,} bytes")
        write_result("dashboard", {"runs": runs, "rows": rows, "run": stamp})


if __name__ == "__main__":
    main()
