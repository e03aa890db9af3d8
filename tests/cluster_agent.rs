//! The cluster agent (`lrpm-host cluster-agent`) against a real etcd on
//! loopback, driven as its supervisor drives it: typed messages on its
//! stdin/stdout. The test plays the supervisors of 3-4 members, records
//! every unit's (member, start, stop) intervals and checks that no unit ever
//! runs on two members, that each runs where rendezvous placement puts it,
//! and that units move when a member is killed, drains, joins, or when etcd
//! goes away and comes back.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lrpm_host::cluster::messages::{encode, FromAgent, ToAgent};
use lrpm_host::cluster::placement::{Candidate, Placement, Rendezvous};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Short, so that lease expiry is quick; long enough for a busy machine to
/// renew every TTL/3.
const TTL: u64 = 4;

#[derive(Debug, Clone)]
struct Interval {
    unit: String,
    member: String,
    token: i64,
    start: Instant,
    stop: Option<Instant>,
}

#[derive(Default)]
struct Log {
    intervals: Vec<Interval>,
    lease_lost: BTreeMap<String, usize>,
    drained: BTreeSet<String>,
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Log>>;

struct Member {
    name: String,
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
}

impl Member {
    fn start(name: &str, port: u16, log: &Shared, dir: &TempDir) -> Member {
        Member::start_weighted(name, 1.0, port, log, dir)
    }

    fn start_weighted(name: &str, weight: f64, port: u16, log: &Shared, dir: &TempDir) -> Member {
        let mut child = Command::new(bin())
            .args(["cluster-agent", "--cluster", &format!("etcd://127.0.0.1:{port}/test-farm")])
            .args(["--member", name, "--ttl", &TTL.to_string(), "--weight", &weight.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(&format!("{name}.log"))).unwrap())
            .spawn()
            .expect("starting the agent");
        let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
        let stdout = child.stdout.take().unwrap();
        let (log, me, answer) = (log.clone(), name.to_owned(), stdin.clone());
        // The supervisor's part: record, and answer each Stop at once as a
        // worker that stops quickly would.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let message: FromAgent = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{me}: {e}: {line}"));
                let mut log = log.lock().unwrap();
                match message {
                    FromAgent::Run { unit, token } => log.intervals.push(Interval {
                        unit,
                        member: me.clone(),
                        token,
                        start: Instant::now(),
                        stop: None,
                    }),
                    FromAgent::Stop { unit } => {
                        stop_interval(&mut log, &me, &unit);
                        let _ = answer.lock().unwrap().write_all(&encode(&ToAgent::Stopped { unit }));
                    }
                    FromAgent::LeaseLost { .. } => *log.lease_lost.entry(me.clone()).or_default() += 1,
                    FromAgent::Drained => {
                        log.drained.insert(me.clone());
                    }
                    FromAgent::Error { message } => log.errors.push(format!("{me}: {message}")),
                    FromAgent::Lease { .. } | FromAgent::View { .. } => {}
                }
            }
        });
        Member { name: name.to_owned(), child, stdin }
    }

    fn send(&self, message: &ToAgent) {
        self.stdin.lock().unwrap().write_all(&encode(message)).expect("writing to the agent");
    }

    /// kill -9: its "workers" die with it.
    fn kill(mut self, log: &Shared) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut log = log.lock().unwrap();
        let now = Instant::now();
        for interval in log.intervals.iter_mut().filter(|i| i.member == self.name && i.stop.is_none()) {
            interval.stop = Some(now);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop_interval(log: &mut Log, member: &str, unit: &str) {
    let now = Instant::now();
    if let Some(i) = log.intervals.iter_mut().find(|i| i.member == member && i.unit == unit && i.stop.is_none()) {
        i.stop = Some(now);
    }
}

/// Unit -> member, for units running now.
fn running(log: &Shared) -> BTreeMap<String, String> {
    let log = log.lock().unwrap();
    log.intervals.iter().filter(|i| i.stop.is_none()).map(|i| (i.unit.clone(), i.member.clone())).collect()
}

fn expected(units: &[String], members: &[&str]) -> BTreeMap<String, String> {
    let candidates: Vec<_> = members.iter().map(|m| Candidate { name: m.to_string(), weight: 1.0 }).collect();
    units.iter().map(|u| (u.clone(), Rendezvous.owner(u, &candidates).unwrap().name.clone())).collect()
}

/// Never two members at once for one unit, and a larger token at every
/// new run of it.
fn assert_never_twice(log: &Shared) {
    let log = log.lock().unwrap();
    let mut by_unit: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for interval in &log.intervals {
        by_unit.entry(&interval.unit).or_default().push(interval);
    }
    for (unit, mut runs) in by_unit {
        runs.sort_by_key(|i| i.start);
        for pair in runs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let a_stop = a.stop.unwrap_or_else(|| panic!("{unit}: ran on {} and {} at once", a.member, b.member));
            assert!(a_stop <= b.start, "{unit}: started on {} before it stopped on {}", b.member, a.member);
            assert!(b.token > a.token, "{unit}: token {} after {}", b.token, a.token);
        }
    }
}

fn wait_placed(log: &Shared, want: &BTreeMap<String, String>, timeout: Duration, what: &str) -> Duration {
    let started = Instant::now();
    wait_until(
        timeout,
        what,
        || {
            let now = running(log);
            let wrong: Vec<_> = want.iter().filter(|(u, m)| now.get(*u) != Some(m)).collect();
            format!("not placed as expected: {wrong:?}\nerrors: {:?}", log.lock().unwrap().errors)
        },
        || (running(log) == *want).then_some(()),
    );
    started.elapsed()
}

