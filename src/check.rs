//! `lrpm-host check SOURCE`: loads the configuration once, in a forked
//! configuration process as a farm would, and prints the jobs, every
//! validation error and every unknown field.

#![forbid(unsafe_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::escape;
use crate::job;
use crate::php::{self, Engine};
use crate::process::{self, ChildSetup};
use crate::supervisor::config_channel::{ConfigChannel, ConfigMessage, ReadOutcome};
use crate::supervisor::SupervisorError;

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every job is valid (and, with `--strict`, has no unknown field).
    Valid,
    Invalid,
    /// Standard output was closed (`check ... | head`): stop quietly.
    OutputClosed,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Verdict,
    /// How many entries the configuration had, when one arrived.
    pub jobs: Option<usize>,
}

pub fn run(
    engine: &Engine,
    source: &str,
    bootstrap: Option<&Path>,
    argv: &[String],
    strict: bool,
    defaults: &job::JobDefaults,
    user: Option<std::sync::Arc<job::users::Credentials>>,
) -> Result<Checked, SupervisorError> {
    let is_file = crate::cli::source_is_file(source);
    let source = if is_file {
        crate::cli::absolute(Path::new(source)).to_string_lossy().into_owned()
    } else {
        source.to_string()
    };
    let mut keep_fds = process::descriptors_for_children();
    let (read_end, write_end) = process::message_pipe()?;
    keep_fds.push(write_end.as_raw_fd());
    keep_fds.sort_unstable();
    let program = crate::launch::config(&source, is_file, 0, true, bootstrap, write_end.as_raw_fd()).program(argv)?;
    // The source is user code: it runs as --user, as the farm's would.
    let setup = ChildSetup {
        close_fds: vec![read_end.as_raw_fd()],
        keep_fds: Some(std::sync::Arc::new(keep_fds)),
        credentials: user,
        ..Default::default()
    };
    let child = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
    drop(write_end);
    let mut channel = ConfigChannel::new(read_end);
    let mut messages = Vec::new();
    loop {
        let _ = poll(&mut [PollFd::new(channel.as_fd(), PollFlags::POLLIN)], PollTimeout::from(1000u16));
        match channel.read_available() {
            ReadOutcome::Open(m) => messages.extend(m),
            ReadOutcome::Closed(m) => {
                messages.extend(m);
                break;
            }
        }
    }
    let status = nix::sys::wait::waitpid(child, None).map(|s| format!("{s:?}")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let jobs = messages.iter().find_map(|m| match m {
        Ok(ConfigMessage::Configuration { jobs }) => Some(jobs.len()),
        _ => None,
    });
    let verdict = match report(&mut out, messages, &status, strict, defaults) {
        Ok(verdict) => verdict,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Verdict::OutputClosed,
        Err(e) => {
            eprintln!("lrpm-host: cannot write the report: {e}");
            Verdict::Invalid
        }
    };
    Ok(Checked { verdict, jobs })
}

fn report(
    out: &mut impl Write,
    messages: Vec<Result<ConfigMessage, String>>,
    status: &str,
    strict: bool,
    defaults: &job::JobDefaults,
) -> std::io::Result<Verdict> {
    let mut all_valid = true;
    let mut got_configuration = false;
    for message in messages {
        match message {
            Ok(ConfigMessage::Configuration { jobs }) => {
                got_configuration = true;
                let count = jobs.len();
                let resolve_user = job::users::system_resolver(nix::unistd::geteuid().is_root());
                let validated = job::validate_entries(jobs, &resolve_user, defaults);
                writeln!(out, "{count} job(s), {} valid", validated.jobs.len())?;
                for job in &validated.jobs {
                    let mut extras = String::new();
                    if job.replicas != 1 {
                        extras.push_str(&format!(", replicas {}", job.replicas));
                    }
                    let optional = [
                        ("cycleIntervalSeconds", job.cycle_interval_seconds.map(|s| s.to_string())),
                        ("cycleTimeoutSeconds", job.cycle_timeout_seconds.map(|s| s.to_string())),
                        ("progressTimeoutSeconds", job.progress_timeout_seconds.map(|s| s.to_string())),
                        ("maxCycles", job.max_cycles.map(|n| n.to_string())),
                        ("maxLifetimeSeconds", job.max_lifetime_seconds.map(|n| n.to_string())),
                        ("memoryLimitMb", job.memory_limit_mb.map(|n| n.to_string())),
                    ];
                    for (field, value) in optional {
                        if let Some(value) = value {
                            extras.push_str(&format!(", {field} {value}"));
                        }
                    }
                    if job.restart_policy != crate::job::RestartPolicy::Always {
                        extras.push_str(&format!(", restartPolicy {:?}", job.restart_policy));
                    }
                    if let Some(max) = job.max_failures {
                        extras.push_str(&format!(", maxFailures {max} in {}s", job.failure_window_seconds));
                    }
                    if job.essential {
                        extras.push_str(", essential");
                    }
                    writeln!(
                        out,
                        "  ok    {}: {} ({}, mtime {}, shortRunTimeSeconds {}, shutdownTimeoutSeconds {}{extras})",
                        escape::controls(&job.id.to_string()),
                        escape::controls(&job.name),
                        escape::controls(&job.worker_class),
                        job.mtime,
                        job.short_run_time_seconds,
                        job.shutdown_timeout_seconds
                    )?;
                }
                for error in &validated.errors {
                    writeln!(out, "  error {}", escape::controls(&error.to_string()))?;
                }
                let label = if strict { "error" } else { "warn " };
                for unknown in &validated.unknown_fields {
                    writeln!(out, "  {label} {}", escape::controls(&unknown.to_string()))?;
                }
                let php_memory_limit = php::memory_limit_bytes();
                for warning in validated.jobs.iter().filter_map(|j| job::memory_limit_warning(j, php_memory_limit)) {
                    writeln!(out, "  warn  {}", escape::controls(&warning))?;
                }
                all_valid &= validated.errors.is_empty() && (!strict || validated.unknown_fields.is_empty());
            }
            Ok(ConfigMessage::Error { message }) => {
                eprintln!("lrpm-host: {}", escape::controls_keeping_lines(&message));
                all_valid = false;
            }
            Err(e) => {
                eprintln!("lrpm-host: {}", escape::controls(&e));
                all_valid = false;
            }
        }
    }
    out.flush()?;
    if !got_configuration {
        eprintln!("lrpm-host: the configuration process ended without sending a configuration ({status})");
        return Ok(Verdict::Invalid);
    }
    Ok(if all_valid { Verdict::Valid } else { Verdict::Invalid })
}
