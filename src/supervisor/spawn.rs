//! Forking the farm's children: what each child must close, the program it
//! runs, and the shared page a worker gets for its life.

#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::unistd::Pid;

use super::config_channel::ConfigChannel;
use super::{Supervisor, SupervisorError};
use crate::farm::{Event, WorkerKey};
use crate::php;
use crate::process::shared_page::SharedSlots;
use crate::process::{self, ChildSetup};

impl Supervisor<'_> {
    /// Descriptors a forked child must not keep.
    pub(super) fn supervisor_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.signals.raw_fd()];
        fds.extend(self.control.all_fds());
        fds.extend(self.http.iter().flat_map(crate::metrics::http::HttpServer::all_fds));
        fds.extend(self.config_channel.as_ref().map(ConfigChannel::raw_fd));
        fds.extend(self.config.close_in_children.iter().copied());
        fds
    }

    pub(super) fn spawn_worker(&mut self, key: &WorkerKey) -> Event {
        let Some(state) = self.farm.job(&key.id) else { return Event::WorkerSpawnFailed(key.clone()) };
        let label = state.label(key.slot);
        let source_file = self.config.source_is_file.then(|| Path::new(&self.config.source));
        let job = &state.job;
        let mut program = match php::farm_worker_program(
            job,
            self.config.bootstrap.as_deref(),
            source_file,
            &self.config.argv,
            key.slot,
        ) {
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
        let setup =
            ChildSetup { nice: self.child_nice, open_files: self.child_open_files, close_fds: self.supervisor_fds() };
        let engine = self.engine;
        match process::spawn_child(&setup, |parent| program.run(engine, parent)) {
            Ok(pid) => {
                if let Some(page) = page {
                    self.pages.insert(pid.as_raw(), page);
                }
                tracing::info!("{label} ({}) started as pid {pid}", state.job.name);
                Event::WorkerStarted { key: key.clone(), pid: pid.as_raw() }
            }
            Err(e) => {
                if let (Some(page), Some(slots)) = (page, self.slots.as_mut()) {
                    slots.release(page);
                }
                tracing::error!("{label}: {e}");
                Event::WorkerSpawnFailed(key.clone())
            }
        }
    }

    pub(super) fn spawn_config_process(&mut self) -> Result<Pid, SupervisorError> {
        let (read_end, write_end) = process::message_pipe()?;
        let program = php::config_program(
            &self.config.source,
            self.config.source_is_file,
            self.config.interval_seconds,
            false,
            self.config.bootstrap.as_deref(),
            &self.config.argv,
            write_end.as_raw_fd(),
        )?;
        let mut close_fds = self.supervisor_fds();
        close_fds.push(read_end.as_raw_fd());
        let setup = ChildSetup { nice: self.child_nice, open_files: self.child_open_files, close_fds };
        let engine = self.engine;
        let pid = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
        drop(write_end);
        self.config_channel = Some(ConfigChannel::new(read_end));
        // A new process sends every entry in full.
        self.entry_cache.clear();
        tracing::debug!("configuration process started as pid {pid}");
        Ok(pid)
    }

    /// Gives a reaped worker's page back.
    pub(super) fn release_page(&mut self, pid: Pid) {
        if let (Some(page), Some(slots)) = (self.pages.remove(&pid.as_raw()), self.slots.as_mut()) {
            slots.release(page);
        }
    }
}