#[test]
fn units_run_on_exactly_one_member_and_move_when_members_die_drain_join_or_etcd_goes() {
    let dir = TempDir::new("cluster-agent");
    let mut etcd = Daemon::etcd(dir.path());
    let log: Shared = Arc::default();
    let units: Vec<String> =
        (0..30).map(|i| format!("job-{i}#0")).chain((0..4).map(|s| format!("replicated#{s}"))).collect();
    let wanted = ToAgent::Units { units: units.clone() };

    let m1 = Member::start("m1", etcd.port, &log, &dir);
    let m2 = Member::start("m2", etcd.port, &log, &dir);
    let m3 = Member::start("m3", etcd.port, &log, &dir);
    for m in [&m1, &m2, &m3] {
        m.send(&wanted);
    }
    let took = wait_placed(&log, &expected(&units, &["m1", "m2", "m3"]), secs(30.0), "34 units over 3 members");
    eprintln!("34 units placed over 3 members in {took:?}");
    let per_member = running(&log).into_values().fold(BTreeMap::<String, usize>::new(), |mut c, m| {
        *c.entry(m).or_default() += 1;
        c
    });
    assert!(per_member.values().all(|n| (7..=15).contains(n)), "spread: {per_member:?}");

    // A member dies: after its lease's TTL its units run on the others.
    m1.kill(&log);
    let took = wait_placed(&log, &expected(&units, &["m2", "m3"]), secs(TTL as f64 + 30.0), "m1's units elsewhere");
    eprintln!("a killed member's units ran elsewhere after {took:?} (TTL {TTL} s)");

    // A member joins: it takes about a quarter... of 3 here a third; each
    // moved unit stops before it starts there.
    let m4 = Member::start("m4", etcd.port, &log, &dir);
    m4.send(&wanted);
    let took = wait_placed(&log, &expected(&units, &["m2", "m3", "m4"]), secs(30.0), "m4 takes its share");
    eprintln!("a joining member took its units in {took:?}");

    // A member drains: its units move at once, without waiting for a TTL.
    m2.send(&ToAgent::Drain);
    let took = wait_placed(&log, &expected(&units, &["m3", "m4"]), secs(30.0), "m2's units after its drain");
    eprintln!("a drained member's units ran elsewhere after {took:?}");
    wait_until(secs(10.0), "m2 says Drained", String::new, || log.lock().unwrap().drained.contains("m2").then_some(()));
    drop(m2);

    // etcd goes away: every member loses its lease and stops every unit.
    etcd.stop();
    wait_until(secs(TTL as f64 + 30.0), "every unit stopped without etcd", String::new, || {
        running(&log).is_empty().then_some(())
    });
    assert!(log.lock().unwrap().lease_lost.keys().any(|m| m == "m3"));
    // ... and comes back: so do the units, without restarting the agents.
    etcd.restart_etcd(dir.path());
    let took = wait_placed(&log, &expected(&units, &["m3", "m4"]), secs(60.0), "units back with etcd");
    eprintln!("units ran again {took:?} after etcd came back");

    assert_never_twice(&log);
    assert!(log.lock().unwrap().errors.is_empty(), "{:?}", log.lock().unwrap().errors);
    drop((m3, m4));
}

#[test]
fn a_member_name_already_in_use_is_refused_with_a_clear_error() {
    let dir = TempDir::new("cluster-agent-name");
    let etcd = Daemon::etcd(dir.path());
    let log: Shared = Arc::default();
    let first = Member::start("same", etcd.port, &log, &dir);
    first.send(&ToAgent::Units { units: vec!["a#0".into()] });
    wait_placed(&log, &BTreeMap::from([("a#0".into(), "same".into())]), secs(30.0), "the first member runs a#0");
    let mut second = Member::start("same", etcd.port, &log, &dir);
    let status = wait_until(secs(30.0), "the second agent exits", String::new, || second.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(78), "exit status of a refused member name (EX_CONFIG)");
    let errors = log.lock().unwrap().errors.clone();
    assert!(
        errors.iter().any(|e| e.contains("\"same\" is already in use by pid") && e.contains("--cluster-member")),
        "{errors:?}"
    );
    // The first member is untouched.
    assert_eq!(running(&log).get("a#0").map(String::as_str), Some("same"));
    let _ = kill(Pid::from_raw(second.child.id() as i32), Signal::SIGKILL);
}

#[test]
fn a_member_with_three_times_the_weight_runs_about_three_times_the_units() {
    let dir = TempDir::new("cluster-agent-weight");
    let etcd = Daemon::etcd(dir.path());
    let log: Shared = Arc::default();
    let units: Vec<String> = (0..400).map(|i| format!("job-{i}#0")).collect();
    let light = Member::start_weighted("light", 1.0, etcd.port, &log, &dir);
    let heavy = Member::start_weighted("heavy", 3.0, etcd.port, &log, &dir);
    for m in [&light, &heavy] {
        m.send(&ToAgent::Units { units: units.clone() });
    }
    // Every member computes the same weighted placement.
    let candidates = [Candidate { name: "light".into(), weight: 1.0 }, Candidate { name: "heavy".into(), weight: 3.0 }];
    let want: BTreeMap<String, String> =
        units.iter().map(|u| (u.clone(), Rendezvous.owner(u, &candidates).unwrap().name.clone())).collect();
    wait_placed(&log, &want, secs(60.0), "400 units over a light and a heavy member");
    // A share of 3/4: 300, with a binomial spread of 8.7; within three of it.
    let heavy_share = running(&log).values().filter(|m| *m == "heavy").count();
    assert!((274..=326).contains(&heavy_share), "the heavy member runs {heavy_share} of 400");
    assert_never_twice(&log);
    assert!(log.lock().unwrap().errors.is_empty(), "{:?}", log.lock().unwrap().errors);
    drop((light, heavy));
}
