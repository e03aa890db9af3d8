#!/usr/bin/python3
"""Benchmarks lrpm-host against the usual ways of running PHP workers.

Contenders, run one after the other in this one run on this one machine:
  lrpm-host           the release binary, OPcache shared by forking
  lrpm-host-preload   the same with --preload bench/app/preload.php
  supervisord         Debian's supervisor running one `php bin/worker.php` per job
  fork-parent         bench/app/bin/fork-parent.php, a php-cli parent that forks
                      one child per job after loading nothing of the app

All of them run the same workload (bench/app/src/SymfonyWorker.php). Each
worker reports its first cycle() to the harness over a Unix datagram socket
with a CLOCK_MONOTONIC timestamp, so nothing here polls.

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
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The workload app; main() points this at a world-readable copy.
APP = ROOT / "bench" / "app"
LRPM_HOST = ROOT / "target" / "release" / "lrpm-host"
RESULTS = ROOT / "bench" / "results"
WORKLOAD = "Bench\\SymfonyWorker"
CYCLE_SLEEP_MS = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 300.0

CONTENDERS = ["lrpm-host", "lrpm-host-preload", "supervisord", "fork-parent"]


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


def private_dirty_by_mapping_kb(pid: int) -> dict[str, int]:
    """Private_Dirty of one process split into the malloc heap, anonymous
    mappings (the Zend allocator's chunks), the stack and everything else."""
    totals = {"malloc heap": 0, "anonymous (Zend heap)": 0, "stack": 0, "other": 0}
    kind = "other"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return totals
    for line in lines:
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5].strip() if len(head) > 5 else ""
            kind = {"[heap]": "malloc heap", "[stack]": "stack", "": "anonymous (Zend heap)"}.get(name, "other")
        elif line.startswith("Private_Dirty:"):
            totals[kind] += int(line.split()[1])
    return totals


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def context_switches(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


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


def make_jobs(count: int, events: Path, short_run_seconds: int = 5, framework: bool = True) -> dict[str, dict]:
    return {
        str(i): {
            "name": f"bench worker {i}",
            "workerClass": WORKLOAD,
            "mtime": 1,
            "shortRunTimeSeconds": short_run_seconds,
            "workerConfig": {"events": str(events), "id": str(i), "sleepMs": CYCLE_SLEEP_MS, "framework": framework},
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

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM to the manager, then wait for it (and so its workers) to exit."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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
        command.append(str(farm))
        env = dict(os.environ, LRPM_LOG="warn")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def control(self, message: str) -> str:
        def exchange() -> str:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(self.socket_path))
                payload = message.encode()
                client.sendall(struct.pack(">Q", len(payload)) + payload)
                header = recv_exactly(client, 8)
                return recv_exactly(client, struct.unpack(">Q", header)[0]).decode()

        return once_listening(exchange)

    def stop_job(self, job: str) -> None:
        self.control(f"stop {job}")

    def start_job(self, job: str) -> None:
        self.control(f"start {job}")

    def supervisor_pids(self) -> dict[str, int]:
        workers = {int(p) for p in self.worker_pids()}
        others = [p for p in process_tree(self.pid)[1:] if p not in workers]
        roles = {"supervisor": self.pid}
        if len(others) == 1:
            roles["config process"] = others[0]
        return roles

    def worker_pids(self) -> list[int]:
        status = json.loads(self.control("jsonstatus"))
        return [job["state"]["pid"] for job in status.values() if job["state"].get("pid")]


class LrpmHostPreload(LrpmHost):
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


CONTENDER_CLASSES = {c.name: c for c in (LrpmHost, LrpmHostPreload, Supervisord, ForkParent)}


class UnixStreamTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's Unix socket."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        path = self.path

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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

    def __init__(self, contender: str, count: int, short_run_seconds: int = 5, framework: bool = True):
        self.work = Path(tempfile.mkdtemp(prefix=f"lrpm-bench-{contender}-"))
        os.chmod(self.work, 0o755)
        self.events = EventSocket(self.work / "events.sock")
        self.jobs = make_jobs(count, self.events.path, short_run_seconds, framework)
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


def measure_memory(contender: str, count: int, settle_s: float) -> dict:
    """Total PSS of the process tree, per role; bring-up and graceful stop times."""
    with Farm(contender, count) as farm:
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
            "private_dirty_per_worker_kb": statistics.median(private_dirty),
            "private_dirty_by_mapping_kb": private_dirty_by_mapping,
            "php_heap_kb": statistics.median(e.heap for e in first.values()) / 1024,
            "php_heap_peak_kb": statistics.median(e.heap_peak for e in first.values()) / 1024,
            "up_s": up_s,
            "stop_s": stop_s,
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


# --------------------------------------------------------------------------


def environment() -> dict:
    php = subprocess.run(["/usr/bin/php", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    supervisord = subprocess.run(["/usr/bin/supervisord", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip(),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repetitions, for trying the harness out")
    parser.add_argument("--only", nargs="+", choices=["memory", "spawn", "reaction", "loop", "idle"])
    args = parser.parse_args()
    if not LRPM_HOST.exists():
        sys.exit(f"{LRPM_HOST} is missing: run `make build` first")
    # 500 workers under supervisord hold three pipes each.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    global APP
    APP = stage_app()
    quick = args.quick
    measures = args.only or ["memory", "spawn", "reaction", "loop", "idle"]
    sizes = [10, 50, 100] if quick else [10, 50, 100, 500]
    runs = 1 if quick else 3
    parameters = {"quick": quick, "runs": runs}
    write_result("environment", dict(environment(), **parameters))

    if "memory" in measures:
        rows = []
        for run in range(runs):
            for count in sizes:
                for name in CONTENDERS:
                    log(f"memory: {name} with {count} workers (run {run + 1}/{runs})")
                    rows.append(dict(measure_memory(name, count, settle_s=2.0), contender=name, run=run))
        write_result("memory", {"sizes": sizes, "runs": runs, "rows": rows})

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
        write_result("loop", measure_loop(1_000_000, 21_000_000 if quick else 41_000_000, runs=3 if quick else 5))

    if "idle" in measures:
        seconds = 10.0 if quick else 60.0
        result = []
        for run in range(runs):
            log(f"idle: all contenders, 100 workers each, {seconds:.0f} s (run {run + 1}/{runs})")
            result.append(measure_idle(seconds, 100))
        write_result("idle", {"runs": result})


if __name__ == "__main__":
    main()
