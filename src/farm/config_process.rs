//! The configuration process as the core tracks it.

use std::time::{Duration, Instant};

use super::backoff::ConfigBackoff;
use super::Pid;

/// How long the configuration process gets between SIGTERM and SIGKILL
/// (php-lrpm: CONFIG_PROCESS_TERM_TIMEOUT_SECONDS).
pub const CONFIG_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Until a first configuration has loaded, this many failed attempts end the
/// host (php-lrpm gives up after 5 too): a typo in the source must not look
/// like a healthy, empty farm.
pub const FIRST_CONFIGURATION_ATTEMPTS: u32 = 5;
/// Pause between those first attempts.
pub const FIRST_CONFIGURATION_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigPhase {
    /// The supervisor was asked to fork it and has not answered yet.
    Starting,
    Running {
        pid: Pid,
        since: Instant,
    },
    /// SIGTERM was sent; `kill_at` is when SIGKILL follows, `None` once sent.
    Stopping {
        pid: Pid,
        since: Instant,
        kill_at: Option<Instant>,
    },
    /// Start it again at `at`.
    Waiting {
        at: Instant,
    },
    /// The farm is shutting down: never again.
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProcessState {
    pub phase: ConfigPhase,
    pub backoff: ConfigBackoff,
    /// A reload was asked of the running process.
    pub reload_pending: bool,
    /// A configuration was applied at least once.
    pub loaded: bool,
    /// Failed attempts while no configuration has loaded yet.
    pub failures_before_first: u32,
}

impl ConfigProcessState {
    pub(super) fn new() -> Self {
        ConfigProcessState {
            phase: ConfigPhase::Starting,
            backoff: ConfigBackoff::default(),
            reload_pending: false,
            loaded: false,
            failures_before_first: 0,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        match self.phase {
            ConfigPhase::Running { pid, .. } | ConfigPhase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            ConfigPhase::Waiting { at } => Some(at),
            ConfigPhase::Stopping { kill_at, .. } => kill_at,
            _ => None,
        }
    }

    /// No process exists and none is being forked.
    pub fn is_gone(&self) -> bool {
        matches!(self.phase, ConfigPhase::Waiting { .. } | ConfigPhase::Stopped)
    }
}
