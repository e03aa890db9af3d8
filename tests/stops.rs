//! Stops with every client library, against real servers on loopback
//! (tests/support/servers.rs, postgres.rs): a worker idle in a client
//! library's blocking wait (FarmFixture\BlockingClient) ends on SIGTERM
//! within the stop's grace, without SIGKILL; and the farm's rules about
//! stops: a clean stop from outside is not backed off, a stop that lands in
//! start() is no failure, a rolling recycle hands over once a replacement
//! entered its first cycle.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

const BLOCKING_CLIENT: &str = "FarmFixture\\BlockingClient";
/// The shutdown timeout of the stop tests: SIGKILL comes after it; the
/// stop's grace, when blocking waits end, is half of it.
const SHUTDOWN_TIMEOUT: u64 = 8;

/// A job of `replicas` BlockingClient processes waiting in `client`.
fn client_job(jobs: &Jobs, client: &str, config: Value, fields: Value) -> Value {
    let mut extra = json!({"client": client});
    extra.as_object_mut().unwrap().extend(config.as_object().cloned().unwrap_or_default());
    let mut job_fields = json!({"workerClass": BLOCKING_CLIENT, "shutdownTimeoutSeconds": SHUTDOWN_TIMEOUT});
    job_fields.as_object_mut().unwrap().extend(fields.as_object().cloned().unwrap_or_default());
    jobs.job_with("c", 1, extra, job_fields)
}

/// Waits until `count` processes logged "waiting" and each of them blocks
/// in a wait or a socket read; returns their pids.
fn wait_blocked(farm: &Farm, count: usize) -> Vec<i32> {
    farm.wait_for(secs(30.0), &format!("{count} workers blocked in their client's wait"), || {
        let mut pids: Vec<i32> = farm.events().iter().filter(|e| e.kind == "waiting").map(|e| e.pid).collect();
        pids.sort();
        pids.dedup();
        let alive: Vec<i32> = pids.into_iter().filter(|p| is_alive(*p)).collect();
        (alive.len() == count && alive.iter().all(|p| in_wait_syscall(*p))).then_some(alive)
    })
}

/// SIGTERM to the farm whose workers block in their client: every worker
/// must end cleanly (exit 0) before its SIGKILL, and the farm exit 0.
fn assert_farm_stops_within_the_grace(farm: &Farm, workers: usize, client: &str) -> Duration {
    let began = Instant::now();
    farm.signal(Signal::SIGTERM);
    let status = farm.wait_exit(secs(SHUTDOWN_TIMEOUT as f64 * 4.0));
    let took = began.elapsed();
    let stderr = farm.stderr();
    println!("{client}: {workers} idle workers stopped in {:.0} ms", took.as_secs_f64() * 1000.0);
    assert_eq!(status.code(), Some(0), "{client}: farm exit\n{}", farm.diagnostics());
    assert!(!stderr.contains("SIGKILL"), "{client}: a worker had to be killed\n{}", farm.diagnostics());
    assert_eq!(
        stderr.matches("stopped: exit code 0").count(),
        workers,
        "{client}: every worker stops cleanly\n{}",
        farm.diagnostics()
    );
    took
}

fn farm_of(name: &str, client: &str, config: Value, replicas: u32) -> Farm {
    Farm::start(
        name,
        FarmOptions::default(),
        |jobs| json!({"c": client_job(jobs, client, config, json!({"replicas": replicas}))}),
    )
}

#[test]
fn gearman_work_ends_on_sigterm_within_the_grace() {
    let _g = shared();
    let dir = TempDir::new("gearmand");
    let gearmand = Daemon::gearmand(dir.path());
    let farm = farm_of("stop_gearman", "gearman", json!({"port": gearmand.port}), 2);
    wait_blocked(&farm, 2);
    assert_farm_stops_within_the_grace(&farm, 2, "gearman");
}

#[test]
fn a_pgsql_query_and_a_notification_wait_end_on_sigterm_within_the_grace() {
    let _g = shared();
    let dir = TempDir::new("postgres_stops");
    let postgres = PostgresServer::start(dir.path());
    for client in ["pgsql-sleep", "pgsql-notify"] {
        let farm = farm_of(&format!("stop_{client}"), client, json!({"dsn": postgres.pdo_dsn()}), 2);
        wait_blocked(&farm, 2);
        assert_farm_stops_within_the_grace(&farm, 2, client);
    }
}

