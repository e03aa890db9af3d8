//! The supervisor's side of the zygote (`zygote.rs` has the protocol):
//! starting it, asking it for workers, reading its replies, and restarting
//! it with backoff when it dies.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::output;
use super::zygote::{self, Connection, PendingStart, Reply};

use super::children::ChildRole;
use super::Supervisor;
use crate::farm::zygote::{Disabled, StartRoute, STARTUP_WAIT};
use crate::farm::{Event, LogLevel, WorkerKey};
use crate::process;

/// What became of a request to the zygote.
enum Request {
    Sent,
    /// Its socket is full: queued until replies make room.
    Busy,
    /// It cannot take it: fork it here.
    Fallback,
}

impl Supervisor<'_> {
    /// Forks the zygote; on failure it is retried later (workers are forked
    /// by the supervisor meanwhile).
    pub(super) fn start_zygote(&mut self, now: Instant) {
        let (ours, theirs) = match zygote::socket_pair() {
            Ok(pair) => pair,
            Err(e) => return self.zygote_start_failed(&format!("cannot create its socket: {e}"), now),
        };
        let launch = crate::launch::zygote(self.config.bootstrap.as_deref(), theirs.as_raw_fd());
        let program = match launch.program(&self.config.argv) {
            Ok(program) => program,
            Err(e) => return self.zygote_start_failed(&format!("cannot prepare it: {e}"), now),
        };
        let pipes = self.output_pipes("the zygote");
        let setup = self.child_setup(pipes.as_ref(), Some(theirs.as_raw_fd()));
        let engine = self.engine;
        match process::spawn_child(&setup, |parent| program.run(engine, parent)) {
            Ok(pid) => {
                drop(theirs);
                self.children.insert(pid.as_raw(), ChildRole::Zygote);
                self.capture(output::Source::Zygote { pid: pid.as_raw() }, pipes);
                let subject = crate::telemetry::Subject { pid: Some(pid.as_raw()), ..Default::default() };
                let message = format!("zygote running as pid {pid}; it runs the bootstrap once");
                crate::telemetry::log(LogLevel::Info, &message, subject);
                self.zygote.started(pid.as_raw(), Connection::new(ours), now);
            }
            Err(e) => self.zygote_start_failed(&format!("cannot fork it: {e}"), now),
        }
    }

    /// It could not be started: workers are forked directly until it is
    /// started again, with backoff.
    fn zygote_start_failed(&mut self, why: &str, now: Instant) {
        let delay = self.zygote.start_failed(now);
        tracing::warn!(
            "zygote: {why}; workers are forked by the supervisor until it runs again (in {}s)",
            delay.as_secs()
        );
    }

    /// Hands the start of `key` to the zygote: asked now when it is ready
    /// and has room, queued until then. None means: fork it yourself.
    pub(super) fn start_through_zygote(&mut self, key: &WorkerKey, now: Instant) -> Option<()> {
        if self.farm.is_shutting_down() || !self.runs_as_farm_user(&key.id) {
            return None;
        }
        let route = self.zygote.route(now);
        let link = &mut self.zygote.process_mut()?.link;
        match route {
            StartRoute::Direct => return None,
            StartRoute::Wait => {
                link.awaiting.push_back(key.clone());
                return Some(());
            }
            StartRoute::Zygote if !link.awaiting.is_empty() || !link.has_room() => {
                link.awaiting.push_back(key.clone());
                return Some(());
            }
            StartRoute::Zygote => {}
        }
        match self.request_from_zygote(key) {
            Request::Sent => Some(()),
            Request::Busy => {
                if let Some(process) = self.zygote.process_mut() {
                    process.link.awaiting.push_back(key.clone());
                }
                Some(())
            }
            Request::Fallback => None,
        }
    }

    /// Starts that wait: to the zygote as far as its window allows when it
    /// is ready (a zygote still starting keeps them); forked here when it
    /// cannot take them (`fallback`: refused, stuck or too slow to start),
    /// or when the farm is shutting down.
    pub(super) fn release_awaiting(&mut self, now: Instant, fallback: bool) {
        let shutting_down = self.farm.is_shutting_down();
        loop {
            let route = if fallback || shutting_down { StartRoute::Direct } else { self.zygote.route(now) };
            let Some(process) = self.zygote.process_mut() else { return };
            match route {
                StartRoute::Wait => return,
                StartRoute::Zygote if !process.link.has_room() => return,
                StartRoute::Zygote | StartRoute::Direct => {}
            }
            let Some(key) = process.link.awaiting.pop_front() else { return };
            if !self.farm.start_wanted(&key) {
                self.start_not_wanted(key, now);
                continue;
            }
            if route == StartRoute::Direct {
                self.start_directly(&key, now);
                continue;
            }
            match self.request_from_zygote(&key) {
                Request::Sent => {}
                Request::Busy => {
                    if let Some(process) = self.zygote.process_mut() {
                        process.link.awaiting.push_front(key);
                    }
                    return;
                }
                Request::Fallback => self.start_directly(&key, now),
            }
        }
    }

    /// A start that waited for the zygote and was overtaken meanwhile (its
    /// slot restarted, stopped or removed, the farm shutting down): nothing
    /// is forked, and the core decides what its slot does now.
    fn start_not_wanted(&mut self, key: WorkerKey, now: Instant) {
        let actions = self.farm.handle(Event::WorkerStartDeferred(key), now);
        self.apply(actions);
    }

    /// Forks the worker of `key` here, as without a zygote.
    fn start_directly(&mut self, key: &WorkerKey, now: Instant) {
        if !self.farm.start_wanted(key) {
            return self.start_not_wanted(key.clone(), now);
        }
        let event = self.spawn_worker(key);
        let actions = self.farm.handle(event, now);
        self.apply(actions);
    }

    /// The zygote's next deadline: its lifecycle's (a restart, the startup
    /// wait) or, while it serves, its oldest unanswered request's (a
    /// stopping zygote is not killed as stuck: its deadline would only wake
    /// the loop for nothing until it is reaped).
    pub(super) fn zygote_deadline(&self) -> Option<Instant> {
        let link = self.zygote.process().map(|p| &p.link);
        let waiting = link.is_some_and(|l| !l.awaiting.is_empty());
        let serving = self.zygote.is_ready() || self.zygote.is_starting();
        let stuck_at = link.filter(|_| serving).and_then(Connection::reply_deadline);
        [self.zygote.deadline(waiting), stuck_at].into_iter().flatten().min()
    }

    /// A zygote past a deadline: due to start again, not ready
    /// `STARTUP_WAIT` after it started (the starts waiting for it are forked
    /// here), or a request unanswered for `REPLY_WAIT` (it is killed; its
    /// exit retries what it owed).
    pub(super) fn zygote_overdue(&mut self, now: Instant) {
        if self.zygote.start_due(now) && !self.farm.is_shutting_down() {
            return self.start_zygote(now);
        }
        let Some(process) = self.zygote.process() else { return };
        if !process.link.awaiting.is_empty() && self.zygote.startup_overdue(now) {
            tracing::warn!(
                "zygote: not ready {}s after it started (a slow bootstrap?); forking waiting workers directly",
                STARTUP_WAIT.as_secs()
            );
            return self.release_awaiting(now, true);
        }
        if !process.link.reply_deadline().is_some_and(|at| at <= now) {
            return;
        }
        let owed = process.link.pending.len();
        if let Some(pid) = self.zygote.kill_stuck() {
            tracing::error!(
                "zygote: pid {pid} left a start unanswered for {}s; killing it (it is started again, and the {owed} \
                 start(s) it owed are retried)",
                zygote::REPLY_WAIT.as_secs(),
            );
            process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Asks the ready zygote for the worker of `key`.
    fn request_from_zygote(&mut self, key: &WorkerKey) -> Request {
        if !self.zygote.is_ready() || self.farm.is_shutting_down() || !self.runs_as_farm_user(&key.id) {
            return Request::Fallback;
        }
        let Some(state) = self.farm.job(&key.id) else { return Request::Fallback };
        let label = state.label(key.slot);
        let name = state.job.name.clone();
        let source_file = self.config.source_is_file.then(|| std::path::Path::new(&self.config.source));
        let token = self.farm.unit_token(key);
        let launch =
            crate::launch::worker(&state.job, self.config.bootstrap.as_deref(), source_file, None, key.slot, token);
        let params = launch.params.to_string();
        let page = self.slots.as_mut().and_then(crate::process::shared_page::SharedSlots::allocate);
        let pipes = self.output_pipes(&label);
        let Some(process) = self.zygote.process_mut() else { return Request::Fallback };
        let link = &mut process.link;
        let write_ends = pipes.as_ref().map(|p| (p.stdout.1.as_raw_fd(), p.stderr.1.as_raw_fd()));
        // A NUL in a job's name or id is shown, as on the direct path (C text).
        let title = launch.title.replace('\0', "\\0");
        let stop_grace = launch.stop_grace.unwrap_or_default();
        let sent = link.request(&title, &params, page.as_ref(), stop_grace, write_ends);
        if sent.is_ok() {
            link.pending.push_back(PendingStart {
                key: key.clone(),
                sent: Instant::now(),
                name,
                label,
                pipes: pipes.map(|p| (p.stdout.0, p.stderr.0)),
                page,
            });
            return Request::Sent;
        }
        let busy = sent == Err(nix::errno::Errno::EAGAIN) && !link.pending.is_empty();
        self.give_back_page(page);
        if busy {
            // Its replies will make room.
            return Request::Busy;
        }
        let e = sent.expect_err("not sent");
        tracing::debug!("{label}: the zygote cannot take the request ({e}); forking it directly");
        Request::Fallback
    }

    /// Handles every reply the zygote has sent, then sends the starts that
    /// waited for room.
    pub(super) fn read_zygote(&mut self, now: Instant) {
        let Some(process) = self.zygote.process() else { return };
        let replies = process.link.replies();
        let answered = !replies.is_empty();
        for reply in replies {
            match reply {
                Reply::Ready(reserved_kib) => {
                    if self.zygote.ready() {
                        let subject = crate::telemetry::Subject { pid: self.zygote.pid(), ..Default::default() };
                        let message = format!(
                            "zygote ready: workers are forked from it ({reserved_kib} KiB of the bootstrap's free \
                             heap slots kept, so that workers allocate on pages of their own)"
                        );
                        crate::telemetry::log(LogLevel::Info, &message, subject);
                    }
                    self.release_awaiting(now, false);
                }
                Reply::Refused(why) => {
                    tracing::warn!(
                        "zygote refused to serve: {why}; workers are forked by the supervisor, each running the \
                         bootstrap itself (as with --no-zygote)"
                    );
                    if let Some(pid) = self.zygote.stop(Disabled::Refused) {
                        process::signal_group(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    self.release_awaiting(now, true);
                }
                Reply::Started(pid) => self.zygote_started(pid, now),
                Reply::Stale(what) => return self.replace_stale_zygote(&what, now),
                Reply::Failed(errno) => {
                    let Some(process) = self.zygote.process_mut() else { return };
                    let Some(start) = process.link.pending.pop_front() else { continue };
                    self.give_back_page(start.page);
                    crate::telemetry::log(
                        LogLevel::Error,
                        &format!("{}: the zygote could not fork it: {errno}", start.label),
                        crate::telemetry::Subject::default(),
                    );
                    let actions = self.farm.handle(Event::WorkerSpawnFailed(start.key), now);
                    self.apply(actions);
                }
            }
        }
        if answered {
            self.release_awaiting(now, false);
        }
    }

    /// The zygote found that code it loaded changed (a deploy) and ended: a
    /// new one is started, and the starts the old one had not answered, and
    /// those waiting, go to it (or are forked here if it cannot start).
    fn replace_stale_zygote(&mut self, what: &str, now: Instant) {
        let Some(old) = self.zygote.retire(now) else { return };
        let subject = crate::telemetry::Subject { pid: Some(old.pid), ..Default::default() };
        let message = format!(
            "zygote: {what}; starting a new zygote with the code now on disk (running workers keep the code they \
             have until they are replaced)"
        );
        crate::telemetry::log(LogLevel::Info, &message, subject);
        let mut awaiting = VecDeque::new();
        for start in old.link.pending {
            self.give_back_page(start.page);
            awaiting.push_back(start.key);
        }
        awaiting.extend(old.link.awaiting);
        self.children.retire_zygote(old.pid);
        self.start_zygote(now);
        match self.zygote.process_mut() {
            Some(new) => new.link.awaiting = awaiting,
            None => {
                for key in awaiting {
                    self.start_directly(&key, now);
                }
            }
        }
    }

    fn zygote_started(&mut self, pid: i32, now: Instant) {
        let Some(process) = self.zygote.process_mut() else { return };
        let Some(start) = process.link.pending.pop_front() else { return };
        self.worker_forked(&start.key, &start.label, start.name, pid, start.page, start.pipes, " (from the zygote)");
        let actions = self.farm.handle(Event::WorkerStarted { key: start.key, pid }, now);
        self.apply(actions);
    }

    /// Process `pid`, the zygote, was reaped: the starts waiting for it are
    /// forked here, those it still owed fail (they are retried like any
    /// failed fork), and it is started again later unless it was stopped
    /// for good.
    pub(super) fn zygote_exited(&mut self, pid: i32, exit: crate::farm::ExitKind, now: Instant) {
        // Its last replies: the pids of workers it forked before it ended.
        self.read_zygote(now);
        // None: it reported itself stale in those replies, and was retired.
        let Some(ended) = self.zygote.exited(pid, now, self.farm.is_shutting_down()) else { return };
        for key in ended.process.link.awaiting {
            self.start_directly(&key, now);
        }
        for start in ended.process.link.pending {
            self.give_back_page(start.page);
            let actions = self.farm.handle(Event::WorkerSpawnFailed(start.key), now);
            self.apply(actions);
        }
        if let Some(delay) = ended.restart_in {
            let described = exit.describe(crate::farm::ProcessKind::Worker, crate::farm::PhpEnd::Unknown);
            tracing::warn!(
                "zygote: pid {pid} ended ({described}); workers are forked by the supervisor until it runs again \
                 (in {}s)",
                delay.as_secs()
            );
        }
    }

    /// At shutdown, once it owes no reply: the zygote is told to end (one
    /// that is down is not started again).
    pub(super) fn stop_zygote_if_idle(&mut self) {
        if self.zygote.process().is_some_and(|p| !p.link.pending.is_empty()) {
            return;
        }
        if let Some(pid) = self.zygote.stop(Disabled::ShutDown) {
            process::signal_group(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// The host is exiting: a zygote still there goes first (no process
    /// outlives the host).
    pub(super) fn reap_zygote(&mut self) {
        if let Some(process) = self.zygote.take(Disabled::ShutDown) {
            self.children.remove(process.pid);
            process::kill_group_and_wait(Pid::from_raw(process.pid));
        }
    }
}
