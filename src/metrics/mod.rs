//! Observability: the Prometheus text format (`exposition`), a small HTTP
//! server driven by the supervisor's poll loop (`http`), resident set
//! sizes from /proc (`rss`) and the host's own counters (`HostCounters`).
//! What the figures are is decided in `src/supervisor/metrics.rs`, where the
//! farm's state is.

#![forbid(unsafe_code)]

pub mod exposition;
pub mod history;
pub mod http;
pub mod rss;

use std::time::Instant;

use crate::farm::ExitKind;

/// What the supervisor counts about itself: its start and the
/// configurations it received or lost.
#[derive(Debug)]
pub struct HostCounters {
    pub started: Instant,
    pub config_loads_ok: u64,
    pub config_loads_failed: u64,
    /// The running configuration process already had a failure counted
    /// (an error it reported, a configuration refused): its exit is not a
    /// second one.
    config_failure_counted: bool,
}

impl HostCounters {
    pub fn new(started: Instant) -> HostCounters {
        HostCounters { started, config_loads_ok: 0, config_loads_failed: 0, config_failure_counted: false }
    }

    /// A configuration was handed to the core.
    pub fn config_loaded(&mut self) {
        self.config_loads_ok += 1;
    }

    /// The source reported an error, or a configuration was refused.
    pub fn config_failed(&mut self) {
        self.config_loads_failed += 1;
        self.config_failure_counted = true;
    }

    /// The configuration process could not be forked.
    pub fn config_spawn_failed(&mut self) {
        self.config_loads_failed += 1;
    }

    /// The configuration process ended: a failure unless it exited 0, its
    /// failure was already counted, or the host is shutting down (it was
    /// told to stop).
    pub fn config_process_exited(&mut self, exit: ExitKind, shutting_down: bool) {
        if exit != ExitKind::Code(0) && !self.config_failure_counted && !shutting_down {
            self.config_loads_failed += 1;
        }
        self.config_failure_counted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_load_is_counted_once() {
        let mut host = HostCounters::new(Instant::now());
        host.config_loaded();
        // The source threw: an error message, then exit 3.
        host.config_failed();
        host.config_process_exited(ExitKind::Code(3), false);
        // A crash without a message.
        host.config_process_exited(ExitKind::Signal(11), false);
        // Stopped at shutdown.
        host.config_process_exited(ExitKind::Signal(9), true);
        host.config_spawn_failed();
        assert_eq!((host.config_loads_ok, host.config_loads_failed), (1, 3));
    }
}