#[test]
fn a_curl_request_to_a_silent_server_ends_on_sigterm_within_the_grace() {
    let _g = shared();
    let silent = SilentServer::start();
    let farm = farm_of("stop_curl", "curl", json!({"port": silent.port}), 2);
    wait_blocked(&farm, 2);
    assert_farm_stops_within_the_grace(&farm, 2, "curl");
}

/// Pheanstalk catches the interrupted socket_read(), reconnects and sends
/// `reserve` again: the second wait is a blocking recv() the stop's grace
/// must still end. reserveWithTimeout() is the pattern the README names.
#[test]
fn pheanstalk_reserve_retried_after_the_stop_still_ends_within_the_grace() {
    let _g = shared();
    let dir = TempDir::new("beanstalkd");
    let beanstalkd = Daemon::beanstalkd(dir.path());
    for client in ["beanstalk", "beanstalk-timeout"] {
        let farm = farm_of(&format!("stop_{client}"), client, json!({"port": beanstalkd.port}), 2);
        wait_blocked(&farm, 2);
        assert_farm_stops_within_the_grace(&farm, 2, client);
        assert!(!farm.stderr().contains("exit code 70"), "{client}\n{}", farm.diagnostics());
    }
}

/// SIGTERM from outside the farm (kill, a container runtime) to a worker
/// that then exits 0 within shortRunTimeSeconds: a stop, restarted at once,
/// never backed off.
#[test]
fn a_worker_stopped_from_outside_is_restarted_at_once_every_time() {
    let _g = shared();
    let farm = Farm::start(
        "outside_sigterm",
        FarmOptions::default(),
        |jobs| json!({"o": jobs.job_with("o", 1, json!({}), json!({"shortRunTimeSeconds": 60}))}),
    );
    let mut pid = farm.wait_running(&["o"], secs(10.0))["o"];
    for round in 1..=3 {
        farm.wait_for(secs(10.0), "a cycle of the current process", || {
            farm.events().iter().any(|e| e.kind == "cycle" && e.pid == pid).then_some(())
        });
        kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        pid = farm.wait_for(secs(10.0), &format!("restart {round}"), || {
            Farm::status_pid(&farm.status(), "o").filter(|p| *p != pid)
        });
    }
    let stderr = farm.stderr();
    assert_eq!(stderr.matches("was stopped by a signal from outside the farm").count(), 3, "{}", farm.diagnostics());
    assert!(!stderr.contains("(backoff)"), "a clean stop is not backed off\n{}", farm.diagnostics());
    assert!(!stderr.contains("WARN"), "{}", farm.diagnostics());
    farm.stop(secs(10.0));
}

/// A stop that lands in start() (a connection handshake whose read the
/// stop's grace ends, so start() throws) is a stop: no failure counted
/// (maxFailures 1 would fail the job), restarted at once.
#[test]
fn a_stop_that_lands_in_start_is_no_failure() {
    let _g = shared();
    let silent = SilentServer::start();
    let farm = Farm::start("stop_in_start", FarmOptions::default(), |jobs| {
        json!({"c": client_job(jobs, "handshake", json!({"port": silent.port}),
            json!({"maxFailures": 1, "shutdownTimeoutSeconds": 4}))})
    });
    let first = farm.wait_for(secs(20.0), "start() blocked in its handshake", || {
        farm.events().iter().find(|e| e.kind == "connected").map(|e| e.pid).filter(|p| in_wait_syscall(*p))
    });
    kill(Pid::from_raw(first), Signal::SIGTERM).unwrap();
    farm.wait_for(secs(20.0), "a new process in start()", || {
        farm.events().iter().any(|e| e.kind == "connected" && e.pid != first).then_some(())
    });
    let stderr = farm.stderr();
    assert!(stderr.contains("start() was interrupted by the stop"), "{}", farm.diagnostics());
    assert!(!stderr.contains("start() failed"), "{}", farm.diagnostics());
    // maxFailures 1: one failure would have failed the job for good.
    assert!(!stderr.contains("not restarting it"), "{}", farm.diagnostics());
    assert_ne!(farm.status()["c"]["state"]["status"], json!("failed"), "{}", farm.diagnostics());
    farm.stop(secs(20.0));
}

