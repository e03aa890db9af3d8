//! examples/postgres: push configuration from PostgreSQL (LISTEN/NOTIFY,
//! `--interval=0`) against a real server started on loopback (as nobody
//! when root). An UPDATE of the jobs table reaches the farm within 100 ms
//! (measured); a restart of PostgreSQL is ridden out with the last good
//! configuration and a reconnection; the farm's stop is never held up by
//! the source's wait.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;
use support::*;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join("postgres")
}

fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "postgres push: {line}");
}

/// True while `pid` waits in poll()/ppoll() on at least one descriptor
/// (/proc/PID/syscall: the number, then the arguments; nfds is the second):
/// the source waiting for a NOTIFY on its connection, not the runner's
/// push-mode pacing (a ppoll() on no descriptor) nor a query.
fn waiting_on_a_socket(pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else { return false };
    let fields: Vec<&str> = text.split_whitespace().collect();
    let number = fields.first().and_then(|n| n.parse::<i64>().ok());
    let nfds = fields.get(2).and_then(|n| i64::from_str_radix(n.trim_start_matches("0x"), 16).ok());
    matches!(number, Some(n) if n == libc::SYS_ppoll || n == libc::SYS_poll) && nfds.is_some_and(|n| n >= 1)
}

fn config_process(farm: &Farm) -> Option<i32> {
    farm.descendants().into_iter().find(|p| cmdline(*p).as_deref() == Some("lrpm-host: config"))
}

fn config_of(status: &Value, id: &str) -> Value {
    status[id]["config"].clone()
}

