//! systemd's notification protocol (`Type=notify`, sd_notify(3)): READY=1
//! once the first configuration is applied and its workers are forked,
//! STATUS= with the job counts whenever they change, STOPPING=1 when the
//! shutdown begins, WATCHDOG=1 at half of `WATCHDOG_USEC` from the loop
//! itself, so a wedged loop is caught.
//!
//! The protocol is one datagram per message on the socket `NOTIFY_SOCKET`
//! names. It is spoken here directly rather than through a crate because
//! the variables must be read once and removed from the environment before
//! the first fork: workers must not inherit them (systemd would take a
//! worker's message for the service's, with `NotifyAccess=all`), while the
//! crates read the environment at every call.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::farm::{Farm, StatusName};

pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog_every: Option<Duration>,
    next_watchdog: Option<Instant>,
    ready_sent: bool,
    stopping_sent: bool,
    last_status: String,
}

impl Notifier {
    /// Reads and removes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    /// None when lrpm-host was not started by systemd with `Type=notify`.
    /// Call before the first fork, while single-threaded.
    pub fn from_environment(now: Instant) -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let path = path.filter(|p| !p.is_empty())?;
        let address = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            None => SocketAddr::from_pathname(&path),
        };
        let notifier = address.and_then(|address| Ok((UnixDatagram::unbound()?, address)));
        let (socket, address) = match notifier {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={}: {e}; not notifying systemd", path.to_string_lossy());
                return None;
            }
        };
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::warn!("NOTIFY_SOCKET: {e}");
        }
        let ours = watchdog_pid.map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog_every = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(|usec| Duration::from_micros(usec) / 2);
        Some(Notifier {
            socket,
            address,
            watchdog_every,
            next_watchdog: watchdog_every.map(|every| now + every),
            ready_sent: false,
            stopping_sent: false,
            last_status: String::new(),
        })
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::debug!("cannot notify systemd ({message:?}): {e}");
        }
    }

    /// When the next WATCHDOG=1 is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Called once per loop turn: sends what changed.
    pub fn update(&mut self, farm: &Farm, now: Instant) {
        if self.next_watchdog.is_some_and(|at| at <= now) {
            self.send("WATCHDOG=1");
            self.next_watchdog = self.watchdog_every.map(|every| now + every);
        }
        if farm.is_shutting_down() {
            if !self.stopping_sent {
                self.stopping_sent = true;
                self.send("STOPPING=1\nSTATUS=shutting down");
            }
            return;
        }
        let (status, starting) = status_line(farm, now);
        if !self.ready_sent && farm.config_process().loaded && !starting {
            self.ready_sent = true;
            self.last_status = status.clone();
            self.send(&format!("READY=1\nSTATUS={status}"));
        } else if self.ready_sent && status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }
}

/// "3 jobs: 2 running, 1 backoff", and whether any job is still starting.
fn status_line(farm: &Farm, now: Instant) -> (String, bool) {
    let mut counts: Vec<(StatusName, usize)> = Vec::new();
    for state in farm.jobs().values() {
        let name = state.status(now);
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by_key(|(name, _)| name.as_str());
    let parts: Vec<String> = counts.iter().map(|(name, count)| format!("{count} {}", name.as_str())).collect();
    let total = farm.jobs().len();
    let starting = counts.iter().any(|(name, _)| *name == StatusName::Starting);
    let line = if parts.is_empty() { format!("{total} jobs") } else { format!("{total} jobs: {}", parts.join(", ")) };
    (line, starting)
}
