//! examples/messenger: Symfony Messenger consumers (4 replicas, one Redis
//! consumer per slot) on a real redis-server started on loopback. Messages
//! are published, then consumed while workers are recycled (`lrpmctl
//! recycle`, memoryLimitMb with a handler that keeps memory, SIGTERM to
//! single workers) and the farm is stopped and started again: every message
//! is handled exactly once and none is left half-handled. Then with SIGKILL
//! in the mix: none is lost, and the messages handled twice (a redelivery
//! after a SIGKILL between the handler and the ack) are counted.
//!
//! MESSENGER_MESSAGES sets the count (default 100,000: `make test`; the
//! figures are printed as "messenger soak: ...").

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join("messenger")
}

fn messages() -> u64 {
    std::env::var("MESSENGER_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Prints straight to the test's stderr (not captured by the test harness),
/// so the figures are in `make test`'s output.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "messenger soak: {line}");
}

/// A small xorshift generator: which worker gets which action.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the consumers recorded.
#[derive(Debug, Default)]
struct Counts {
    handled: i64,
    duplicates: i64,
    inflight: usize,
    pending: i64,
}

fn counts(redis: &mut RedisClient) -> Counts {
    let pending = redis.cmd(&["XPENDING", "messages", "workers"]).expect("XPENDING");
    let pending = match pending {
        Resp::Array(Some(items)) => items[0].int(),
        _ => 0,
    };
    Counts {
        handled: redis.cmd(&["GET", "handled"]).expect("GET").int(),
        duplicates: redis.cmd(&["GET", "duplicates"]).expect("GET").int(),
        inflight: redis.cmd(&["KEYS", "inflight:*"]).expect("KEYS").array().len(),
        pending,
    }
}

/// Ids in 0..n that no handler recorded.
fn missing(redis: &mut RedisClient, n: u64) -> Vec<u64> {
    let mut missing = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let keys: Vec<String> = chunk.iter().map(|id| format!("handled:{id}")).collect();
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        let values = redis.cmd(&args).expect("MGET").array();
        missing.extend(chunk.iter().zip(values).filter(|(_, v)| *v == Resp::Bulk(None)).map(|(id, _)| *id));
    }
    missing
}

/// What the handler keeps per message: 100 KB at 100,000 messages (a
/// worker reaches memoryLimitMb 40 within a few hundred messages, well
/// inside the life the chaos gives it: memory recycles happen on a busy
/// machine too), more for fewer messages (up to 200 KB: 20 MB per batch of
/// 100, which the host must catch between batches, before PHP's
/// memory_limit of 128 MB).
fn leak_bytes() -> u64 {
    (10_000_000_000 / messages().max(1)).clamp(2_000, 200_000)
}

/// Messages handled between two chaos actions, at least (what the farm
/// handles in the 0.3 s between two actions on a quiet machine).
const CHAOS_EVERY_MESSAGES: i64 = 300;

/// The messenger farm on `dsn`, recycling on memory (the handler keeps
/// `leak_bytes()` a message).
fn start_farm(name: &str, dsn: &str) -> Farm {
    let dir = TempDir::new(name);
    std::fs::write(dir.join("jobs.json"), "{}").unwrap();
    let options = FarmOptions {
        source: example_dir().join("farm.php"),
        env: vec![
            ("MESSENGER_DSN".into(), dsn.into()),
            ("MESSENGER_MEMORY_LIMIT_MB".into(), "40".into()),
            ("MESSENGER_LEAK_BYTES".into(), leak_bytes().to_string()),
        ],
        ..Default::default()
    };
    Farm::start_in(dir, options)
}

/// Pids of the running consumers, by slot.
fn workers(farm: &Farm) -> BTreeMap<u64, i32> {
    let Some(status) = farm.try_status() else { return BTreeMap::new() };
    status["messenger"]["state"]["slots"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| s["status"] == "running")
        .filter_map(|s| Some((s["slot"].as_u64()?, s["pid"].as_i64()? as i32)))
        .collect()
}

