//! Forking the farm's children: what each child must close, the program it
//! runs, and the shared page a worker gets for its life.

#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::unistd::Pid;

use super::config_channel::ConfigChannel;
use super::output;
use super::{Supervisor, SupervisorError};
use crate::farm::{Event, LogLevel, WorkerKey};
use crate::process::shared_page::{SharedPage, SharedSlots};
use crate::process::{self, ChildSetup, ChildStdio};

/// A child's output pipes: (read end, write end) each.
pub(super) struct OutputPipes {
    pub stdout: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    pub stderr: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

impl Supervisor<'_> {
    /// Descriptors a forked child must not keep.
    pub(super) fn supervisor_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.signals.raw_fd()];
        fds.extend(self.control.clients.all_fds());
        fds.extend(self.http.iter().flat_map(|http| http.clients.all_fds()));
        fds.extend(self.config_channel.as_ref().map(ConfigChannel::raw_fd));
        fds.extend(self.config.close_in_children.iter().copied());
        fds
    }

    pub(super) fn spawn_worker(&mut self, key: &WorkerKey) -> Event {
        let Some(state) = self.farm.job(&key.id) else { return Event::WorkerSpawnFailed(key.clone()) };
        let label = state.label(key.slot);
        let source_file = self.config.source_is_file.then(|| Path::new(&self.config.source));
        let job = &state.job;
        let launch = crate::launch::worker(
            job,
            self.config.bootstrap.as_deref(),
            source_file,
            None,
            key.slot,
            self.farm.unit_token(key),
        );
        let mut program = match launch.program(&self.config.argv) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{label}: cannot prepare the worker: {e}");
                return Event::WorkerSpawnFailed(key.clone());
            }
        };
        let page = self.slots.as_mut().and_then(SharedSlots::allocate);
        if let Some(page) = &page {
            program.set_shared_page(page.clone());
        }
        let name = state.job.name.clone();
        let job_user = state.job.user.clone();
        let pipes = self.output_pipes(&label);
        if pipes.is_some() {
            self.output_pipes_failed = false;
        }
        let mut setup = self.child_setup(pipes.as_ref(), None);
        setup.credentials = job_user.or_else(|| self.config.user.clone());
        let engine = self.engine;
        match process::spawn_child(&setup, |parent| program.run(engine, parent)) {
            Ok(pid) => {
                let read_ends = pipes.map(|p| (p.stdout.0, p.stderr.0));
                self.worker_forked(key, &label, name, pid.as_raw(), page, read_ends, "");
                Event::WorkerStarted { key: key.clone(), pid: pid.as_raw() }
            }
            Err(e) => {
                self.give_back_page(page);
                tracing::error!("{label}: {e}");
                Event::WorkerSpawnFailed(key.clone())
            }
        }
    }

    pub(super) fn spawn_config_process(&mut self) -> Result<Pid, SupervisorError> {
        let (read_end, write_end) = process::message_pipe()?;
        let program = crate::launch::config(
            &self.config.source,
            self.config.source_is_file,
            self.config.interval_seconds,
            false,
            self.config.bootstrap.as_deref(),
            write_end.as_raw_fd(),
        )
        .program(&self.config.argv)?;
        let pipes = self.output_pipes("the configuration process");
        let mut setup = self.child_setup(pipes.as_ref(), Some(write_end.as_raw_fd()));
        setup.close_fds.push(read_end.as_raw_fd());
        let engine = self.engine;
        let pid = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
        drop(write_end);
        self.children.insert(pid.as_raw(), super::children::ChildRole::ConfigProcess);
        self.capture(output::Source::Config { pid: pid.as_raw() }, pipes);
        self.config_channel = Some(ConfigChannel::new(read_end));
        // A new process sends every entry in full.
        self.entry_cache.clear();
        tracing::debug!("configuration process started as pid {pid}");
        Ok(pid)
    }

    /// A worker process exists (forked here or by the zygote): its page and
    /// output are its own from now on, and its start is logged once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn worker_forked(
        &mut self,
        key: &WorkerKey,
        label: &str,
        name: String,
        pid: i32,
        page: Option<crate::process::shared_page::SharedPage>,
        read_ends: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
        how: &str,
    ) {
        self.children.insert_worker(pid, page);
        let job = key.id.to_string();
        let subject =
            crate::telemetry::Subject { job: Some(&job), name: Some(&name), slot: Some(key.slot), pid: Some(pid) };
        crate::telemetry::log(LogLevel::Info, &format!("{label} ({name}) started as pid {pid}{how}"), subject);
        if let (Some(router), Some((stdout, stderr))) = (self.output.as_mut(), read_ends) {
            router.register(output::Source::Worker { id: key.id.clone(), name, slot: key.slot, pid }, stdout, stderr);
        }
    }

    /// What a child does before its body: the supervisor's descriptors
    /// closed (all but `keep_fds` and `also_keep`), its output on `pipes`.
    pub(super) fn child_setup(&self, pipes: Option<&OutputPipes>, also_keep: Option<RawFd>) -> ChildSetup {
        let keep_fds = match also_keep {
            None => std::sync::Arc::clone(&self.keep_fds),
            Some(fd) => {
                let mut keep = (*self.keep_fds).clone();
                keep.push(fd);
                keep.sort_unstable();
                std::sync::Arc::new(keep)
            }
        };
        ChildSetup {
            nice: self.child_nice,
            open_files: self.child_open_files,
            close_fds: self.supervisor_fds(),
            keep_fds: Some(keep_fds),
            stdio: pipes.map(|p| ChildStdio { stdout: p.stdout.1.as_raw_fd(), stderr: p.stderr.1.as_raw_fd() }),
            // The farm's user; a worker of a job with its own `user` replaces it.
            credentials: self.config.user.clone(),
        }
    }

    /// A pair of pipes for a child's stdout and stderr, when output is
    /// captured; without them (out of descriptors) the child writes to the
    /// host's own stdout and stderr, which is logged.
    pub(super) fn output_pipes(&mut self, whose: &str) -> Option<OutputPipes> {
        self.output.as_ref()?;
        match (process::output_pipe(), process::output_pipe()) {
            (Ok(stdout), Ok(stderr)) => Some(OutputPipes { stdout, stderr }),
            (Err(e), _) | (_, Err(e)) => {
                // Once until pipes work again: out of descriptors, every start would say it.
                if !self.output_pipes_failed {
                    self.output_pipes_failed = true;
                    tracing::warn!(
                        "{whose}: cannot create output pipes ({e}); it writes to the host's stdout and stderr \
                         (raise the open-files limit: ulimit -n, LimitNOFILE=)"
                    );
                }
                None
            }
        }
    }

    /// Starts forwarding a forked child's output (the write ends close here).
    pub(super) fn capture(&mut self, source: output::Source, pipes: Option<OutputPipes>) {
        if let (Some(router), Some(pipes)) = (self.output.as_mut(), pipes) {
            router.register(source, pipes.stdout.0, pipes.stderr.0);
        }
    }

    /// Whether a worker of job `id` runs as the farm's user (`--user`, or
    /// the host's own): the zygote runs as that user, so only those
    /// workers may be forked from it; a job with a `user` of its own is
    /// forked here, switching in the child before any of its code runs.
    pub(super) fn runs_as_farm_user(&self, id: &crate::job::JobId) -> bool {
        let Some(state) = self.farm.job(id) else { return true };
        let ids = |c: &crate::job::users::Credentials| (c.uid, c.gid, c.groups.clone());
        match (&state.job.user, &self.config.user) {
            (None, _) => true,
            (Some(own), Some(farm)) => ids(own) == ids(farm),
            (Some(_), None) => false,
        }
    }

    /// Returns a page that no process took (a failed fork, a start the
    /// zygote did not answer) to the pool.
    pub(super) fn give_back_page(&mut self, page: Option<SharedPage>) {
        if let (Some(page), Some(slots)) = (page, self.slots.as_mut()) {
            slots.release(page);
        }
    }
}
