//! `--cluster`: whole farms (supervisor, agent, zygote, workers) on one real
//! etcd on loopback, the same configuration in each. Every slot of a
//! clustered job runs on exactly one live member, an every-host job on
//! each; `status`, `cluster` and `metrics` say who runs what; a member
//! killed with SIGKILL hands its units to the others after the TTL; a
//! member that comes back takes its share again; a fourth member takes the
//! units placement gives it and no other moves; `drain` and SIGTERM hand a
//! member's units over at once (its TTL is a minute); a member whose agent
//! is frozen stops its units; etcd gone stops every unit (every-host jobs
//! go on) and its return brings them back. `lrpmctl upgrade` of a member
//! moves nothing: its agent, lease and claims outlive the exec. No unit is ever seen running on
//! two members, neither in the status documents nor in the workers' own
//! shared log of starts and exits, and a unit's fencing token grows at
//! every new owner.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lrpm_host::cluster::placement::{Candidate, Placement, Rendezvous};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const TTL: u64 = 4;
/// Jobs 1 to 30 run one process each, job 31 four (`replicas`): 34 units.
const SINGLE_JOBS: u32 = 30;
const REPLICAS: u32 = 4;
const UNITS: usize = SINGLE_JOBS as usize + REPLICAS as usize;

/// Every unit of jobs 1 to 31 (`7#0`, `31#3`).
fn all_units() -> Vec<String> {
    let single = (1..=SINGLE_JOBS).map(|id| format!("{id}#0"));
    single.chain((0..REPLICAS).map(|slot| format!("31#{slot}"))).collect()
}

fn unit_job_ids() -> Vec<String> {
    (1..=SINGLE_JOBS + 1).map(|id| id.to_string()).collect()
}

/// Jobs 1 to 31: the units, logging to `shared`; job "e": every-host;
/// job "id": one more unit that reports its fencing token to `shared`
/// (the same path on every member).
fn cluster_jobs(farm_dir: &TempDir, shared: &TempDir) -> Value {
    let log = farm_dir.join("events.log");
    let units_log = shared.join("units.log");
    let identity = json!({
        "name": "identity",
        "workerClass": "FarmFixture\\IdentityWorker",
        "mtime": 1,
        "workerConfig": {"log": log.to_string_lossy(), "tag": "id", "out": shared.join("id.json").to_string_lossy()},
    });
    let mut jobs = serde_json::Map::new();
    for id in unit_job_ids() {
        let replicas = if id == "31" { REPLICAS } else { 1 };
        let tagged = json!({"tagSlot": true, "tagToken": true});
        jobs.insert(id.clone(), job(&units_log, &id, 1, tagged, json!({"replicas": replicas})));
    }
    jobs.insert("e".into(), job(&log, "e", 1, json!({}), json!({"placement": "every-host"})));
    jobs.insert("id".into(), identity);
    Value::Object(jobs)
}

fn member(name: &str, etcd_port: u16, shared: &TempDir) -> Farm {
    member_with_ttl(name, etcd_port, shared, TTL)
}

fn member_with_ttl(name: &str, etcd_port: u16, shared: &TempDir, ttl: u64) -> Farm {
    let dir = TempDir::new(&format!("cluster_{name}"));
    write_atomically(&dir.join("jobs.json"), cluster_jobs(&dir, shared).to_string().as_bytes());
    start_cluster_member(dir, etcd_port, "test-farm", name, ttl)
}

/// The slots of `id` that run on `farm` now ("1#4"), from its status.
fn running(farm: &Farm, id: &str) -> BTreeSet<String> {
    let Some(status) = farm.try_status() else { return BTreeSet::new() };
    let slots = status[id]["state"]["slots"].as_array().cloned().unwrap_or_default();
    slots
        .into_iter()
        .filter(|slot| slot["status"] == "running")
        .filter_map(|slot| Some(format!("{id}#{}", slot["slot"].as_u64()?)))
        .collect()
}

/// The units of jobs 1 to 31 that run on `farm` now.
fn running_units(farm: &Farm) -> BTreeSet<String> {
    unit_slots(farm).into_iter().filter(|(_, slot)| slot["status"] == "running").map(|(unit, _)| unit).collect()
}

/// The slots of jobs 1 to 31 in `farm`'s status, by unit.
fn unit_slots(farm: &Farm) -> Vec<(String, Value)> {
    let Some(status) = farm.try_status() else { return Vec::new() };
    unit_job_ids()
        .into_iter()
        .flat_map(|id| {
            let slots = status[&id]["state"]["slots"].as_array().cloned().unwrap_or_default();
            slots.into_iter().map(move |slot| (format!("{id}#{}", slot["slot"]), slot))
        })
        .collect()
}

