//! systemd's `Type=notify` protocol, against a datagram socket the test
//! creates: READY=1 once the first configuration's workers are forked,
//! STATUS= with the job counts, WATCHDOG=1 at half of WATCHDOG_USEC from
//! the loop, STOPPING=1 at shutdown, and none of it reaching the workers.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::*;

/// Every datagram received within `timeout` until `done` says stop.
fn collect_until(socket: &UnixDatagram, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(&messages) {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    messages
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_notify_socket() {
    let _g = shared();
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let jobs = Jobs { log: dir.join("events.log") };
    write_atomically(
        &dir.join("jobs.json"),
        json!({"a": jobs.job("a", 1), "b": jobs.job_with("b", 1, json!({"exitInStart": 1}), json!({}))})
            .to_string()
            .as_bytes(),
    );
    let options = FarmOptions::default().env("NOTIFY_SOCKET", &path.to_string_lossy()).env("WATCHDOG_USEC", "400000");
    let farm = Farm::start_in(dir, options);
    let messages = collect_until(&socket, secs(10.0), |m| {
        m.iter().any(|s| s.starts_with("READY=1")) && m.iter().filter(|s| *s == "WATCHDOG=1").count() >= 3
    });
    let ready = messages.iter().find(|m| m.starts_with("READY=1")).unwrap_or_else(|| {
        panic!("no READY=1 in {messages:?}\n{}", farm.diagnostics());
    });
    assert!(ready.contains("\nSTATUS=2 jobs: "), "{ready:?}");
    assert!(messages.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3, "{messages:?}\n{}", farm.diagnostics());
    // Job b crashes in start(): a later status shows it in backoff.
    let more = collect_until(&socket, secs(10.0), |m| m.iter().any(|s| s.contains("backoff")));
    assert!(more.iter().any(|m| m.starts_with("STATUS=") && m.contains("1 backoff")), "{more:?}");
    // The workers' environment has none of the variables.
    let pid = farm.wait_running(&["a"], secs(10.0))["a"];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("NOTIFY_SOCKET") && !environ.contains("WATCHDOG_USEC"), "{environ}");
    farm.signal(Signal::SIGTERM);
    let last = collect_until(&socket, secs(10.0), |m| m.iter().any(|s| s.starts_with("STOPPING=1")));
    assert!(last.iter().any(|m| m.starts_with("STOPPING=1")), "{last:?}\n{}", farm.diagnostics());
    assert_eq!(farm.wait_exit(secs(10.0)).code(), Some(0));
}

#[test]
fn an_abstract_notify_socket_works_and_no_socket_means_no_messages() {
    let _g = shared();
    let name = format!("lrpm-host-test-{}", std::process::id());
    let socket = {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixDatagram::bind_addr(&address).unwrap()
    };
    let options = FarmOptions::default().env("NOTIFY_SOCKET", &format!("@{name}"));
    let farm = Farm::start("notify_abstract", options, |jobs| json!({"a": jobs.job("a", 1)}));
    let mut messages = collect_until(&socket, secs(10.0), |m| m.iter().any(|s| s.starts_with("READY=1")));
    assert!(messages.iter().any(|m| m.starts_with("READY=1\nSTATUS=1 jobs: 1 running")), "{messages:?}");
    farm.signal(Signal::SIGTERM);
    messages.extend(collect_until(&socket, secs(10.0), |m| m.iter().any(|s| s.starts_with("STOPPING=1"))));
    assert!(messages.iter().any(|m| m.starts_with("STOPPING=1")), "{messages:?}\n{}", farm.diagnostics());
    // No WATCHDOG_USEC: no watchdog message in the farm's whole life.
    assert!(!messages.iter().any(|m| m == "WATCHDOG=1"), "{messages:?}");
    assert_eq!(farm.wait_exit(secs(10.0)).code(), Some(0));
}
