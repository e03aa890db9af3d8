//! The zygote's lifecycle, pure like the rest of the core: which phase it
//! is in, when it is started again, and where a worker's start goes. The
//! supervisor owns the process and its socket (`supervisor/zygote.rs`,
//! carried here as `C`) and applies what these transitions return: a pid to
//! signal, a delay to log.
//!
//! ```text
//!            started           READY
//!   Down ───────────▶ Starting ──────▶ Ready
//!    ▲  ◀─ start_failed │               │
//!    │                  ├───────────────┤ stop(reason) / kill_stuck
//!    │ exit (backoff)   ▼               ▼
//!    └──────────── Stopping ──▶ exit ──▶ Disabled{reason}  (or Down, after kill_stuck)
//! ```
//!
//! A zygote that crashes while Starting or Ready goes Down with backoff; a
//! stale one (code changed on disk) is retired and Down at once, without
//! backoff. Disabled is final: `--no-zygote`, a refusal, the shutdown, the
//! upgrade's exec.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::backoff::ZygoteBackoff;
use super::lifecycle::later;
use super::Pid;

/// How long starts wait for a zygote that is starting (running the
/// bootstrap) before the supervisor forks them itself.
pub const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// A zygote process: its pid, when it was forked, and the supervisor's
/// connection to it.
#[derive(Debug)]
pub struct ZygoteProcess<C> {
    pub pid: Pid,
    pub since: Instant,
    pub link: C,
}

/// Why the zygote is not started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disabled {
    /// `--no-zygote`.
    Off,
    /// It refused to serve (the bootstrap left a socket open; why was logged).
    Refused,
    /// The farm is shutting down.
    ShutDown,
    /// `lrpmctl upgrade` is replacing the supervisor's image.
    Upgrading,
}

/// What follows the exit of a zygote that was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Killed as stuck: started again, with backoff.
    Restart,
    Disable(Disabled),
}

#[derive(Debug)]
pub enum ZygotePhase<C> {
    /// Forked, running the bootstrap: starts wait for its READY (at most
    /// `STARTUP_WAIT`).
    Starting(ZygoteProcess<C>),
    /// Serving: starts are sent to it.
    Ready(ZygoteProcess<C>),
    /// Signalled (or, for the upgrade, no longer asked): takes no start.
    Stopping(ZygoteProcess<C>, AfterStop),
    /// Not running: started again at `at`.
    Down {
        at: Instant,
    },
    Disabled(Disabled),
}

/// Where a worker's start goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRoute {
    /// To the zygote.
    Zygote,
    /// Queued until the starting zygote is ready.
    Wait,
    /// Forked by the supervisor.
    Direct,
}

/// A zygote that was reaped, and what became of the lifecycle.
#[derive(Debug)]
pub struct ZygoteExit<C> {
    pub process: ZygoteProcess<C>,
    pub ran: Duration,
    /// Started again after this long; None: Disabled.
    pub restart_in: Option<Duration>,
}

#[derive(Debug)]
pub struct Zygote<C> {
    phase: ZygotePhase<C>,
    backoff: ZygoteBackoff,
}

impl<C> Zygote<C> {
    /// A zygote due to start now, or Disabled(Off).
    pub fn new(enabled: bool, now: Instant) -> Zygote<C> {
        let phase = if enabled { ZygotePhase::Down { at: now } } else { ZygotePhase::Disabled(Disabled::Off) };
        Zygote { phase, backoff: ZygoteBackoff::default() }
    }

    pub fn phase(&self) -> &ZygotePhase<C> {
        &self.phase
    }