/// Where rendezvous placement puts the units over `members`.
fn expected(members: &[&str]) -> BTreeMap<String, String> {
    let candidates: Vec<Candidate> = members.iter().map(|m| Candidate { name: m.to_string(), weight: 1.0 }).collect();
    all_units()
        .into_iter()
        .map(|unit| {
            let owner = Rendezvous.owner(&unit, &candidates).unwrap().name.clone();
            (unit, owner)
        })
        .collect()
}

/// The units each live member runs; panics if one runs on two members.
///
/// The members' documents are read one after the other, so a unit that
/// moves from a member read early to one read late shows on both. It is
/// read again in the other order, where such a move cannot show twice: a
/// unit on two members in both readings runs twice; one that shows twice
/// in one reading only is read again. (Overlaps shorter than a reading
/// are the shared log's to catch: `check_runs`.)
fn placement(members: &BTreeMap<&str, &Farm>) -> BTreeMap<String, String> {
    let read = |order: &[(&&str, &&Farm)]| {
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        let mut twice: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (name, farm) in order {
            for unit in running_units(farm) {
                if let Some(other) = owner.insert(unit.clone(), name.to_string()) {
                    twice.insert(unit, (other, name.to_string()));
                }
            }
        }
        (owner, twice)
    };
    loop {
        let forward: Vec<(&&str, &&Farm)> = members.iter().collect();
        let (owner, twice) = read(&forward);
        if twice.is_empty() {
            return owner;
        }
        let backward: Vec<(&&str, &&Farm)> = forward.iter().rev().copied().collect();
        let (_, again) = read(&backward);
        for (unit, (first, second)) in &twice {
            assert!(!again.contains_key(unit), "unit {unit} runs on {first} and on {second} at once, in two readings");
        }
    }
}

/// Waits until every unit runs on one of `members` (checking, at every
/// look, that none runs twice) and each member runs the every-host job.
fn wait_all_placed(members: &BTreeMap<&str, &Farm>, what: &str) -> BTreeMap<String, String> {
    let any = members.values().next().unwrap();
    any.wait_for(secs(60.0), what, || {
        let owners = placement(members);
        let local = members.values().all(|farm| running(farm, "e").len() == 1);
        (owners.len() == UNITS && local).then_some(owners)
    })
}

/// One worker process of a unit, from the shared log: when it started and
/// (unless it was killed outright) when it exited, with its claim's token.
#[derive(Debug, Clone)]
struct Run {
    unit: String,
    token: i64,
    pid: u32,
    start: f64,
    exit: Option<f64>,
    /// Its last line of any kind (a cycle every 0.25 s while it runs).
    last: f64,
}

/// Every unit worker's run, from the shared log job 1 writes to
/// ("TIME start|exit ID#SLOT@TOKEN PID").
fn runs(shared: &TempDir) -> Vec<Run> {
    let text = std::fs::read_to_string(shared.join("units.log")).unwrap_or_default();
    let mut by_pid: BTreeMap<u32, Run> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [time, event, tag, pid] = fields[..] else { panic!("a line of the shared log: {line:?}") };
        let (time, pid): (f64, u32) = (time.parse().unwrap(), pid.parse().unwrap());
        let (unit, token) = tag.split_once('@').unwrap_or_else(|| panic!("no token in {line:?}"));
        let token: i64 = token.parse().unwrap_or_else(|_| panic!("a unit ran without a fencing token: {line:?}"));
        match event {
            "start" => {
                by_pid.insert(pid, Run { unit: unit.to_string(), token, pid, start: time, exit: None, last: time });
            }
            event => {
                if let Some(run) = by_pid.get_mut(&pid) {
                    run.last = run.last.max(time);
                    if event == "exit" {
                        run.exit = Some(time);
                    }
                }
            }
        }
    }
    by_pid.into_values().collect()
}

