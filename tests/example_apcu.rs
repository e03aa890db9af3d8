//! examples/apcu: APCu's segment, created at module startup in the
//! supervisor before any fork, is one cache for every worker. One worker
//! stores a table that the others read; four replicas share one rate
//! limiter; writers stopped (SIGTERM, as recycles and stops do) while they
//! overwrite big entries again and again leave the cache whole and usable
//! for the others. Not SIGKILL: a writer SIGKILLed inside apcu_store() can
//! leave APCu's lock held and every other worker blocked on it (it happened
//! in one run of three with 40 SIGKILLs: see the README's APCu caveats).
//! Needs php8.2-apcu (`make deps`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

const PER_SECOND: u64 = 40;

/// (second, slot, calls, table version, loaded by, read by) of each caller line.
fn caller_lines(stdout: &str) -> Vec<(u64, u64, u64, u64, i32, i32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("[callers#")?;
            let (slot, rest) = rest.split_once("] second ")?;
            let (second, rest) = rest.split_once(": ")?;
            let (calls, rest) = rest.split_once(" calls, ")?;
            let version = rest.split(" from table v").nth(1)?.split(' ').next()?;
            let loaded = rest.split("loaded by pid ").nth(1)?.split(',').next()?;
            let read = rest.split("read by pid ").nth(1)?.trim_end_matches(')');
            Some((
                second.parse().ok()?,
                slot.parse().ok()?,
                calls.parse().ok()?,
                version.parse().ok()?,
                loaded.parse().ok()?,
                read.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn workers_share_one_apcu_cache_and_writers_stopped_mid_write_do_not_corrupt_it() {
    let _g = shared();
    let dir = TempDir::new("example_apcu");
    std::fs::write(dir.join("jobs.json"), "{}").unwrap();
    let options = FarmOptions {
        source: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/apcu/farm.php"),
        extra_args: vec!["-d".into(), "apc.enable_cli=1".into()],
        env: vec![
            ("APCU_TABLE_EVERY".into(), "0.5".into()),
            ("APCU_PER_SECOND".into(), PER_SECOND.to_string()),
            ("APCU_CHURN_REPLICAS".into(), "2".into()),
        ],
        ..Default::default()
    };
    let farm = Farm::start_in(dir, options);

    // One worker (the loader) stores, the others read what it stored.
    let first = farm.wait_for(secs(20.0), "every caller to read the loader's table", || {
        let lines = caller_lines(&farm.stdout());
        let slots: BTreeSet<u64> = lines.iter().filter(|l| l.4 != l.5).map(|l| l.1).collect();
        (slots.len() == 4).then(|| lines.iter().map(|l| l.3).max().unwrap_or(0))
    });

    // Stop the churn workers again and again while they store 256 KB
    // entries back to back (a stop ends them after the current store).
    let mut killed = 0;
    let mut seen = BTreeSet::new();
    while killed < 40 {
        let status = farm.wait_answering(secs(10.0));
        let pids: Vec<i32> = status["churn"]["state"]["slots"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|s| s["status"] == "running")
            .filter_map(|s| s["pid"].as_i64().map(|p| p as i32))
            .filter(|p| !seen.contains(p))
            .collect();
        for pid in pids {
            // Let it write for a moment first (it writes a blob every few hundred µs).
            if farm.stdout().contains("[churn#") || killed > 0 {
                seen.insert(pid);
                if kill(Pid::from_raw(pid), Signal::SIGTERM).is_ok() {
                    killed += 1;
                }
            }
        }
        std::thread::sleep(secs(0.05));
    }

    // The others go on: new tables are stored and read, nothing is corrupt.
    let after = farm.wait_for(secs(20.0), "every caller to read a table stored after the stops", || {
        let lines = caller_lines(&farm.stdout());
        let slots: BTreeSet<u64> = lines.iter().filter(|l| l.3 > first + 4).map(|l| l.1).collect();
        (slots.len() == 4).then_some(lines)
    });
    let stdout = farm.stdout();
    assert!(!stdout.contains("CORRUPT"), "a reader saw a corrupt entry\n{stdout}\n{}", farm.diagnostics());

    // One rate limiter for the farm: the four callers together make at most
    // PER_SECOND calls in any second.
    let mut per_second: BTreeMap<u64, (u64, BTreeSet<u64>)> = BTreeMap::new();
    for (second, slot, calls, ..) in &after {
        let entry = per_second.entry(*second).or_default();
        entry.0 += calls;
        entry.1.insert(*slot);
    }
    let whole: Vec<(u64, u64)> =
        per_second.iter().filter(|(_, (_, slots))| slots.len() == 4).map(|(s, (calls, _))| (*s, *calls)).collect();
    assert!(whole.len() >= 3, "{whole:?}");
    assert!(whole.iter().all(|(_, calls)| *calls <= PER_SECOND), "more than {PER_SECOND} calls in a second: {whole:?}");
    assert!(whole.iter().any(|(_, calls)| *calls >= PER_SECOND / 2), "the callers hardly called: {whole:?}");
    farm.stop(secs(15.0));
}
