//! The loop: each turn registers what every part wants polled, polls with
//! the nearest deadline as the timeout, and dispatches what fired.
//!
//! The turn's order is fixed and matters:
//! 1. configuration messages (a config process's last words are read
//!    before its exit), the host's own output, workers' output, the zygote's
//!    replies, the upgrade trial's report, the cluster agent;
//! 2. the fence, the agent's restart, the upgrade's deadline;
//! 3. signals, then reaping every exited child (in batches);
//! 4. the control socket and its clients, then HTTP;
//! 5. only then the core's deadlines (`Event::Tick`): an exit already
//!    collected is always known to the core before it decides to signal
//!    anyone.

use std::time::{Duration, Instant};

use nix::poll::{PollFlags, PollTimeout};

use super::{notify, Supervisor, SupervisorError};
use crate::control::server::ClientId;
use crate::farm::{Event, HostExit};
use crate::metrics::http::HttpClientId;
use crate::poll_set::PollSet;
use crate::process::ProcessError;

/// A loop turn longer than this is logged at debug level.
const SLOW_TURN: Duration = Duration::from_millis(20);

/// What a polled descriptor belongs to. Parts are registered, and so
/// dispatched, in the turn's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Config,
    /// The host's stdout or stderr, while output waits to be written.
    HostStream(crate::host_output::Stream),
    /// Workers' output pipes (one epoll descriptor).
    Output,
    Zygote,
    UpgradeReport,
    Agent,
    Signals,
    ControlListener,
    Control {
        id: ClientId,
        wants_write: bool,
    },
    HttpListener,
    Http {
        id: HttpClientId,
        wants_write: bool,
    },
}

impl Source {
    /// Served before the fence, the signals and reaping.
    fn before_signals(self) -> bool {
        matches!(
            self,
            Source::Config
                | Source::HostStream(_)
                | Source::Output
                | Source::Zygote
                | Source::UpgradeReport
                | Source::Agent
        )
    }
}

impl Supervisor<'_> {
    pub(super) fn event_loop(&mut self) -> Result<HostExit, SupervisorError> {
        loop {
            let now = Instant::now();
            if let Some(exit) = self.exit {
                // The agent gives the lease back (its member key and any
                // claim left go at once) before the supervisor ends.
                if self.agent_has_left(now) {
                    return Ok(exit);
                }
            }
            self.start_turn(now);
            let timeout = poll_timeout(self.next_deadline(now), now);
            let ready = self.poll_ready(timeout)?;
            let now = Instant::now();
            self.dispatch(&ready, now);
            let turn = now.elapsed();
            if turn > SLOW_TURN {
                tracing::debug!("slow loop turn: {:.1} ms", turn.as_secs_f64() * 1000.0);
            }
        }
    }

    /// Pauses that are over end; the zygote's lifecycle moves on.
    fn start_turn(&mut self, now: Instant) {
        self.control.clients.resume(now);
        if let Some(output) = self.output.as_mut() {
            output.resume(now);
        }
        if let Some(http) = self.http.as_mut() {
            http.clients.resume(now);
        }
        self.zygote_overdue(now);
        if self.farm.is_shutting_down() {
            self.stop_zygote_if_idle();
        }
    }

    /// The nearest moment something is due, over every part.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        [
            self.farm.next_deadline(),
            self.control.clients.next_deadline(),
            self.output.as_ref().and_then(super::output::OutputRouter::deadline),
            self.reap_pending.then_some(now),
            self.notifier.as_ref().and_then(notify::Notifier::next_deadline),
            self.http.as_ref().and_then(|http| http.clients.next_deadline()),
            self.upgrade_deadline(),
            self.agent.as_ref().and_then(super::cluster::Agent::deadline),
            self.zygote_deadline(),
            self.backtraces.deadline(now),
            self.dashboard.as_ref().map(super::dashboard::Dashboard::next_sample),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Registers every part's descriptors, polls, and answers what fired.
    fn poll_ready(&self, timeout: PollTimeout) -> Result<Vec<Source>, SupervisorError> {
        let mut set = PollSet::default();
        if let Some(channel) = self.config_channel.as_ref() {
            set.read(channel.as_fd(), Source::Config);
        }
        for (fd, stream) in crate::host_output::waiting() {
            set.add(fd, PollFlags::POLLOUT, Source::HostStream(stream));
        }
        if let Some(fd) = self.output.as_ref().and_then(super::output::OutputRouter::poll_fd) {
            set.read(fd, Source::Output);
        }
        if let Some(running) = self.zygote.process() {
            set.read(running.link.as_fd(), Source::Zygote);
        }
        if let Some(fd) = self.upgrade_report_fd() {
            set.read(fd, Source::UpgradeReport);
        }
        if let Some(agent) = self.agent.as_ref() {
            if let Some(fd) = agent.socket() {
                let write = if agent.wants_to_write() { PollFlags::POLLOUT } else { PollFlags::empty() };
                set.add(fd, PollFlags::POLLIN | write, Source::Agent);
            }
        }
        set.read(self.signals.as_fd(), Source::Signals);
        self.control
            .clients
            .register(&mut set, Some(Source::ControlListener), |id, wants_write| Source::Control { id, wants_write });
        if let Some(http) = self.http.as_ref() {
            http.clients
                .register(&mut set, Some(Source::HttpListener), |id, wants_write| Source::Http { id, wants_write });
        }
        set.poll(timeout).map_err(|e| ProcessError::Signals(e).into())
    }

    fn dispatch(&mut self, ready: &[Source], now: Instant) {
        self.forking = Duration::ZERO;
        let (early, late): (Vec<Source>, Vec<Source>) = ready.iter().partition(|s| s.before_signals());
        for source in early {
            match source {
                Source::Config => self.read_config_channel(now),
                Source::HostStream(stream) => crate::host_output::flush(stream),
                Source::Output => {
                    if let Some(output) = self.output.as_mut() {
                        output.ready(now);
                    }
                }
                Source::Zygote => self.read_zygote(now),
                Source::UpgradeReport => self.read_upgrade_report(),
                Source::Agent => self.agent_ready(now),
                _ => unreachable!("partitioned out"),
            }
        }
        crate::host_output::report_drops();
        self.enforce_fence(now);
        self.start_agent_if_due(now);
        self.enforce_upgrade_deadline(now);
        if late.contains(&Source::Signals) {
            self.handle_signals(now);
        }
        if self.reap_pending {
            self.reap_children(now);
        }
        self.collect_backtraces(now);
        let mut http = Vec::new();
        for source in late {
            match source {
                Source::ControlListener => self.control.clients.accept_all(now),
                Source::Control { id, wants_write } => {
                    if let Some(request) = self.control.clients.ready(id, wants_write) {
                        self.answer(id, &request, now);
                    }
                }
                Source::HttpListener | Source::Http { .. } => http.push(source),
                Source::Signals => {}
                _ => unreachable!("partitioned out"),
            }
        }
        self.control.clients.expire(now);
        self.serve_http(&http, now);
        self.sample_history(now);
        // Deadlines only once every exited child is known to the core:
        // a process that already exited is never declared stuck.
        if !self.reap_pending {
            let actions = self.farm.handle(Event::Tick, now);
            self.apply(actions);
        }
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.update(&self.farm, now);
        }
    }
}

/// Milliseconds until `deadline`, rounded up so a deadline is never polled
/// a millisecond early; at most a minute, none without a deadline.
fn poll_timeout(deadline: Option<Instant>, now: Instant) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(at) => {
            let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
            PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}