/// `lrpm_job_recycles_total` by reason, from `lrpmctl metrics`.
fn recycles(farm: &Farm) -> BTreeMap<String, u64> {
    let text = farm.request("metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("lrpm_job_recycles_total{"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_string();
            Some((reason, l.rsplit(' ').next()?.parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn add(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (reason, n) in from {
        *into.entry(reason).or_default() += n;
    }
}

/// Stops the farm gracefully and checks that nothing is half-handled:
/// no handler was interrupted (no in-flight marker) and every message
/// received was acked (nothing pending in the group).
/// Symfony's SIGTERM listener must not hold the stop up: the consumers end
/// long before shutdownTimeoutSeconds (10 s) would make the host SIGKILL them.
fn stop_and_check(farm: &Farm, redis: &mut RedisClient, when: &str) {
    let asked = Instant::now();
    farm.stop(secs(30.0));
    assert!(asked.elapsed() < secs(10.0), "{when}: the stop took {:?}\n{}", asked.elapsed(), farm.diagnostics());
    assert!(!farm.stderr().contains("sending SIGKILL"), "{when}: a consumer ignored SIGTERM\n{}", farm.diagnostics());
    let c = counts(redis);
    assert_eq!(
        (c.inflight, c.pending),
        (0, 0),
        "{when}: half-handled messages after a graceful stop: {c:?}\n{}",
        farm.diagnostics()
    );
}

fn publish(dsn: &str, n: u64) {
    let mut cmd = Command::new("php");
    cmd.arg(example_dir().join("bin/publish.php")).arg(n.to_string()).env("MESSENGER_DSN", dsn);
    let out = run_with_timeout(cmd, secs(120.0));
    out.assert_code(0);
    report(out.stdout.trim());
}

/// Consumes `n` published messages while recycling and signalling workers;
/// with `sigkill`, SIGKILL is one of the actions. Returns the counts.
fn soak(name: &str, sigkill: bool) {
    // The example's own composer.json: the lrpm-host/lrpm package from php/
    // (a path repository) and Debian's Symfony autoloaders.
    composer_install(&example_dir());
    let n = messages();
    let dir = TempDir::new(name);
    let redis_server = RedisServer::start(dir.path());
    let dsn = format!("redis://127.0.0.1:{}/messages", redis_server.port);
    let mut redis = redis_server.client();
    publish(&dsn, n);

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut farm = start_farm(name, &dsn);
    let (mut rolling, mut sigterms, mut sigkills, mut restarts) = (0, 0, 0, 0);
    let mut recycled = BTreeMap::new();
    let mut last_action = Instant::now();
    let mut handled_at_last_action = 0;
    let deadline = Instant::now() + secs(240.0);
    loop {
        let c = counts(&mut redis);
        if c.handled as u64 >= n && c.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "timed out: {c:?} of {n}\n{}", farm.diagnostics());
        // Halfway: a graceful stop of the whole farm, checked, then a new farm.
        if restarts == 0 && c.handled as u64 >= n / 2 {
            add(&mut recycled, recycles(&farm));
            stop_and_check(&farm, &mut redis, "halfway");
            report(&format!("{name}: farm stopped at {} handled, nothing half-handled; starting it again", c.handled));
            farm = start_farm(name, &dsn);
            restarts += 1;
        }
        // Paced by progress as well as by time: on a busy machine workers
        // handle fewer messages a second, and chaos every 0.3 s alone would
        // end every worker before it could reach its memory limit.
        if last_action.elapsed() >= secs(0.3) && c.handled >= handled_at_last_action + CHAOS_EVERY_MESSAGES {
            last_action = Instant::now();
            handled_at_last_action = c.handled;
            let pids = workers(&farm);
            let actions = if sigkill { 3 } else { 2 };
            match rng.next() % actions {
                0 => {
                    // As an operator would: `lrpmctl recycle messenger`.
                    if lrpmctl(&farm.socket, &["recycle", "messenger"]).stdout.starts_with("Scheduled") {
                        rolling += 1;
                    }
                }
                action => {
                    if let Some(pid) = pids.values().nth((rng.next() % pids.len().max(1) as u64) as usize) {
                        let signal = if action == 1 { Signal::SIGTERM } else { Signal::SIGKILL };
                        if kill(Pid::from_raw(*pid), signal).is_ok() {
                            if action == 1 {
                                sigterms += 1;
                            } else {
                                sigkills += 1;
                            }
                        }
                    }
                }
            }
        }
        std::thread::sleep(secs(0.05));
    }
    let elapsed = started.elapsed().as_secs_f64();
    add(&mut recycled, recycles(&farm));
    stop_and_check(&farm, &mut redis, "at the end");

    let c = counts(&mut redis);
    let lost = missing(&mut redis, n);
    report(&format!(
        "{name}: {n} messages, 4 replicas, {:.1} s ({:.0} messages/s under the chaos, one farm stop/start included): \
         handled {}, duplicates {}, lost {}; rolling recycles asked {rolling}, SIGTERMs {sigterms}, SIGKILLs {sigkills}, \
         recycles by reason {recycled:?}",
        elapsed,
        n as f64 / elapsed,
        c.handled,
        c.duplicates,
        lost.len(),
    ));
    assert!(
        lost.is_empty(),
        "{} messages never handled, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        farm.diagnostics()
    );
    assert_eq!(c.handled as u64, n, "{c:?}");
    assert!(recycled.get("memory").copied().unwrap_or(0) >= 1, "no memoryLimitMb recycle happened: {recycled:?}");
    assert!(recycled.get("rolling").copied().unwrap_or(0) >= 1, "no rolling recycle happened: {recycled:?}");
    if sigkill {
        // A consumer reads one message at a time: a SIGKILL can leave at
        // most one handled-but-unacked message, handled again by the next
        // process in its slot.
        assert!(c.duplicates <= sigkills, "{} duplicates for {sigkills} SIGKILLs", c.duplicates);
    } else {
        assert_eq!(c.duplicates, 0, "a message was handled twice without any SIGKILL");
    }
}

#[test]
fn messenger_consumers_handle_every_message_exactly_once_through_recycles_and_sigterms() {
    let _g = exclusive();
    soak("messenger_graceful", false);
}

#[test]
fn messenger_consumers_lose_no_message_when_workers_are_sigkilled() {
    let _g = exclusive();
    soak("messenger_sigkill", true);
}
