//! Restart backoff, php-lrpm's rules.

use std::time::Duration;

/// Workers: 1 s, doubling, capped at 6 h; reset by a run of at least
/// `shortRunTimeSeconds` (WorkerMetadata::scheduleRestartWithBackoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerBackoff {
    current: Duration,
}

pub const WORKER_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const WORKER_BACKOFF_MAX: Duration = Duration::from_secs(6 * 60 * 60);

impl Default for WorkerBackoff {
    fn default() -> Self {
        WorkerBackoff { current: WORKER_BACKOFF_MIN }
    }
}

impl WorkerBackoff {
    pub fn current(&self) -> Duration {
        self.current
    }

    pub fn reset(&mut self) {
        self.current = WORKER_BACKOFF_MIN;
    }

    /// Delay before restarting a process that ran for `ran`: the current
    /// backoff (which then doubles) for a short run, none (and a reset) otherwise.
    pub fn delay_after(&mut self, ran: Duration, short_run: Duration) -> Duration {
        if ran < short_run {
            let delay = self.current;
            self.current = (self.current * 2).min(WORKER_BACKOFF_MAX);
            delay
        } else {
            self.reset();
            Duration::ZERO
        }
    }
}

/// The configuration process: 2^n s after the n-th consecutive run shorter
/// than 5 s, capped at 300 s (ConfigurationProcessManager).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigBackoff {
    short_runs: u32,
}

pub const CONFIG_MIN_RUN: Duration = Duration::from_secs(5);
pub const CONFIG_BACKOFF_MAX: Duration = Duration::from_secs(300);

impl ConfigBackoff {
    pub fn delay_after(&mut self, ran: Duration) -> Duration {
        if ran >= CONFIG_MIN_RUN {
            self.short_runs = 0;
            return Duration::ZERO;
        }
        self.short_runs = self.short_runs.saturating_add(1);
        let seconds = 1u64.checked_shl(self.short_runs).unwrap_or(u64::MAX);
        Duration::from_secs(seconds).min(CONFIG_BACKOFF_MAX)
    }
}

/// The zygote: 1 s, doubling, capped at 60 s; reset by a run of at least
/// `ZYGOTE_STABLE_RUN`. Workers do not wait for it (they are forked by the
/// supervisor meanwhile), so the cap is short.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZygoteBackoff {
    next: Option<Duration>,
}

pub const ZYGOTE_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const ZYGOTE_BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const ZYGOTE_STABLE_RUN: Duration = Duration::from_secs(10);

impl ZygoteBackoff {
    /// Delay before starting a zygote again after one that ran for `ran`
    /// (zero when it could not be started at all).
    pub fn delay_after(&mut self, ran: Duration) -> Duration {
        if ran >= ZYGOTE_STABLE_RUN {
            self.next = None;
        }
        let delay = self.next.unwrap_or(ZYGOTE_BACKOFF_MIN);
        self.next = Some((delay * 2).min(ZYGOTE_BACKOFF_MAX));
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(5);

    #[test]
    fn worker_backoff_doubles_on_short_runs_and_resets_on_long_ones() {
        let mut b = WorkerBackoff::default();
        let delays: Vec<u64> = (0..4).map(|_| b.delay_after(Duration::from_secs(1), SHORT).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(b.delay_after(SHORT, SHORT), Duration::ZERO);
        assert_eq!(b.current(), WORKER_BACKOFF_MIN);
    }

    #[test]
    fn worker_backoff_caps_at_six_hours() {
        let mut b = WorkerBackoff::default();
        for _ in 0..40 {
            b.delay_after(Duration::ZERO, SHORT);
        }
        assert_eq!(b.delay_after(Duration::ZERO, SHORT), WORKER_BACKOFF_MAX);
    }

    #[test]
    fn zero_short_run_time_never_backs_off() {
        let mut b = WorkerBackoff::default();
        assert_eq!(b.delay_after(Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn zygote_backoff_doubles_to_a_minute_and_resets_after_a_stable_run() {
        let mut b = ZygoteBackoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.delay_after(Duration::from_secs(1)).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay_after(ZYGOTE_STABLE_RUN), ZYGOTE_BACKOFF_MIN);
        assert_eq!(b.delay_after(Duration::ZERO).as_secs(), 2);
    }

    #[test]
    fn config_backoff_is_two_to_the_n_capped_at_300() {
        let mut b = ConfigBackoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.delay_after(Duration::from_secs(1)).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.delay_after(Duration::from_secs(6)), Duration::ZERO);
        assert_eq!(b.delay_after(Duration::ZERO).as_secs(), 2);
    }
}
