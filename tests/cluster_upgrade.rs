//! `lrpmctl upgrade` of a clustered member in the middle of a drain: the
//! agent outlives the exec with its lease and claims, the drain goes on in
//! the new image, and a unit whose worker was still stopping (it ignores
//! SIGTERM, with a minute to stop) is killed at the exec and handed to the
//! other member once its process is gone, long before its stop timeout or
//! the lease (a minute too) could have ended. (tests/cluster.rs upgrades a
//! member that runs its share: nothing moves.)

mod support;

use std::collections::BTreeMap;

use lrpm_host::cluster::placement::{Candidate, Placement, Rendezvous};
use serde_json::{json, Value};
use support::*;

const TTL: u64 = 60;
const UNITS: u32 = 8;

/// Jobs 1 to 8 (one unit each) and job "s", whose worker ignores SIGTERM
/// and has a minute to stop; all log to `shared`'s units.log.
fn jobs(shared: &TempDir) -> Value {
    let log = shared.join("units.log");
    let tagged = json!({"tagSlot": true, "tagToken": true});
    let mut jobs = serde_json::Map::new();
    for id in 1..=UNITS {
        jobs.insert(id.to_string(), job(&log, &id.to_string(), 1, tagged.clone(), json!({})));
    }
    let stubborn = json!({"tagSlot": true, "tagToken": true, "ignoreTerm": true});
    jobs.insert("s".into(), job(&log, "s", 1, stubborn, json!({"shutdownTimeoutSeconds": 60})));
    Value::Object(jobs)
}

fn member(name: &str, etcd_port: u16, shared: &TempDir) -> Farm {
    let dir = TempDir::new(&format!("cluster_upgrade_{name}"));
    write_atomically(&dir.join("jobs.json"), jobs(shared).to_string().as_bytes());
    start_cluster_member(dir, etcd_port, "upgrade-farm", name, TTL)
}

/// Every unit's slot in `farm`'s status, by unit ("3#0", "s#0").
fn slots(farm: &Farm) -> BTreeMap<String, Value> {
    let Some(status) = farm.try_status() else { return BTreeMap::new() };
    let ids = (1..=UNITS).map(|id| id.to_string()).chain(["s".to_string()]);
    ids.flat_map(|id| {
        let list = status[&id]["state"]["slots"].as_array().cloned().unwrap_or_default();
        list.into_iter().map(move |slot| (format!("{id}#{}", slot["slot"]), slot))
    })
    .collect()
}

fn running(farm: &Farm) -> Vec<String> {
    slots(farm).into_iter().filter(|(_, s)| s["status"] == "running").map(|(unit, _)| unit).collect()
}

/// The one member placement puts `unit` on, of `members`.
fn owner(unit: &str, members: &[&str]) -> String {
    let candidates: Vec<Candidate> = members.iter().map(|m| Candidate { name: m.to_string(), weight: 1.0 }).collect();
    Rendezvous.owner(unit, &candidates).unwrap().name.clone()
}

fn cluster_view(farm: &Farm) -> Value {
    let reply = farm.request("cluster").unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("the cluster document ({e}): {reply}"))
}

/// The start lines of the shared log ("TIME start ID#SLOT@TOKEN PID"), as
/// (unit, token, pid).
fn starts(shared: &TempDir) -> Vec<(String, i64, i32)> {
    let text = std::fs::read_to_string(shared.join("units.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, "start", tag, pid] = fields[..] else { return None };
            let (unit, token) = tag.split_once('@')?;
            Some((unit.to_string(), token.parse().ok()?, pid.parse().ok()?))
        })
        .collect()
}

#[test]
fn an_upgrade_during_a_drain_keeps_the_lease_and_hands_a_unit_still_stopping_over_once_it_is_gone() {
    let _g = shared();
    let etcd_dir = TempDir::new("cluster_upgrade_etcd");
    let etcd = Daemon::etcd(etcd_dir.path());
    let shared = TempDir::new("cluster_upgrade_shared");
    // x is the member placement gives job s to, y the other one.
    let (x_name, y_name) = if owner("s#0", &["a", "b"]) == "a" { ("a", "b") } else { ("b", "a") };
    let x = member(x_name, etcd.port, &shared);
    let y = member(y_name, etcd.port, &shared);
    let everything = UNITS as usize + 1;
    x.wait_for(secs(60.0), "every unit placed over both members", || {
        let (on_x, on_y) = (running(&x), running(&y));
        let placed = on_x.iter().all(|u| owner(u, &["a", "b"]) == x_name)
            && on_y.iter().all(|u| owner(u, &["a", "b"]) == y_name);
        (placed && on_x.len() + on_y.len() == everything && on_x.contains(&"s#0".to_string())).then_some(())
    });
    let stubborn = slots(&x)["s#0"]["pid"].as_i64().expect("s's pid on x") as i32;
    let token = slots(&x)["s#0"]["fencingToken"].as_i64().expect("s's token on x");

    // x drains: its units go to y, but s ignores SIGTERM and has a minute.
    let reply = x.request("drain").unwrap();
    assert!(reply.starts_with("Draining"), "{reply}");
    x.wait_for(secs(30.0), "every unit but s on y, s stopping on x", || {
        let on_y = running(&y);
        let s_on_x = slots(&x).get("s#0").map(|s| s["status"].clone());
        (on_y.len() == UNITS as usize && s_on_x == Some(json!("stopping"))).then_some(())
    });
    let agent = cluster_view(&x)["agentPid"].as_i64().expect("x's agent pid");

    // The upgrade: s's worker is killed at the exec and, once reaped, its
    // claim goes; y starts it then, not a minute later.
    let reply = x.request_waiting("upgrade", secs(90.0)).unwrap();
    assert!(reply.starts_with("Upgrade: "), "{reply}");
    let taken = y.wait_for(secs(30.0), "y to run s", || {
        let start = starts(&shared).into_iter().find(|(unit, t, _)| unit == "s#0" && *t > token)?;
        // y started it: x's worker must be gone by now.
        assert!(procfs::is_gone(stubborn), "s runs on y while x's worker (pid {stubborn}) lives\n{}", x.diagnostics());
        Some(start)
    });
    assert!(running(&y).contains(&"s#0".to_string()), "{taken:?}");
    x.wait_stderr("taken over from the previous image", secs(10.0));

    // Same agent and lease on x; still draining, so it runs no unit.
    let view = cluster_view(&x);
    assert_eq!(view["agentPid"].as_i64(), Some(agent), "{view}");
    assert_eq!(view["lease"]["held"], true, "{view}");
    assert_eq!(view["draining"], "lrpmctl drain", "the drain goes on in the new image: {view}");
    assert!(running(&x).is_empty(), "{:?}", slots(&x));

    // Undrained, x takes its share again: the agent it took over works.
    // (s stays on y until y's worker, which ignores SIGTERM, has had its
    // minute: only the other units are waited for.)
    let reply = x.request("undrain").unwrap();
    assert!(reply.starts_with("Undrained"), "{reply}");
    x.wait_for(secs(30.0), "x to run its share again", || {
        let want: Vec<String> =
            (1..=UNITS).map(|id| format!("{id}#0")).filter(|u| owner(u, &["a", "b"]) == x_name).collect();
        let on_x = running(&x);
        want.iter().all(|u| on_x.contains(u)).then_some(())
    });
    // Every unit's starts carry increasing tokens, one owner at a time.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (unit, token, pid) in starts(&shared) {
        if let Some(before) = last.insert(unit.clone(), token) {
            assert!(token >= before, "unit {unit}: token {token} (pid {pid}) after {before}");
        }
    }
}
