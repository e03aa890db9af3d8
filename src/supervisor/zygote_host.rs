//! The supervisor's side of the zygote (`zygote.rs` has the protocol):
//! starting it, asking it for workers, reading its replies, and restarting
//! it with backoff when it dies.

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::output;
use super::zygote::{self, PendingStart, Reply, Zygote};
use super::Supervisor;
use crate::farm::{Event, LogLevel, WorkerKey};
use crate::php;
use crate::process;

impl Supervisor<'_> {
    /// Forks the zygote; on failure it is retried later (workers are forked
    /// by the supervisor meanwhile).
    pub(super) fn start_zygote(&mut self, now: Instant) {
        let (ours, theirs) = match zygote::socket_pair() {
            Ok(pair) => pair,
            Err(e) => return self.zygote_down(&format!("cannot create its socket: {e}"), Duration::ZERO, now),
        };
        let program = match php::zygote_program(self.config.bootstrap.as_deref(), &self.config.argv, theirs.as_raw_fd())
        {
            Ok(program) => program,
            Err(e) => return self.zygote_down(&format!("cannot prepare it: {e}"), Duration::ZERO, now),
        };
        let pipes = self.output_pipes("the zygote");
        let setup = self.child_setup(pipes.as_ref(), Some(theirs.as_raw_fd()));
        let engine = self.engine;
        match process::spawn_child(&setup, |parent| program.run(engine, parent)) {
            Ok(pid) => {
                drop(theirs);
                self.capture(output::Source::Zygote { pid: pid.as_raw() }, pipes);
                let subject = crate::telemetry::Subject { pid: Some(pid.as_raw()), ..Default::default() };
                let message = format!("zygote running as pid {pid}; it runs the bootstrap once");
                crate::telemetry::log(LogLevel::Info, &message, subject);
                self.zygote = Zygote::Running(zygote::Running::new(pid.as_raw(), ours, now));
            }
            Err(e) => self.zygote_down(&format!("cannot fork it: {e}"), Duration::ZERO, now),
        }
    }

    /// It is not running (after `ran`): workers are forked directly until
    /// it is started again, with backoff.
    fn zygote_down(&mut self, why: &str, ran: Duration, now: Instant) {
        let delay = self.zygote_backoff.after(ran);
        tracing::warn!(
            "zygote: {why}; workers are forked by the supervisor until it runs again (in {}s)",
            delay.as_secs()
        );
        self.zygote = Zygote::Down { at: crate::farm::lifecycle::later(now, delay) };
    }

    /// Hands the start of `key` to the zygote: asked now when it is ready,
    /// kept until it is when it is starting. None means: fork it yourself.
    pub(super) fn start_through_zygote(&mut self, key: &WorkerKey, now: Instant) -> Option<()> {
        let Zygote::Running(running) = &mut self.zygote else { return None };
        if self.farm.is_shutting_down() {
            return None;
        }
        if !running.ready {
            if now.saturating_duration_since(running.since) >= zygote::STARTUP_WAIT {
                return None;
            }
            running.awaiting.push(key.clone());
            return Some(());
        }
        self.request_from_zygote(key)
    }

    /// Starts that waited for the zygote: to it once ready, else directly.
    pub(super) fn release_awaiting(&mut self, now: Instant) {
        let awaiting = match &mut self.zygote {
            Zygote::Running(running) => std::mem::take(&mut running.awaiting),
            _ => return,
        };
        for key in awaiting {
            if self.request_from_zygote(&key).is_none() {
                self.start_directly(&key, now);
            }
        }
    }

    /// Forks the worker of `key` here, as without a zygote.
    fn start_directly(&mut self, key: &WorkerKey, now: Instant) {
        let event = self.spawn_worker(key);
        let actions = self.farm.handle(event, now);
        self.apply(actions);
    }

    /// Starts waiting for a zygote that did not become ready in time.
    pub(super) fn zygote_startup_overdue(&mut self, now: Instant) {
        let overdue = matches!(&self.zygote, Zygote::Running(r) if r.startup_deadline().is_some_and(|at| at <= now));
        if overdue {
            tracing::warn!(
                "zygote: not ready {}s after it started (a slow bootstrap?); forking waiting workers directly",
                zygote::STARTUP_WAIT.as_secs()
            );
            let awaiting = match &mut self.zygote {
                Zygote::Running(running) => std::mem::take(&mut running.awaiting),
                _ => Vec::new(),
            };
            for key in awaiting {
                self.start_directly(&key, now);
            }
        }
    }

    /// Asks the ready zygote for the worker of `key`; None means: fork it yourself.
    fn request_from_zygote(&mut self, key: &WorkerKey) -> Option<()> {
        let Zygote::Running(running) = &self.zygote else { return None };
        if !running.ready || self.farm.is_shutting_down() {
            return None;
        }
        let state = self.farm.job(&key.id)?;
        let label = state.label(key.slot);
        let name = state.job.name.clone();
        let source_file = self.config.source_is_file.then(|| std::path::Path::new(&self.config.source));
        let launch = php::worker_launch(&state.job, self.config.bootstrap.as_deref(), source_file, None, key.slot);
        let params = launch.params.to_string();
        let page = self.slots.as_mut().and_then(crate::process::shared_page::SharedSlots::allocate);
        let pipes = self.output_pipes(&label);
        let Zygote::Running(running) = &mut self.zygote else { return None };
        let write_ends = pipes.as_ref().map(|p| (p.stdout.1.as_raw_fd(), p.stderr.1.as_raw_fd()));
        // A NUL in a job's name or id is shown, as on the direct path (C text).
        let title = launch.title.replace('\0', "\\0");
        match running.request(&title, &params, page.as_ref(), launch.stop_grace, write_ends) {
            Ok(()) => {
                running.pending.push_back(PendingStart {
                    key: key.clone(),
                    name,
                    label,
                    pipes: pipes.map(|p| (p.stdout.0, p.stderr.0)),
                    page,
                });
                Some(())
            }
            Err(e) => {
                tracing::debug!("{label}: the zygote cannot take the request ({e}); forking it directly");
                if let (Some(page), Some(slots)) = (page, self.slots.as_mut()) {
                    slots.release(page);
                }
                None
            }
        }
    }

    /// Handles every reply the zygote has sent.
    pub(super) fn read_zygote(&mut self, now: Instant) {
        let Zygote::Running(running) = &self.zygote else { return };
        for reply in running.replies() {
            match reply {
                Reply::Ready => {
                    if let Zygote::Running(running) = &mut self.zygote {
                        running.ready = true;
                        let subject = crate::telemetry::Subject { pid: Some(running.pid), ..Default::default() };
                        crate::telemetry::log(LogLevel::Info, "zygote ready: workers are forked from it", subject);
                    }
                    self.release_awaiting(now);
                }
                Reply::Refused(why) => {
                    tracing::error!(
                        "zygote refused to serve: {why}; workers are forked by the supervisor (without --zygote's sharing)"
                    );
                    if let Zygote::Running(running) = &mut self.zygote {
                        process::signal_group(Pid::from_raw(running.pid), Signal::SIGTERM);
                        running.ready = false;
                    }
                    self.zygote_refused = true;
                    self.release_awaiting(now);
                }
                Reply::Started(pid) => self.zygote_started(pid, now),
                Reply::Failed(errno) => {
                    let Zygote::Running(running) = &mut self.zygote else { return };
                    let Some(start) = running.pending.pop_front() else { continue };
                    if let (Some(page), Some(slots)) = (start.page, self.slots.as_mut()) {
                        slots.release(page);
                    }
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
    }

    fn zygote_started(&mut self, pid: i32, now: Instant) {
        let Zygote::Running(running) = &mut self.zygote else { return };
        let Some(start) = running.pending.pop_front() else { return };
        self.worker_forked(&start.key, &start.label, start.name, pid, start.page, start.pipes, " (from the zygote)");
        let actions = self.farm.handle(Event::WorkerStarted { key: start.key, pid }, now);
        self.apply(actions);
    }

    /// The zygote was reaped: the starts it still owed fail (they are
    /// retried like any failed fork), and it is started again later.
    pub(super) fn zygote_exited(&mut self, exit: crate::farm::ExitKind, now: Instant) {
        self.read_zygote(now);
        if let Zygote::Running(running) = &mut self.zygote {
            running.ready = false;
        }
        self.release_awaiting(now);
        let Zygote::Running(running) = std::mem::replace(&mut self.zygote, Zygote::Off) else { return };
        let ran = now.saturating_duration_since(running.since);
        for start in running.pending {
            if let (Some(page), Some(slots)) = (start.page, self.slots.as_mut()) {
                slots.release(page);
            }
            let actions = self.farm.handle(Event::WorkerSpawnFailed(start.key), now);
            self.apply(actions);
        }
        if self.zygote_refused || self.farm.is_shutting_down() {
            self.zygote = Zygote::Refused;
            return;
        }
        let described = exit.describe(crate::farm::ProcessKind::Worker);
        self.zygote_down(&format!("pid {} ended ({described})", running.pid), ran, now);
    }

    /// At shutdown, once it owes no reply: the zygote is told to end.
    pub(super) fn stop_zygote_if_idle(&mut self) {
        if let Zygote::Running(running) = &mut self.zygote {
            if running.pending.is_empty() && !running.stopping {
                running.stopping = true;
                process::signal_group(Pid::from_raw(running.pid), Signal::SIGTERM);
            }
        }
    }

    /// The host is exiting: a zygote still there goes first (no process
    /// outlives the host).
    pub(super) fn reap_zygote(&mut self) {
        if let Zygote::Running(running) = std::mem::replace(&mut self.zygote, Zygote::Off) {
            process::signal_group(Pid::from_raw(running.pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(running.pid), None);
        }
    }
}