/// Replacements of a rolling recycle that block in their first cycle (an
/// idle consumer never completes one) count as up once they entered it:
/// the recycle takes the stops' time, not a shutdown timeout per slot.
#[test]
fn a_rolling_recycle_of_idle_blocking_consumers_hands_over_at_the_first_cycle() {
    let _g = shared();
    let shutdown_timeout = 30;
    let farm = Farm::start(
        "rolling_idle",
        FarmOptions::default(),
        |jobs| json!({"c": client_job(jobs, "select", json!({}), json!({"replicas": 3, "shutdownTimeoutSeconds": shutdown_timeout}))}),
    );
    let old = wait_blocked(&farm, 3);
    let began = Instant::now();
    lrpmctl(&farm.socket, &["recycle", "c"]).assert_code(0);
    farm.wait_stderr("rolling recycle complete", secs(shutdown_timeout as f64 * 4.0));
    let took = began.elapsed();
    println!("rolling recycle of 3 idle consumers: {:.0} ms", took.as_secs_f64() * 1000.0);
    assert!(
        took < secs(shutdown_timeout as f64),
        "the hand-over waited for a cycle to complete ({took:?})\n{}",
        farm.diagnostics()
    );
    let stderr = farm.stderr();
    assert!(!stderr.contains("has not entered its first cycle"), "{}", farm.diagnostics());
    let new = wait_blocked(&farm, 3);
    assert!(new.iter().all(|p| !old.contains(p)), "every process replaced: {old:?} -> {new:?}");
    farm.stop(secs(20.0));
}

/// php-amqplib consumers on a real RabbitMQ, one broker for the whole test
/// (it takes seconds to start): idle consumers blocked in `wait()` stop
/// within the grace; a SIGTERM that lands in `start()` between connecting
/// and declaring the queue is a stop, not a failure; a rolling recycle of
/// 4 idle consumers hands over at each replacement's first cycle.
#[test]
fn php_amqplib_consumers_stop_cleanly_in_wait_in_start_and_in_a_rolling_recycle() {
    let _g = shared();
    let dir = TempDir::new("rabbitmq");
    let rabbit = RabbitServer::start(dir.path());

    let farm = farm_of("stop_amqp", "amqp", json!({"port": rabbit.port}), 2);
    wait_blocked(&farm, 2);
    assert_farm_stops_within_the_grace(&farm, 2, "amqp");

    let farm = Farm::start(
        "stop_amqp_in_start",
        FarmOptions::default(),
        |jobs| json!({"c": client_job(jobs, "amqp", json!({"port": rabbit.port, "connectSleep": 600}), json!({"maxFailures": 1}))}),
    );
    let first = farm.wait_for(secs(30.0), "start() between connecting and declaring", || {
        farm.events().iter().find(|e| e.kind == "connected").map(|e| e.pid).filter(|p| in_wait_syscall(*p))
    });
    kill(Pid::from_raw(first), Signal::SIGTERM).unwrap();
    farm.wait_for(secs(30.0), "a new process in start()", || {
        farm.events().iter().any(|e| e.kind == "connected" && e.pid != first).then_some(())
    });
    let stderr = farm.stderr();
    assert!(stderr.contains("start() was interrupted by the stop"), "{}", farm.diagnostics());
    assert!(!stderr.contains("not restarting it"), "{}", farm.diagnostics());
    farm.stop(secs(30.0));

    let farm = farm_of("rolling_amqp", "amqp", json!({"port": rabbit.port}), 4);
    let old = wait_blocked(&farm, 4);
    let began = Instant::now();
    lrpmctl(&farm.socket, &["recycle", "c"]).assert_code(0);
    farm.wait_stderr("rolling recycle complete", secs(SHUTDOWN_TIMEOUT as f64 * 8.0));
    let took = began.elapsed();
    println!("amqp: rolling recycle of 4 idle consumers: {:.0} ms", took.as_secs_f64() * 1000.0);
    // Waiting for a first cycle to complete took a shutdown timeout per slot.
    assert!(took < secs(SHUTDOWN_TIMEOUT as f64), "{took:?}\n{}", farm.diagnostics());
    assert!(!farm.stderr().contains("has not entered its first cycle"), "{}", farm.diagnostics());
    let new = wait_blocked(&farm, 4);
    assert!(new.iter().all(|p| !old.contains(p)), "every process replaced: {old:?} -> {new:?}");
    assert_farm_stops_within_the_grace(&farm, 4, "amqp after the rolling recycle");
}
