//! One handler per control request (pueue's model). Job requests are decided
//! by the core (`Farm::job_command`); these functions only turn requests
//! into events and outcomes into replies.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Supervisor;
use crate::control::server::ClientId;
use crate::control::{self, status, Reply, Request};
use crate::farm::{Event, JobCommand, Refusal};
use crate::job::JobId;
use crate::php;
use crate::process;

/// How long `status` requests may spend reading workers' /proc figures
/// (3 to 8 µs each): at most 5 ms at once, a tenth of the time on average,
/// so the loop stays responsive on a farm of any size and with any number
/// of clients asking; the figures a request has no time for come from
/// earlier ones (`usageAgeMs` says how old they are).
const USAGE_READ_BUDGET: process::ReadBudget = process::ReadBudget { burst: Duration::from_millis(5), share: 10 };

impl Supervisor<'_> {
    pub(super) fn answer(&mut self, client: ClientId, text: &str, now: Instant) {
        let reply = match Request::parse(text) {
            Err(error) => Some(Reply::from(error)),
            Ok(request) => self.handle_request(client, request, now),
        };
        // None: the answer comes later (an upgrade's outcome).
        if let Some(reply) = reply {
            self.control.respond(client, &reply.wire());
        }
    }

    fn handle_request(&mut self, client: ClientId, request: Request, now: Instant) -> Option<Reply> {
        Some(match request {
            Request::Help => handle_help(),
            Request::Status => self.handle_status(now),
            Request::Version => handle_version(),
            Request::Metrics => Reply::Done(self.metrics_text(now)),
            Request::Reload => self.handle_reload(now),
            Request::ReopenLogs => handle_reopen_logs(),
            Request::Shutdown => self.handle_shutdown(now),
            Request::Job { id, command } => self.handle_job_command(&id, command, now),
            Request::RestartAll => self.handle_every_job(JobCommand::Restart, now),
            Request::RecycleAll => self.handle_every_job(JobCommand::Recycle, now),
            Request::Upgrade => return self.handle_upgrade(client, now),
            Request::Cluster => self.handle_cluster(now),
            Request::Drain => self.handle_drain(),
            Request::Undrain => self.handle_undrain(),
            Request::Signal { id, signal } => self.handle_signal(&id, signal),
            Request::Backtrace { target } => return self.handle_backtrace(client, &target, now),
        })
    }

    fn handle_status(&mut self, now: Instant) -> Reply {
        Reply::Done(self.status_text(now))
    }

    /// The status document (`status`, the dashboard's `/api/status`).
    pub(super) fn status_text(&mut self, now: Instant) -> String {
        let processes: Vec<(i32, Instant)> = self
            .farm
            .jobs()
            .values()
            .flat_map(|job| job.slots.values())
            .filter_map(|slot| Some((slot.phase.pid()?, slot.phase.since()?)))
            .collect();
        let refreshed = self.usage.refresh(&processes, USAGE_READ_BUDGET);
        if refreshed.left > 0 {
            tracing::debug!(
                "status: read /proc for {} processes within the budget; {} keep an earlier reading",
                refreshed.read,
                refreshed.left
            );
        }
        let read_at = Instant::now();
        let figures = |pid| status::PidFigures {
            cycles: self.cycle_figures(pid),
            usage: self.usage.get(pid, read_at),
            progress: self.children.page(pid).and_then(|page| {
                let heartbeat = page.heartbeat();
                (heartbeat.progress_calls > 0).then(|| status::ProgressStatus {
                    calls: heartbeat.progress_calls,
                    ago_ms: since_ns(heartbeat.progress_ns).as_secs_f64() * 1000.0,
                    note: heartbeat.progress_note,
                })
            }),
            tasks: self.children.page(pid).map(|page| {
                let tasks = page.tasks();
                status::TaskStatus {
                    running: tasks.running,
                    started: tasks.started,
                    failed: tasks.failed,
                    timed_out: tasks.timed_out,
                    pids: tasks.pids,
                }
            }),
        };
        let owners = self.slot_owners();
        status::status_json(&self.farm, &figures, &owners, now, status::unix_now())
    }

    fn handle_reload(&mut self, now: Instant) -> Reply {
        let actions = self.farm.handle(Event::Reload, now);
        self.apply(actions);
        Reply::done("Scheduled immediate configuration reload")
    }

    fn handle_shutdown(&mut self, now: Instant) -> Reply {
        let actions = self.farm.handle(Event::Shutdown, now);
        self.apply(actions);
        Reply::done("lrpm: Shutting down process manager")
    }

    fn handle_job_command(&mut self, id: &JobId, command: JobCommand, now: Instant) -> Reply {
        self.run_job_command(id, command, now).1
    }

    /// A command on one job, decided by the core: its outcome and the reply
    /// (the control socket's and the dashboard's actions).
    pub(super) fn run_job_command(
        &mut self,
        id: &JobId,
        command: JobCommand,
        now: Instant,
    ) -> (Result<(), Refusal>, Reply) {
        let (outcome, actions) = self.farm.job_command(id, command, now);
        self.apply(actions);
        (outcome, control::job_reply(id, command, outcome))
    }

    /// `restart all` and `recycle all`: the command on every job, as one
    /// request per job would (removed jobs still stopping, and jobs with
    /// nothing to recycle, are left alone).
    fn handle_every_job(&mut self, command: JobCommand, now: Instant) -> Reply {
        let ids: Vec<JobId> = self.farm.jobs().keys().cloned().collect();
        let mut accepted = 0;
        for id in &ids {
            let (outcome, actions) = self.farm.job_command(id, command, now);
            self.apply(actions);
            match outcome {
                Ok(()) => accepted += 1,
                Err(Refusal::ShuttingDown) => {
                    let verb = control::verb(command);
                    return Reply::Refused(format!(
                        "Will not {verb}, {}",
                        control::refusal_reason(Refusal::ShuttingDown)
                    ));
                }
                Err(_) => {}
            }
        }
        Reply::Done(match command {
            JobCommand::Recycle => format!("Scheduled rolling recycle of {accepted} job(s)"),
            _ => format!("Scheduled immediate {} of {accepted} job(s)", control::verb(command)),
        })
    }

    /// Delivers exactly the signal asked for to each of the job's worker
    /// processes (not their groups), through pidfds.
    fn handle_signal(&mut self, id: &JobId, signal: Signal) -> Reply {
        let targets = match self.farm.signal_targets(id) {
            Err(Refusal::NoSuchJob) => return Reply::Refused(format!("job {id} does not exist")),
            Err(refusal) => {
                return Reply::Refused(format!("cannot signal job {id}: {}", control::refusal_reason(refusal)))
            }
            Ok(targets) => targets,
        };
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        for (_, pid) in targets {
            match process::signal_process(Pid::from_raw(pid), signal) {
                Ok(()) => sent.push(pid.to_string()),
                Err(e) => failed.push(format!("pid {pid}: {e}")),
            }
        }
        if failed.is_empty() {
            let noun = if sent.len() == 1 { "pid" } else { "pids" };
            Reply::Done(format!("Sent {} to job {id} ({noun} {})", signal.as_str(), sent.join(", ")))
        } else {
            Reply::Refused(format!(
                "cannot send {} to job {id} ({}); sent to: {}",
                signal.as_str(),
                failed.join("; "),
                if sent.is_empty() { "none".to_string() } else { sent.join(", ") }
            ))
        }
    }
}

/// How long ago a CLOCK_MONOTONIC reading from a page was.
fn since_ns(monotonic_ns: u64) -> Duration {
    Duration::from_nanos(process::monotonic_now_ns().saturating_sub(monotonic_ns))
}

fn handle_help() -> Reply {
    Reply::Done(format!("lrpm-host: {}", control::HELP))
}

fn handle_reopen_logs() -> Reply {
    match crate::log_file::reopen() {
        None => Reply::refused("no --log-file to reopen: the log goes to stdout and stderr"),
        Some(Ok(())) => {
            let path = crate::log_file::path().map(|p| p.display().to_string()).unwrap_or_default();
            tracing::info!("log file {path} reopened (reopen-logs)");
            Reply::Done(format!("Reopened {path}"))
        }
        Some(Err(e)) => {
            tracing::error!("cannot reopen the log file: {e}; still writing to the file it had");
            Reply::Refused(format!("cannot reopen the log file: {e}; still writing to the file it had"))
        }
    }
}

fn handle_version() -> Reply {
    Reply::Done(format!("lrpm-host {} (PHP {})", env!("CARGO_PKG_VERSION"), php::php_version()))
}
