//! `--cluster`: three whole farms (supervisor, agent, zygote, workers) on one
//! real etcd on loopback, the same configuration in each. Every slot of a
//! clustered job runs on exactly one live member, an every-host job on
//! each; a member killed with SIGKILL hands its units to the others after
//! the TTL; a member that comes back takes its share again; etcd gone stops
//! every unit (every-host jobs go on) and its return brings them back. No
//! unit is ever seen running on two members.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lrpm_host::cluster::placement::{Candidate, Placement, Rendezvous};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const TTL: u64 = 4;
const UNITS: u32 = 9;

/// Job 1: the units; job 2: every-host; job 3: one unit that reports its
/// fencing token to `shared` (the same path on every member).
fn cluster_jobs(farm_dir: &TempDir, shared: &TempDir) -> Value {
    let log = farm_dir.join("events.log");
    let identity = json!({
        "name": "identity",
        "workerClass": "FarmFixture\\IdentityWorker",
        "mtime": 1,
        "workerConfig": {"log": log.to_string_lossy(), "tag": "3", "out": shared.join("3.json").to_string_lossy()},
    });
    json!({
        "1": job(&log, "1", 1, json!({}), json!({"replicas": UNITS})),
        "2": job(&log, "2", 1, json!({}), json!({"placement": "every-host"})),
        "3": identity,
    })
}

fn member(name: &str, etcd_port: u16, shared: &TempDir) -> Farm {
    let dir = TempDir::new(&format!("cluster_{name}"));
    write_atomically(&dir.join("jobs.json"), cluster_jobs(&dir, shared).to_string().as_bytes());
    let options = FarmOptions {
        extra_args: [
            "--cluster",
            &format!("etcd://127.0.0.1:{etcd_port}/test-farm"),
            "--cluster-member",
            name,
            "--cluster-ttl",
            &TTL.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let farm = Farm::start_in(dir, options);
    farm.wait_answering(secs(20.0));
    farm
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

/// Where rendezvous placement puts job 1's units over `members`.
fn expected(members: &[&str]) -> BTreeMap<String, String> {
    let candidates: Vec<Candidate> = members.iter().map(|m| Candidate { name: m.to_string(), weight: 1.0 }).collect();
    (0..UNITS)
        .map(|slot| {
            let unit = format!("1#{slot}");
            let owner = Rendezvous.owner(&unit, &candidates).unwrap().name.clone();
            (unit, owner)
        })
        .collect()
}

/// The units each live member runs; panics if one runs on two members.
fn placement(members: &BTreeMap<&str, &Farm>) -> BTreeMap<String, String> {
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, farm) in members {
        for unit in running(farm, "1") {
            if let Some(other) = owner.insert(unit.clone(), name.to_string()) {
                panic!("unit {unit} runs on {other} and on {name} at once");
            }
        }
    }
    owner
}

/// Waits until every unit runs on one of `members` (checking, at every
/// look, that none runs twice) and each member runs the every-host job.
fn wait_all_placed(members: &BTreeMap<&str, &Farm>, what: &str) -> BTreeMap<String, String> {
    let any = members.values().next().unwrap();
    any.wait_for(secs(60.0), what, || {
        let owners = placement(members);
        let local = members.values().all(|farm| running(farm, "2").len() == 1);
        (owners.len() == UNITS as usize && local).then_some(owners)
    })
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
    for name in ["a", "b", "c"] {
        assert!(owners.values().any(|o| o == name), "placement gives member {name} no unit: {owners:?}");
    }

    // Job 3's worker got the claim's fencing token, in $_SERVER and its
    // environment: the number its member logged when it took the unit.
    let report = a.wait_for(secs(20.0), "job 3's report", || {
        serde_json::from_str::<Value>(&std::fs::read_to_string(shared.join("3.json")).ok()?).ok()
    });
    let claims: Vec<String> = all
        .values()
        .flat_map(|farm| {
            farm.stderr()
                .lines()
                .filter_map(|l| {
                    Some(
                        l.split_once("job 3: this member now runs the unit (claim ")?
                            .1
                            .trim_end_matches(')')
                            .to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(claims.len(), 1, "job 3 was claimed once: {claims:?}");
    assert_eq!(report["fencingToken"], json!(claims[0]), "{report}");
    assert_eq!(report["fencingTokenEnv"], json!(claims[0]), "{report}");

    // Stable: the same placement a while later, never a unit twice.
    for _ in 0..10 {
        assert_eq!(placement(&all), owners);
        std::thread::sleep(Duration::from_millis(100));
    }

    // An in-place upgrade would end the agent's link: refused, nothing moves.
    let reply = a.request_waiting("upgrade", secs(30.0)).unwrap();
    assert!(reply.starts_with("error: upgrade refused: not available with --cluster"), "{reply}");
    assert_eq!(placement(&all), owners);

    // b dies without a word: its units go to a and c once its lease ends.
    b.signal(Signal::SIGKILL);
    b.wait_exit(secs(10.0));
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

    // etcd goes away: no member can prove its claims, so every unit stops;
    // the every-host job runs on.
    etcd.stop();
    a.wait_for(secs(30.0), "every unit to stop without etcd", || {
        all.values().all(|farm| running(farm, "1").is_empty()).then_some(())
    });
    assert!(all.values().all(|farm| running(farm, "2").len() == 1), "every-host jobs stopped too");
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
}
