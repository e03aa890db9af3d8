#!/usr/bin/python3
"""The cluster measure (`make bench-cluster`): one farm over several
lrpm-host members on one real etcd on loopback, every member a local
process tree with the same configuration: N single-process jobs of the
bench's empty workload, each a unit.

Measured, in this order, in one run:
  bring-up        3 members started at once: until every unit ran its first
                  cycle on the member placement gives it (and how many worker
                  starts the members' joining cost on the way)
  steady state    etcd's requests per second over a quiet interval (its own
                  grpc_server_started_total; lease renewals only, no polling)
  kill -9         the member with the most units: until each of its units ran
                  a first cycle on a survivor; TTL is the floor
  control         `version` round trips on a survivor's control socket every
                  10 ms during that move
  rejoin          the killed member back: until its share ran on it again
  drain           SIGTERM to one member: until each of its units ran elsewhere
  join            a 4th member: units moved to it (about a quarter expected)

Each worker reports its first cycle() over the harness's datagram socket
with a CLOCK_MONOTONIC timestamp (bench/harness.py's EventSocket); the
member a worker ran on is read from /proc (its parent chain).

Writes bench/results/cluster.json; bench/report.py renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self, work: Path):
        self.port, peer = free_port(), free_port()
        client = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "etcd.log", "wb")
        self.proc = subprocess.Popen(
            ["etcd", "--name=bench", f"--data-dir={work / 'etcd-data'}", f"--listen-client-urls={client}",
             f"--advertise-client-urls={client}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-cluster=bench=http://127.0.0.1:{peer}", "--log-level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{client}/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("etcd did not come up")

    def requests_started(self) -> float:
        """etcd's gRPC requests so far (the JSON gateway's included)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("grpc_server_started_total{"))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Member:
    def __init__(self, name: str, work: Path, farm_php: Path, etcd: Etcd, ttl: int):
        self.name = name
        self.dir = work / name
        self.dir.mkdir(exist_ok=True)
        self.socket = self.dir / "control.sock"
        self.log = open(self.dir / "host.log", "ab")
        command = [str(harness.LRPM_HOST), "--bootstrap", str(harness.APP / "vendor/autoload.php"),
                   "--control-socket", str(self.socket), "--cluster", f"etcd://127.0.0.1:{etcd.port}/bench",
                   "--cluster-member", name, "--cluster-ttl", str(ttl), str(farm_php)]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, LRPM_LOG="warn"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def control(self, message: str, timeout: float = 10.0) -> str:
        return harness.control_exchange(self.socket, message, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout)


def member_of(pid: int, members: dict[int, str]) -> str | None:
    """The member whose supervisor `pid` descends from."""
    for _ in range(4):
        if pid in members:
            return members[pid]
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return None


class Runs:
    """First cycles, as they come, attributed to members."""

    def __init__(self, events: harness.EventSocket):
        self.events = events
        self.members: dict[int, str] = {}
        # job -> (member, at_ns) of its latest first cycle
        self.latest: dict[str, tuple[str | None, int]] = {}
        self.starts = 0

    def drain_until(self, done, timeout: float) -> int:
        """Reads events until done(self) holds; the monotonic ns it held at."""
        deadline = time.monotonic() + timeout
        while not done(self):
            event = self.events.next(deadline)
            self.starts += 1
            self.latest[event.job] = (member_of(event.pid, self.members), event.at_ns)
        return max((at for _, at in self.latest.values()), default=0)

    def read_for(self, seconds: float) -> None:
        """Reads whatever arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                event = self.events.next(deadline)
            except TimeoutError:
                return
            self.starts += 1
            self.latest[event.job] = (member_of(event.pid, self.members), event.at_ns)

    def on(self, member: str) -> set[str]:
        return {job for job, (m, _) in self.latest.items() if m == member}


def wait_placement(runs: Runs, members: list[Member], units: int, timeout: float) -> int:
    """Until every unit's latest run is on a member that owns it in etcd
    (from `cluster` on one member): the moment the last one started."""
    names = {m.name for m in members}

    def owners() -> dict[str, str]:
        """Each unit's owner, once every unit is where placement puts it."""
        doc = json.loads(members[0].control("cluster", 30))
        live = {m["name"] for m in doc["members"] if not m["draining"]}
        if live != names or any(u.get("placed") != u.get("member") for u in doc["units"]):
            # Not everyone has joined (or left) yet, or units are moving.
            return {}
        return {u["unit"].split("#")[0]: u["member"] for u in doc["units"] if u.get("member")}

    deadline = time.monotonic() + timeout
    last_check = 0.0
    while True:
        placed = {job: m for job, (m, _) in runs.latest.items() if m in names}
        if len(placed) == units and time.monotonic() - last_check > 0.5:
            last_check = time.monotonic()
            if owners() == placed and all(m.proc.poll() is None for m in members):
                return max(at for _, at in runs.latest.values())
        runs.read_for(0.2)
        if time.monotonic() > deadline:
            doc = owners()
            wrong = {j: (m, doc.get(j)) for j, m in placed.items() if doc.get(j) != m}
            raise TimeoutError(f"the placement did not settle: {len(placed)} of {units} units seen running, "
                               f"{len(doc)} claimed; not where their claim is: {dict(list(wrong.items())[:10])}")