/// No two runs of a unit overlap, and each new run of a unit has a larger
/// token than the one before. `ended`: the runs without an exit line known
/// to have been SIGKILLed (their member killed), by pid; such a run ended
/// after its last line and before its next cycle would have been logged:
/// it is taken to end at its last line, so that one seen still cycling
/// after the unit started elsewhere counts as running twice. (When it
/// really died is not observable closer: a killed member's agent may give
/// its lease back at once, in the instant its workers get their
/// PDEATHSIG, and the unit then starts elsewhere within milliseconds,
/// while the dead workers wait as zombies to be reaped.) A run with neither is still
/// going and must be the unit's last.
fn check_runs(runs: &[Run], ended: &BTreeMap<u32, f64>) {
    let mut by_unit: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        by_unit.entry(&run.unit).or_default().push(run);
    }
    for (unit, mut list) in by_unit {
        list.sort_by(|a, b| a.start.total_cmp(&b.start));
        for pair in list.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            let end =
                before.exit.or_else(|| ended.contains_key(&before.pid).then_some(before.last)).unwrap_or_else(|| {
                    panic!(
                        "unit {unit}: pid {} never ended, yet pid {} started it again: {list:?}",
                        before.pid, after.pid
                    )
                });
            assert!(end <= after.start, "unit {unit} ran twice at once: {before:?} until {end}, then {after:?}");
            if before.token != after.token {
                assert!(before.token < after.token, "unit {unit}: the fencing token went down: {list:?}");
            }
        }
    }
}

/// The pids of the units' workers that run on `farm` now.
fn unit_pids(farm: &Farm) -> Vec<u32> {
    unit_slots(farm).iter().filter_map(|(_, slot)| slot["pid"].as_u64()).map(|p| p as u32).collect()
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Waits until none of `pids` runs; the moment it saw that. A zombie has
/// ended (it runs no code): orphans of a killed member wait as zombies
/// until whoever adopted them reaps them, which may take seconds.
fn wait_gone(farm: &Farm, pids: &[u32]) -> f64 {
    farm.wait_for(secs(20.0), "the killed member's workers to be gone", || {
        pids.iter().all(|pid| procfs::is_gone(*pid as i32)).then(now_unix)
    })
}

fn cluster_view(farm: &Farm) -> Value {
    let reply = farm.request("cluster").unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("the cluster document ({e}): {reply}"))
}

