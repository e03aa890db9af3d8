//! One handler per control request (pueue's model). Job requests are decided
//! by the core (`Farm::job_command`); these functions only turn requests
//! into events and outcomes into replies.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Supervisor;
use crate::control::server::ClientId;
use crate::control::{self, status, Request};
use crate::farm::{Event, JobCommand, Refusal};
use crate::job::JobId;
use crate::php;
use crate::process;

impl Supervisor<'_> {
    pub(super) fn answer(&mut self, client: ClientId, text: &str, now: Instant) {
        let reply = match Request::parse(text) {
            Err(error) => error.to_string(),
            Ok(request) => self.handle_request(request, now),
        };
        self.control.respond(client, &reply);
    }

    fn handle_request(&mut self, request: Request, now: Instant) -> String {
        match request {
            Request::Help => handle_help(),
            Request::Status => self.handle_status(now),
            Request::Version => handle_version(),
            Request::Reload => self.handle_reload(now),
            Request::Shutdown => self.handle_shutdown(now),
            Request::Job { id, command } => self.handle_job_command(&id, command, now),
            Request::RestartAll => self.handle_restart_all(now),
            Request::Signal { id, signal } => self.handle_signal(&id, signal),
        }
    }

    fn handle_status(&self, now: Instant) -> String {
        status::status_json(&self.farm, now, status::unix_now())
    }

    fn handle_reload(&mut self, now: Instant) -> String {
        let actions = self.farm.handle(Event::Reload, now);
        self.apply(actions);
        "Scheduled immediate configuration reload".to_string()
    }

    fn handle_shutdown(&mut self, now: Instant) -> String {
        let actions = self.farm.handle(Event::Shutdown, now);
        self.apply(actions);
        "lrpm: Shutting down process manager".to_string()
    }

    fn handle_job_command(&mut self, id: &JobId, command: JobCommand, now: Instant) -> String {
        let (outcome, actions) = self.farm.job_command(id, command, now);
        self.apply(actions);
        control::job_reply(id, command, outcome)
    }

    /// Restarts every job the core would restart one by one (removed jobs
    /// still stopping are left alone).
    fn handle_restart_all(&mut self, now: Instant) -> String {
        let ids: Vec<JobId> = self.farm.jobs().keys().cloned().collect();
        let mut restarted = 0;
        for id in &ids {
            let (outcome, actions) = self.farm.job_command(id, JobCommand::Restart, now);
            self.apply(actions);
            match outcome {
                Ok(()) => restarted += 1,
                Err(Refusal::ShuttingDown) => {
                    return format!("error: Will not restart, {}", control::refusal_reason(Refusal::ShuttingDown))
                }
                Err(_) => {}
            }
        }
        format!("Scheduled immediate restart of {restarted} job(s)")
    }

    /// Delivers exactly the signal asked for to the worker process (not its
    /// group), through a pidfd.
    fn handle_signal(&mut self, id: &JobId, signal: Signal) -> String {
        match self.farm.signal_target(id) {
            Err(Refusal::NoSuchJob) => format!("error: job {id} does not exist"),
            Err(refusal) => format!("error: cannot signal job {id}: {}", control::refusal_reason(refusal)),
            Ok(pid) => match process::signal_process(Pid::from_raw(pid), signal) {
                Ok(()) => format!("Sent {} to job {id} (pid {pid})", signal.as_str()),
                Err(e) => format!("error: cannot send {} to job {id} (pid {pid}): {e}", signal.as_str()),
            },
        }
    }
}

fn handle_help() -> String {
    format!("lrpm-host: {}", control::HELP)
}

fn handle_version() -> String {
    format!("lrpm-host {} (PHP {})", env!("CARGO_PKG_VERSION"), php::php_version())
}