def probe_latency(member: Member, stop: threading.Event, out: list[float], late: list[float]) -> None:
    """`version` round trips every 10 ms; `late`: how much later than asked
    this thread woke from each pause, the share of a latency that is the
    client's own wait for a CPU. As root the probing thread runs at nice
    -20 (the supervisor raises its own priority too), so that what it
    measures is the supervisor's answer, not its own turn among thousands
    of workers at nice 0; `late` says how far that worked."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
    except OSError:
        pass
    while not stop.is_set():
        started = time.monotonic()
        try:
            member.control("version", 5)
            out.append((time.monotonic() - started) * 1000)
        except OSError:
            pass
        before = time.monotonic()
        time.sleep(0.01)
        late.append(max(0.0, (time.monotonic() - before - 0.01) * 1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=3000)
    parser.add_argument("--ttl", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lrpm-bench-cluster-"))
    os.chmod(work, 0o755)
    harness.APP = harness.stage_app()
    commit = subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    env = {"commit": commit, "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpus": os.cpu_count()}
    etcd = Etcd(work)
    events = harness.EventSocket(work / "events.sock")
    jobs = harness.make_jobs(args.units, events.path, framework=False, sleep_ms=1000)
    (work / "jobs.json").write_text(json.dumps(jobs))
    farm_php = work / "farm.php"
    farm_php.write_text(f"<?php\nreturn new Bench\\JsonJobs({json.dumps(str(work / 'jobs.json'))});\n")
    members: list[Member] = []
    result: dict = {"units": args.units, "ttl_s": args.ttl, "commit": env["commit"], "date": env["date"],
                    "cpus": env["cpus"]}
    try:
        runs = Runs(events)
        started = time.monotonic_ns()
        for name in ("a", "b", "c"):
            members.append(Member(name, work, farm_php, etcd, args.ttl))
        for m in members:
            runs.members[m.pid] = m.name
        done = wait_placement(runs, members, args.units, float(os.environ.get("BENCH_SETTLE", 600)))
        result["bring_up_s"] = (done - started) / 1e9
        result["bring_up_starts"] = runs.starts
        result["shares"] = {m.name: len(runs.on(m.name)) for m in members}
        harness.log(f"bring-up: {result['bring_up_s']:.1f} s, {runs.starts} starts, shares {result['shares']}")

        time.sleep(args.ttl)
        before, t0 = etcd.requests_started(), time.monotonic()
        time.sleep(20)
        result["etcd_requests_per_s"] = (etcd.requests_started() - before) / (time.monotonic() - t0)
        harness.log(f"steady state: {result['etcd_requests_per_s']:.2f} etcd requests/s")

        victim = max(members, key=lambda m: len(runs.on(m.name)))
        moved = runs.on(victim.name)
        survivors = [m for m in members if m is not victim]
        latencies: list[float] = []
        late: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe_latency, args=(survivors[0], stop, latencies, late))
        prober.start()
        killed = time.monotonic_ns()
        victim.proc.kill()
        victim.proc.wait()
        done = runs.drain_until(lambda r: all(r.latest[j][0] in {s.name for s in survivors} for j in moved), 300)
        stop.set()
        prober.join()
        result["kill9"] = {"units": len(moved), "seconds": (done - killed) / 1e9}
        latencies.sort()
        late.sort()
        result["control_ms"] = {"samples": len(latencies), "p50": statistics.median(latencies),
                                "p99": latencies[int(len(latencies) * 0.99) - 1], "max": latencies[-1],
                                "client_late_p99": late[int(len(late) * 0.99) - 1], "client_late_max": late[-1]}
        harness.log(f"kill -9 of {victim.name}: {len(moved)} units elsewhere in {result['kill9']['seconds']:.2f} s; "
                    f"control p99 {result['control_ms']['p99']:.1f} ms")

        back = Member(victim.name, work, farm_php, etcd, args.ttl)
        runs.members[back.pid] = back.name
        members = survivors + [back]
        started = time.monotonic_ns()
        done = wait_placement(runs, members, args.units, 600)
        result["rejoin"] = {"units": len(runs.on(back.name)), "seconds": (done - started) / 1e9}
        harness.log(f"rejoin: {result['rejoin']}")

        leaving = members[0]
        moved = runs.on(leaving.name)
        stayers = members[1:]
        drained = time.monotonic_ns()
        leaving.proc.send_signal(signal.SIGTERM)
        done = runs.drain_until(lambda r: all(r.latest[j][0] in {s.name for s in stayers} for j in moved), 300)
        leaving.proc.wait(120)
        result["drain"] = {"units": len(moved), "seconds": (done - drained) / 1e9}
        harness.log(f"drain of {leaving.name}: {result['drain']}")
        members = stayers
        back = Member(leaving.name, work, farm_php, etcd, args.ttl)
        runs.members[back.pid] = back.name
        members.append(back)
        wait_placement(runs, members, args.units, 600)

        before = {job: m for job, (m, _) in runs.latest.items()}
        joiner = Member("d", work, farm_php, etcd, args.ttl)
        runs.members[joiner.pid] = joiner.name
        members.append(joiner)
        started = time.monotonic_ns()
        done = wait_placement(runs, members, args.units, 600)
        after = {job: m for job, (m, _) in runs.latest.items()}
        changed = [j for j in after if after[j] != before.get(j)]
        result["join"] = {"moved": len(changed), "to_joiner": sum(1 for j in changed if after[j] == "d"),
                          "seconds": (done - started) / 1e9}
        harness.log(f"4th member: {result['join']}")
    finally:
        for m in members:
            try:
                m.stop()
            except Exception:  # noqa: BLE001
                m.proc.kill()
        etcd.close()
        events.close()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    harness.write_result("cluster", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