#[test]
fn each_unit_runs_on_exactly_one_live_member_and_moves_when_members_and_etcd_come_and_go() {
    let _g = shared();
    let etcd_dir = TempDir::new("cluster_etcd");
    let mut etcd = Daemon::etcd(etcd_dir.path());
    let shared = TempDir::new("cluster_shared");
    let a = member("a", etcd.port, &shared);
    let b = member("b", etcd.port, &shared);
    let c = member("c", etcd.port, &shared);

    let all = BTreeMap::from([("a", &a), ("b", &b), ("c", &c)]);
    // Every member's share, as placement says (the members join one after
    // the other: the first ones run everything until the last is in).
    let owners = expected(&["a", "b", "c"]);
    a.wait_for(secs(60.0), "9 units over a, b and c as placement says", || {
        (wait_all_placed(&all, "9 units placed") == owners).then_some(())
    });
    // 34 units over 3 members: 11.3 each, with a binomial spread of 2.75
    // (rendezvous hashing is a uniform draw per unit); within three of it.
    // These names give 16, 11 and 7 (make bench-cluster's 3,000 units:
    // 962, 1,036, 1,002).
    for name in ["a", "b", "c"] {
        let share = owners.values().filter(|o| *o == name).count();
        assert!((4..=19).contains(&share), "member {name} runs {share} of {UNITS} units: {owners:?}");
    }

    // Job id's worker got the claim's fencing token, in $_SERVER and its
    // environment: the number its member logged when it took the unit
    // last (it may have moved once while the members joined).
    let claim = a.wait_for(secs(20.0), "job id on one member", || {
        let holders: Vec<&&Farm> = all.values().filter(|farm| running(farm, "id").len() == 1).collect();
        let [holder] = holders[..] else { return None };
        holder
            .stderr()
            .lines()
            .rev()
            .find_map(|l| l.split_once("job id: this member now runs the unit (claim ")?.1.strip_suffix(')'))
            .map(str::to_string)
    });
    let report = a.wait_for(secs(20.0), "job id's report with its claim's token", || {
        let report: Value = serde_json::from_str(&std::fs::read_to_string(shared.join("id.json")).ok()?).ok()?;
        (report["fencingToken"] == json!(claim)).then_some(report)
    });
    assert_eq!(report["fencingTokenEnv"], json!(claim), "{report}");
    assert_eq!(report["fencingTokenFunction"], json!(claim.parse::<i64>().unwrap()), "{report}");

    // Stable: the same placement a while later, never a unit twice.
    for _ in 0..10 {
        assert_eq!(placement(&all), owners);
        std::thread::sleep(Duration::from_millis(100));
    }

    // What each member says about it: every slot's owner in `status` (the
    // units it runs and those it does not), the members and units in
    // `cluster`, and the metrics.
    a.wait_for(secs(10.0), "a's status to name every unit's owner", || {
        let named: BTreeMap<String, String> =
            unit_slots(&a).into_iter().filter_map(|(unit, s)| Some((unit, s["owner"].as_str()?.to_string()))).collect();
        (named == owners).then_some(())
    });
    let view = a.wait_for(secs(10.0), "a's cluster view with three members", || {
        let view = cluster_view(&a);
        (view["members"].as_array()?.len() == 3).then_some(view)
    });
    assert_eq!(view["member"], "a", "{view}");
    // Settled: every unit is where placement puts it.
    let mut settled = 0;
    for unit in view["units"].as_array().unwrap() {
        assert_eq!(unit["placed"], unit["member"], "a unit not where placement puts it: {view}");
        if let Some(owner) = owners.get(unit["unit"].as_str().unwrap()) {
            assert_eq!(unit["member"], owner.as_str(), "{view}");
            settled += 1;
        }
    }
    assert_eq!(settled, UNITS, "{view}");
    assert_eq!(view["lease"]["held"], true, "{view}");
    for m in view["members"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        // Job "id"'s one unit counts too.
        let share = owners.values().filter(|o| *o == name).count() + running(all[name], "id").len();
        assert_eq!(m["units"].as_u64(), Some(share as u64), "{name}'s units in {view}");
        assert_eq!(m["me"], name == "a", "{view}");
        assert_eq!(m["draining"], false, "{view}");
    }
    let metrics = a.request("metrics").unwrap();
    assert!(metrics.lines().any(|l| l == "lrpm_cluster_members 3"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "lrpm_cluster_lease 1"), "{metrics}");
    let mine = owners.values().filter(|o| *o == "a").count() + running(&a, "id").len();
    assert!(metrics.lines().any(|l| l == format!("lrpm_cluster_units_owned {mine}")), "{metrics}");

    // An in-place upgrade (`lrpmctl upgrade`, the same binary): the agent
    // is a's child and outlives the exec like the workers, so a keeps its
    // lease and claims; its workers are recycled onto the new image where
    // they are. No unit moves meanwhile, b and c start none of a's (the
    // shared log's intervals say at the end that none ran twice).
    let agent_before = cluster_view(&a)["agentPid"].as_i64().expect("a's agent pid");
    let token_of_a_before: BTreeMap<String, Value> = unit_slots(&a)
        .into_iter()
        .filter(|(_, s)| s["status"] == "running")
        .map(|(u, s)| (u, s["fencingToken"].clone()))
        .collect();
    let pids_before = unit_pids(&a);
    assert!(!pids_before.is_empty());
    let reply = a.request_waiting("upgrade", secs(90.0)).unwrap();
    assert!(reply.starts_with("Upgrade: "), "{reply}");
    a.wait_for(secs(90.0), "a's units recycled onto the new image", || {
        for (unit, owner) in placement(&all) {
            assert_eq!(owners[&unit], owner, "unit {unit} moved during a's upgrade");
        }
        let now = unit_pids(&a);
        (now.len() == pids_before.len() && now.iter().all(|pid| !pids_before.contains(pid))).then_some(())
    });
    a.wait_stderr("taken over from the previous image", secs(10.0));
    let view = cluster_view(&a);
    assert_eq!(view["agentPid"].as_i64(), Some(agent_before), "the agent outlived the upgrade: {view}");
    assert_eq!(view["lease"]["held"], true, "{view}");
    let token_of_a_after: BTreeMap<String, Value> = unit_slots(&a)
        .into_iter()
        .filter(|(_, s)| s["status"] == "running")
        .map(|(u, s)| (u, s["fencingToken"].clone()))
        .collect();
    assert_eq!(token_of_a_after, token_of_a_before, "a's claims (and their tokens) went on through the upgrade");
    assert_eq!(placement(&all), owners);

    // b dies without a word: its units go to a and c once its lease ends.
    let killed = unit_pids(&b);
    b.signal(Signal::SIGKILL);
    b.wait_exit(secs(10.0));
    let killed_by = wait_gone(&a, &killed);
    let ended: BTreeMap<u32, f64> = killed.iter().map(|pid| (*pid, killed_by)).collect();
    let survivors = BTreeMap::from([("a", &a), ("c", &c)]);
    let after = expected(&["a", "c"]);
    a.wait_for(secs(60.0), "b's units on a and c as placement says", || {
        (wait_all_placed(&survivors, "9 units on a and c") == after).then_some(())
    });
    for (unit, owner) in &owners {
        if owner != "b" {
            assert_eq!(&after[unit], owner, "unit {unit} of a surviving member moved");
        }
    }

    // b comes back (a new process, the same name): it takes its share again.
    let b = member("b", etcd.port, &shared);
    let all = BTreeMap::from([("a", &a), ("b", &b), ("c", &c)]);
    a.wait_for(secs(60.0), "b to run its units again", || {
        (wait_all_placed(&all, "9 units again") == owners).then_some(())
    });

    // A fourth member joins: it takes what placement gives it, and no other
    // unit moves. Its lease lasts a minute: only a drain hands its units
    // over sooner.
    let d = member_with_ttl("d", etcd.port, &shared, 60);
    let four = BTreeMap::from([("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
    let with_d = expected(&["a", "b", "c", "d"]);
    a.wait_for(secs(60.0), "d to run its share", || {
        (wait_all_placed(&four, "9 units on four") == with_d).then_some(())
    });
    for (unit, owner) in &owners {
        if &with_d[unit] != owner {
            assert_eq!(with_d[unit], "d", "unit {unit} moved between members that were there before d");
        }
    }

    // `drain`: d's units go back to the others at once; its every-host job
    // stays; the others see it draining; `undrain` brings its share back.
    let reply = d.request("drain").unwrap();
    assert!(reply.starts_with("Draining"), "{reply}");
    a.wait_for(secs(30.0), "d's units back on a, b and c", || {
        (wait_all_placed(&four, "9 units, none on d") == owners).then_some(())
    });
    a.wait_for(secs(10.0), "a to see d draining", || {
        let view = cluster_view(&a);
        view["members"].as_array()?.iter().any(|m| m["name"] == "d" && m["draining"] == true).then_some(())
    });
    let view = cluster_view(&d);
    assert_eq!(view["draining"], "lrpmctl drain", "{view}");
    let reply = d.request("undrain").unwrap();
    assert!(reply.starts_with("Undrained"), "{reply}");
    a.wait_for(secs(30.0), "d to take its share again", || {
        (wait_all_placed(&four, "9 units on four again") == with_d).then_some(())
    });

    // SIGTERM: d drains on its way out. Its units run elsewhere long before
    // its minute-long lease could have ended, and it exits cleanly.
    d.signal(Signal::SIGTERM);
    a.wait_for(secs(40.0), "d's units on a, b and c after its SIGTERM", || {
        (wait_all_placed(&all, "9 units after d left") == owners).then_some(())
    });
    assert_eq!(d.wait_exit(secs(30.0)).code(), Some(0), "{}", d.diagnostics());
    assert!(d.stderr().contains("draining this member (lrpm-host is shutting down)"), "{}", d.diagnostics());

    // c's agent freezes (as a partition would leave it): c's supervisor stops
    // its units at half the TTL, before its lease can end; the others take
    // them once it has; the agent thawed, c takes its share again.
    let agent = cluster_view(&c)["agentPid"].as_i64().expect("c's agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), Signal::SIGSTOP).unwrap();
    let without_c = expected(&["a", "b"]);
    a.wait_for(secs(60.0), "c's units on a and b while c's agent is frozen", || {
        (wait_all_placed(&all, "9 units on a and b") == without_c).then_some(())
    });
    assert!(c.stderr().contains("the lease was not renewed for half its TTL"), "{}", c.diagnostics());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), Signal::SIGCONT).unwrap();
    a.wait_for(secs(60.0), "c to run its units again", || {
        (wait_all_placed(&all, "9 units after c's agent thawed") == owners).then_some(())
    });

    // etcd goes away: no member can prove its claims, so every unit stops;
    // the every-host job runs on.
    etcd.stop();
    a.wait_for(secs(30.0), "every unit to stop without etcd", || {
        all.values().all(|farm| running_units(farm).is_empty()).then_some(())
    });
    assert!(all.values().all(|farm| running(farm, "e").len() == 1), "every-host jobs stopped too");
    for farm in all.values() {
        assert!(farm.stderr().contains("every unit of this member stops"), "{}", farm.diagnostics());
    }
    etcd.restart_etcd(etcd_dir.path());
    wait_all_placed(&all, "the units back with etcd");

    for farm in all.values() {
        farm.signal(Signal::SIGTERM);
    }
    for farm in all.values() {
        assert_eq!(farm.wait_exit(secs(30.0)).code(), Some(0), "{}", farm.diagnostics());
    }

    // The workers' own record: never two runs of a unit at once, and a
    // larger token at every new claim.
    let runs = runs(&shared);
    assert!(runs.len() > UNITS * 2, "the shared log has every move: {runs:?}");
    check_runs(&runs, &ended);
}
