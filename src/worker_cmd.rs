//! `lrpm-host worker CLASS`: one worker in the foreground, forked from the
//! booted parent, for debugging. The first SIGTERM/SIGINT asks the worker to
//! stop after its current cycle; a second one kills it.

#![forbid(unsafe_code)]

use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::job::{DescribedJob, JobId, ValidationError};
use crate::php::{Engine, PhpError};
use crate::process::shared_page::SharedPage;
use crate::process::{self, ChildSetup, ExitKind, ProcessError, SignalEvents};

#[derive(Debug, Error)]
pub enum WorkerCmdError {
    #[error("--job is not valid JSON: {0}")]
    JobJson(serde_json::Error),
    #[error("--job must be a JSON object, got {0}")]
    JobNotObject(String),
    #[error("the job is invalid:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ValidationError>),
    #[error(transparent)]
    Php(#[from] PhpError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot map the worker's shared page: {0}")]
    SharedPage(nix::errno::Errno),
}

/// Builds the job for `worker CLASS [--job JSON]`, filling what is missing.
pub fn debug_job(class: &str, id: &str, job_json: Option<&str>) -> Result<crate::job::Job, WorkerCmdError> {
    let mut job: Map<String, Value> = match job_json {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text).map_err(WorkerCmdError::JobJson)? {
            Value::Object(map) => map,
            other => return Err(WorkerCmdError::JobNotObject(crate::job::json_php_type(&other).to_string())),
        },
    };
    job.entry("name").or_insert_with(|| Value::from(class));
    job.entry("workerClass").or_insert_with(|| Value::from(class));
    job.entry("mtime").or_insert_with(|| Value::from(0));
    job.entry("workerConfig").or_insert_with(|| Value::Array(Vec::new()));
    let (job, unknown) =
        DescribedJob::from_json(JobId::parse(id), Value::Object(job)).validate().map_err(WorkerCmdError::Invalid)?;
    for field in unknown {
        eprintln!("lrpm-host: {field}");
    }
    Ok(job)
}

/// Runs the worker and returns the exit code lrpm-host should exit with:
/// the worker's own, or 128 + signal when it was killed.
pub fn run(
    engine: &Engine,
    job: &crate::job::Job,
    bootstrap: Option<&Path>,
    source_file: Option<&Path>,
    cycles: Option<u64>,
    argv: &[String],
    user: Option<std::sync::Arc<crate::job::users::Credentials>>,
) -> Result<i32, WorkerCmdError> {
    let keep_fds = process::descriptors_for_children();
    let mut program = crate::launch::worker(job, bootstrap, source_file, cycles, 0, None).program(argv)?;
    let page = SharedPage::new().map_err(WorkerCmdError::SharedPage)?;
    program.set_shared_page(page.clone());
    let mut signals = SignalEvents::new()?;
    let setup = ChildSetup {
        close_fds: vec![signals.raw_fd()],
        keep_fds: Some(std::sync::Arc::new(keep_fds)),
        credentials: user,
        ..Default::default()
    };
    let child = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
    tracing::debug!(pid = child.as_raw(), "worker started");

    let mut stop_requests = 0;
    loop {
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ProcessError::Signals(e).into()),
        }
        for sig in signals.drain() {
            match sig {
                Signal::SIGCHLD => {
                    for (pid, exit) in process::reap_exited(|pid| pid == child, usize::MAX).0 {
                        if pid == child {
                            if stop_requests > 0 && page.user_replaced_stop_handler() {
                                eprintln!(
                                    "lrpm-host: the worker installed its own SIGTERM/SIGINT handler (pcntl_signal); lrpm-host's graceful stop still applied"
                                );
                            }
                            return Ok(match exit {
                                ExitKind::Code(code) => code,
                                ExitKind::Signal(sig) => 128 + sig,
                            });
                        }
                    }
                }
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                    stop_requests += 1;
                    if stop_requests == 1 {
                        eprintln!(
                            "lrpm-host: stopping the worker after its current cycle (send the signal again to kill it)"
                        );
                        process::signal_group(child, Signal::SIGTERM);
                    } else {
                        process::signal_group(child, Signal::SIGKILL);
                    }
                }
                other => {
                    let _ = process::signal_process(child, other);
                }
            }
        }
    }
}