    /// The phase's name, for logs and status.
    pub fn status_name(&self) -> &'static str {
        match &self.phase {
            ZygotePhase::Starting(_) => "starting",
            ZygotePhase::Ready(_) => "ready",
            ZygotePhase::Stopping(..) => "stopping",
            ZygotePhase::Down { .. } => "down",
            ZygotePhase::Disabled(Disabled::Off) => "off",
            ZygotePhase::Disabled(Disabled::Refused) => "refused",
            ZygotePhase::Disabled(Disabled::ShutDown | Disabled::Upgrading) => "stopped",
        }
    }

    /// The running process (Starting, Ready or Stopping).
    pub fn process(&self) -> Option<&ZygoteProcess<C>> {
        match &self.phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) | ZygotePhase::Stopping(p, _) => Some(p),
            ZygotePhase::Down { .. } | ZygotePhase::Disabled(_) => None,
        }
    }

    pub fn process_mut(&mut self) -> Option<&mut ZygoteProcess<C>> {
        match &mut self.phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) | ZygotePhase::Stopping(p, _) => Some(p),
            ZygotePhase::Down { .. } | ZygotePhase::Disabled(_) => None,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.process().map(|p| p.pid)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, ZygotePhase::Ready(_))
    }

    pub fn is_starting(&self) -> bool {
        matches!(self.phase, ZygotePhase::Starting(_))
    }

    /// Down and due: the supervisor starts it now.
    pub fn start_due(&self, now: Instant) -> bool {
        matches!(self.phase, ZygotePhase::Down { at } if at <= now)
    }

    /// The next moment the lifecycle needs the supervisor: a restart due, or
    /// (`waiting`: starts are queued for it) the end of the startup wait.
    pub fn deadline(&self, waiting: bool) -> Option<Instant> {
        match &self.phase {
            ZygotePhase::Down { at } => Some(*at),
            ZygotePhase::Starting(p) if waiting => Some(later(p.since, STARTUP_WAIT)),
            _ => None,
        }
    }

    /// The starting zygote is past its startup wait.
    pub fn startup_overdue(&self, now: Instant) -> bool {
        matches!(&self.phase, ZygotePhase::Starting(p) if later(p.since, STARTUP_WAIT) <= now)
    }

    /// Where a start asked for at `now` goes.
    pub fn route(&self, now: Instant) -> StartRoute {
        match &self.phase {
            ZygotePhase::Ready(_) => StartRoute::Zygote,
            ZygotePhase::Starting(_) if !self.startup_overdue(now) => StartRoute::Wait,
            _ => StartRoute::Direct,
        }
    }

    /// It was forked (from Down; anything else is a bug and changes nothing).
    pub fn started(&mut self, pid: Pid, link: C, now: Instant) {
        debug_assert!(matches!(self.phase, ZygotePhase::Down { .. }), "a zygote started while not down");
        if matches!(self.phase, ZygotePhase::Down { .. }) {
            self.phase = ZygotePhase::Starting(ZygoteProcess { pid, since: now, link });
        }
    }

    /// It could not be forked (or its socket or program made): Down, with
    /// backoff; returns the delay.
    pub fn start_failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.delay_after(Duration::ZERO);
        if matches!(self.phase, ZygotePhase::Down { .. }) {
            self.phase = ZygotePhase::Down { at: later(now, delay) };
        }
        delay
    }

    /// Its READY arrived: true when it was starting.
    pub fn ready(&mut self) -> bool {
        self.replace_with(|phase| match phase {
            ZygotePhase::Starting(p) => (ZygotePhase::Ready(p), true),
            other => (other, false),
        })
    }

    /// Told to stop, for good: the pid to signal when it was serving or
    /// starting (None when it was already stopping or not running).
    pub fn stop(&mut self, reason: Disabled) -> Option<Pid> {
        self.replace_with(|phase| match phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) => {
                let pid = p.pid;
                (ZygotePhase::Stopping(p, AfterStop::Disable(reason)), Some(pid))
            }
            ZygotePhase::Stopping(p, AfterStop::Restart) => {
                (ZygotePhase::Stopping(p, AfterStop::Disable(reason)), None)
            }
            ZygotePhase::Down { .. } => (ZygotePhase::Disabled(reason), None),
            other => (other, None),
        })
    }

    /// It left a request unanswered too long: the pid to kill; it is started
    /// again after its exit.
    pub fn kill_stuck(&mut self) -> Option<Pid> {
        self.replace_with(|phase| match phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) => {
                let pid = p.pid;
                (ZygotePhase::Stopping(p, AfterStop::Restart), Some(pid))
            }
            other => (other, None),
        })
    }

    /// It reported code it loaded changed on disk and is ending: the old
    /// process (the supervisor reaps it as retired) and a new one due now,
    /// without backoff. None when it was being stopped for good.
    pub fn retire(&mut self, now: Instant) -> Option<ZygoteProcess<C>> {
        self.replace_with(|phase| match phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) | ZygotePhase::Stopping(p, AfterStop::Restart) => {
                (ZygotePhase::Down { at: now }, Some(p))
            }
            other => (other, None),
        })
    }

    /// Process `pid` was reaped: None when it is not this zygote. A zygote
    /// that was not told to stop for good goes Down with backoff, unless
    /// the farm is `shutting_down`.
    pub fn exited(&mut self, pid: Pid, now: Instant, shutting_down: bool) -> Option<ZygoteExit<C>> {
        if self.pid() != Some(pid) {
            return None;
        }
        let backoff = &mut self.backoff;
        let phase = std::mem::replace(&mut self.phase, ZygotePhase::Disabled(Disabled::ShutDown));
        let (process, after) = match phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) => (p, AfterStop::Restart),
            ZygotePhase::Stopping(p, after) => (p, after),
            ZygotePhase::Down { .. } | ZygotePhase::Disabled(_) => unreachable!("pid() matched a running zygote"),
        };
        let ran = now.saturating_duration_since(process.since);
        let after =
            if shutting_down && after == AfterStop::Restart { AfterStop::Disable(Disabled::ShutDown) } else { after };
        let restart_in = match after {
            AfterStop::Restart => {
                let delay = backoff.delay_after(ran);
                self.phase = ZygotePhase::Down { at: later(now, delay) };
                Some(delay)
            }
            AfterStop::Disable(reason) => {
                self.phase = ZygotePhase::Disabled(reason);
                None
            }
        };
        Some(ZygoteExit { process, ran, restart_in })
    }

    /// The host is ending or replacing its image: the process, if one runs,
    /// for the caller to kill and reap; the zygote is Disabled(`reason`).
    pub fn take(&mut self, reason: Disabled) -> Option<ZygoteProcess<C>> {
        self.replace_with(|phase| match phase {
            ZygotePhase::Starting(p) | ZygotePhase::Ready(p) | ZygotePhase::Stopping(p, _) => {
                (ZygotePhase::Disabled(reason), Some(p))
            }
            ZygotePhase::Down { .. } => (ZygotePhase::Disabled(reason), None),
            other => (other, None),
        })
    }

    /// Disabled for the upgrade's exec: due again now, for the farm to run
    /// on as before should the exec fail (a successful one discards it).
    pub fn rearm_after_exec(&mut self, now: Instant) {
        if matches!(self.phase, ZygotePhase::Disabled(Disabled::Upgrading)) {
            self.phase = ZygotePhase::Down { at: now };
        }
    }

    fn replace_with<T>(&mut self, f: impl FnOnce(ZygotePhase<C>) -> (ZygotePhase<C>, T)) -> T {
        let phase = std::mem::replace(&mut self.phase, ZygotePhase::Disabled(Disabled::ShutDown));
        let (phase, out) = f(phase);
        self.phase = phase;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A zygote forked at t0 as pid 10.
    fn starting(t0: Instant) -> Zygote<()> {
        let mut z = Zygote::new(true, t0);
        assert!(z.start_due(t0));
        z.started(10, (), t0);
        z
    }

    #[test]
    fn phases_a_zygote_goes_through() {
        let t0 = Instant::now();
        // (what happens, the phase's name after it)
        type Step = (&'static str, fn(&mut Zygote<()>, Instant) -> Option<Pid>);
        let cases: &[(&str, &[Step], &str)] = &[
            ("ready", &[("ready", |z, _| z.ready().then_some(0))], "ready"),
            ("refused while starting", &[("refuse", |z, _| z.stop(Disabled::Refused))], "stopping"),
            (
                "refused, then reaped",
                &[("refuse", |z, _| z.stop(Disabled::Refused)), ("exit", |z, t| z.exited(10, t, false).map(|_| 0))],
                "refused",
            ),
            (
                "crashed while ready",
                &[("ready", |z, _| z.ready().then_some(0)), ("exit", |z, t| z.exited(10, t, false).map(|_| 0))],
                "down",
            ),
            (
                "killed as stuck, then reaped",
                &[("stuck", |z, _| z.kill_stuck()), ("exit", |z, t| z.exited(10, t, false).map(|_| 0))],
                "down",
            ),
            (
                "killed as stuck, shutdown, reaped",
                &[
                    ("stuck", |z, _| z.kill_stuck()),
                    ("shutdown", |z, _| z.stop(Disabled::ShutDown).or(Some(0))),
                    ("exit", |z, t| z.exited(10, t, false).map(|_| 0)),
                ],
                "stopped",
            ),
            ("crashed during the shutdown", &[("exit", |z, t| z.exited(10, t, true).map(|_| 0))], "stopped"),
            ("stale", &[("retire", |z, t| z.retire(t).map(|p| p.pid))], "down"),
            ("taken at the exec", &[("take", |z, _| z.take(Disabled::Upgrading).map(|p| p.pid))], "stopped"),
            (
                "taken at an exec that failed",
                &[
                    ("take", |z, _| z.take(Disabled::Upgrading).map(|p| p.pid)),
                    ("rearm", |z, t| {
                        z.rearm_after_exec(t);
                        z.start_due(t).then_some(0)
                    }),
                ],
                "down",
            ),
        ];
        for (name, steps, expected) in cases {
            let mut z = starting(t0);
            for (step, apply) in steps.iter() {
                assert!(apply(&mut z, t0 + secs(1)).is_some(), "{name}: step {step} did nothing");
            }
            assert_eq!(z.status_name(), *expected, "{name}");
        }
    }

    #[test]
    fn starts_wait_for_a_starting_zygote_up_to_the_startup_wait_then_go_direct() {
        let t0 = Instant::now();
        let mut z = starting(t0);
        assert_eq!(z.route(t0 + secs(1)), StartRoute::Wait);
        assert_eq!(z.deadline(true), Some(t0 + STARTUP_WAIT));
        assert_eq!(z.deadline(false), None);
        assert_eq!(z.route(t0 + STARTUP_WAIT), StartRoute::Direct);
        assert!(z.ready());
        assert_eq!(z.route(t0 + secs(60)), StartRoute::Zygote);
        assert_eq!(z.stop(Disabled::ShutDown), Some(10));
        assert_eq!(z.route(t0 + secs(60)), StartRoute::Direct);
        assert!(!z.ready(), "a stopping zygote's READY changes nothing");
    }

    #[test]
    fn a_crash_loop_backs_off_and_a_stable_run_resets_it() {
        let t0 = Instant::now();
        let mut z: Zygote<()> = Zygote::new(true, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for pid in 1..=4 {
            z.started(pid, (), now);
            let exit = z.exited(pid, now + secs(1), false).expect("its pid");
            let delay = exit.restart_in.expect("restarted");
            delays.push(delay.as_secs());
            now += secs(1) + delay;
            assert!(!z.start_due(now - Duration::from_millis(1)));
            assert!(z.start_due(now));
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        z.started(5, (), now);
        let exit = z.exited(5, now + secs(30), false).expect("its pid");
        assert_eq!(exit.ran, secs(30));
        assert_eq!(exit.restart_in, Some(secs(1)));
    }

    #[test]
    fn a_failed_fork_backs_off_and_the_zygote_stays_down() {
        let t0 = Instant::now();
        let mut z: Zygote<()> = Zygote::new(true, t0);
        assert_eq!(z.start_failed(t0), secs(1));
        assert_eq!(z.start_failed(t0 + secs(1)), secs(2));
        assert_eq!(z.deadline(false), Some(t0 + secs(3)));
        assert_eq!(z.route(t0), StartRoute::Direct);
    }

    #[test]
    fn an_exit_of_another_pid_is_not_the_zygotes() {
        let t0 = Instant::now();
        let mut z = starting(t0);
        assert!(z.exited(11, t0, false).is_none());
        assert_eq!(z.pid(), Some(10));
    }

    #[test]
    fn a_zygote_stopped_for_good_is_never_due_and_disabled_is_final() {
        let t0 = Instant::now();
        let mut off: Zygote<()> = Zygote::new(false, t0);
        assert_eq!(off.status_name(), "off");
        assert!(!off.start_due(t0 + secs(3600)));
        assert!(off.stop(Disabled::ShutDown).is_none());
        assert_eq!(off.status_name(), "off", "--no-zygote stays off through a shutdown");
        let mut down: Zygote<()> = Zygote::new(true, t0);
        down.start_failed(t0);
        assert!(down.stop(Disabled::ShutDown).is_none());
        assert!(!down.start_due(t0 + secs(3600)), "a zygote down at shutdown is not started again");
        assert!(down.retire(t0).is_none());
        let mut refused = starting(t0);
        refused.stop(Disabled::Refused);
        assert!(refused.retire(t0).is_none(), "a refused zygote that reports stale is not replaced");
        assert!(refused.exited(10, t0, false).expect("its pid").restart_in.is_none());
        assert_eq!(refused.deadline(true), None);
    }
}