#[test]
fn postgres_push_configuration_follows_updates_at_once_and_rides_out_a_restart() {
    let _g = exclusive();
    let dir = TempDir::new("example_postgres");
    let mut pg = PostgresServer::start(dir.path());
    pg.psql_file(&example_dir().join("schema.sql"));
    pg.psql(
        "INSERT INTO jobs (id, name, worker_class, mtime, worker_config) \
         VALUES ('heartbeat', 'heartbeat', 'Example\\Heartbeat', 1, '{\"every\": 1}')",
    );

    let farm_dir = TempDir::new("example_postgres_farm");
    std::fs::write(farm_dir.join("jobs.json"), "{}").unwrap();
    let options = FarmOptions {
        interval_args: vec!["--interval=0".into()],
        source: example_dir().join("farm.php"),
        env: vec![("PG_DSN".into(), pg.pdo_dsn())],
        ..Default::default()
    };
    let farm = Farm::start_in(farm_dir, options);
    farm.wait_for(secs(20.0), "the heartbeat's first beat", || {
        farm.stdout().contains("[heartbeat#0] beat 1").then_some(())
    });

    // UPDATE -> trigger -> NOTIFY -> the source's wait returns -> the farm
    // has the new job: timed from the server's clock read just before the
    // UPDATE (and just after its commit) to the control socket showing the
    // change (this machine's clock: the same one), each UPDATE made once the source waits for a
    // NOTIFY again (not while the runner paces push-mode calls to 10 a second).
    let mut latencies = Vec::new();
    for mtime in 2..=8i64 {
        farm.wait_for(secs(10.0), "the source to wait for a NOTIFY", || {
            config_process(&farm).filter(|pid| waiting_on_a_socket(*pid))
        });
        // A watcher sees the farm change (status every millisecond) while
        // psql commits the UPDATE and then reads the server's clock: the
        // latency is from that commit to the farm having the new job.
        let socket = farm.socket.clone();
        let watcher = std::thread::spawn(move || {
            poll_every(std::time::Duration::from_millis(1), secs(10.0), || {
                let status: Value = serde_json::from_str(&exchange(&socket, "status").ok()?).ok()?;
                (config_of(&status, "heartbeat")["mtime"] == mtime).then(unix_now)
            })
        });
        let started = Instant::now();
        let clock = "SELECT extract(epoch FROM clock_timestamp())";
        let update =
            format!("UPDATE jobs SET mtime = {mtime}, worker_config = '{{\"every\": {mtime}}}' WHERE id = 'heartbeat'");
        let printed = pg.psql_statements(&[clock, &update, clock]);
        let clocks: Vec<f64> = printed.lines().map(|l| l.trim().parse().expect("the server's clock")).collect();
        let (before, after) = (clocks[0], clocks[1]);
        let psql_ms = started.elapsed().as_secs_f64() * 1000.0;
        let changed = watcher
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("mtime {mtime} never reached the farm\n{}", farm.diagnostics()));
        // From just before the UPDATE began (an upper bound: the UPDATE's
        // own run and commit count against us); after the commit, at least.
        let ms = (changed - before) * 1000.0;
        let from_commit = ((changed - after) * 1000.0).max(0.0);
        report(&format!(
            "UPDATE to the farm changed: {ms:.1} ms from the UPDATE's start, {from_commit:.1} ms after its commit \
             (psql took {psql_ms:.1} ms in all)"
        ));
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    report(&format!(
        "median {median:.1} ms, max {:.1} ms over {} updates",
        latencies[latencies.len() - 1],
        latencies.len()
    ));
    assert!(
        median < 100.0,
        "the farm took {median:.1} ms (median) to follow an UPDATE: {latencies:?}\n{}",
        farm.diagnostics()
    );
    assert!(latencies.iter().all(|ms| *ms < 300.0), "an UPDATE took over 300 ms to arrive: {latencies:?}");
    // An INSERT and a DELETE are notified too.
    pg.psql("INSERT INTO jobs (id, name, worker_class, mtime) VALUES ('echo', 'echo', 'Example\\Heartbeat', 1)");
    farm.wait_for(secs(10.0), "job echo", || Farm::status_ids(&farm.try_status()?).contains("echo").then_some(()));
    pg.psql("DELETE FROM jobs WHERE id = 'echo'");
    farm.wait_for(secs(10.0), "job echo to go", || {
        (!Farm::status_ids(&farm.try_status()?).contains("echo")).then_some(())
    });

    // PostgreSQL goes away: the farm keeps its last good configuration and
    // its workers; the source retries with backoff, in the same process.
    let worker = Farm::status_pid(&farm.status(), "heartbeat").expect("heartbeat running");
    let config_pid = config_process(&farm);
    pg.stop();
    farm.wait_stderr("keeping the last jobs, reconnecting in", secs(20.0));
    let status = farm.status();
    assert_eq!(
        Farm::status_pid(&status, "heartbeat"),
        Some(worker),
        "the worker must keep running\n{}",
        farm.diagnostics()
    );
    assert_eq!(config_of(&status, "heartbeat")["mtime"], 8);
    pg.start_again();
    pg.psql("UPDATE jobs SET mtime = 9 WHERE id = 'heartbeat'");
    let back = Instant::now();
    farm.wait_for(secs(60.0), "the farm to follow PostgreSQL again", || {
        (config_of(&farm.try_status()?, "heartbeat")["mtime"] == 9).then_some(())
    });
    report(&format!(
        "after the restart: the change arrived {:.1} s after PostgreSQL was back",
        back.elapsed().as_secs_f64()
    ));
    assert!(farm.stderr().contains("postgres: reconnected"), "{}", farm.diagnostics());
    assert_eq!(
        config_process(&farm),
        config_pid,
        "the configuration process reconnected itself\n{}",
        farm.diagnostics()
    );
    assert!(!farm.stderr().contains("configuration source failed"), "{}", farm.diagnostics());

    // The source's wait (up to 5 s) never holds the stop up.
    let stopping = Instant::now();
    farm.stop(secs(15.0));
    let stop = stopping.elapsed();
    report(&format!("farm stopped in {:.0} ms while the source waited for a NOTIFY", stop.as_secs_f64() * 1000.0));
    assert!(stop < secs(2.0), "the stop took {stop:?}\n{}", farm.diagnostics());
}
