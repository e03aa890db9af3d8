//! `lrpmctl upgrade`: the host replaces itself with the binary on disk (a
//! new release, a new `--preload`, a new bootstrap) without stopping the
//! farm, as nginx's binary upgrade and systemd's daemon-reexec do.
//!
//! 1. A trial run: the binary on disk is started as a child with the same
//!    arguments and `LRPM_UPGRADE_CHECK=1`: it boots PHP (the new preload)
//!    and loads the configuration once (the new bootstrap), then exits. If
//!    it fails, nothing else happens: the log says why, the farm runs on.
//! 2. The handoff: the configuration process and the zygote are stopped;
//!    the jobs, the pid of each slot's process, its counters and its output
//!    pipes, and the control socket's listening descriptor are written to a
//!    memfd; the host `execve`s the binary with `LRPM_UPGRADE_STATE=<fd>`.
//!    Same pid, so the workers stay its children and keep running.
//! 3. The new image (`adopt_handoff`) takes the listener and the pipes
//!    back, adopts every process in the core, starts a new configuration
//!    process (and zygote), and recycles every job, one slot at a time
//!    (`recycle all`): each old worker runs until its turn.

#![forbid(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{output, Supervisor};
use crate::farm::{AfterStop, JobCommand, Phase};
use crate::job::{DescribedJob, JobId};
use crate::process;

/// Set for the trial run of the binary on disk.
pub const UPGRADE_CHECK_ENV: &str = "LRPM_UPGRADE_CHECK";
/// The descriptor of the handoff, in the new image's environment.
pub const UPGRADE_STATE_ENV: &str = "LRPM_UPGRADE_STATE";

#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    pub control_fd: RawFd,
    pub jobs: Vec<HandoffJob>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandoffJob {
    pub id: JobId,
    /// The validated job as `start()` gets it (validated again by the new image).
    pub config: serde_json::Value,
    pub held: bool,
    pub slots: Vec<HandoffSlot>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandoffSlot {
    pub slot: u32,
    pub pid: i32,
    pub ran_ms: u64,
    pub restarts: u64,
    pub recycles: u64,
    /// Read ends of its output pipes, when captured.
    pub stdout_fd: Option<RawFd>,
    pub stderr_fd: Option<RawFd>,
}

/// An upgrade under way.
pub enum Upgrade {
    /// The trial run of the new binary is running as `pid`.
    Checking { pid: i32 },
    /// The trial passed: the host is about to replace itself.
    Replacing,
}

impl Supervisor<'_> {
    /// `upgrade`: starts the trial run; the rest follows when it ends.
    pub(super) fn handle_upgrade(&mut self) -> String {
        if self.upgrade.is_some() {
            return "error: an upgrade is already under way".to_string();
        }
        if self.farm.is_shutting_down() {
            return "error: Will not upgrade, lrpm-host is shutting down".to_string();
        }
        let Some((path, argv, mut env)) = self.exec_parts() else {
            return "error: cannot upgrade: the program's path or arguments are not valid C strings".to_string();
        };
        env.push(CString::new(format!("{UPGRADE_CHECK_ENV}=1")).expect("no NUL"));
        match process::spawn_program(&path, &argv, &env) {
            Ok(pid) => {
                tracing::info!(
                    "upgrade: trying {} (pid {pid}: PHP boot and one configuration load) before replacing this host",
                    self.config.program.display()
                );
                self.upgrade = Some(Upgrade::Checking { pid: pid.as_raw() });
                format!("Upgrade started: checking {} first (see the log)", self.config.program.display())
            }
            Err(e) => format!("error: cannot start {}: {e}", self.config.program.display()),
        }
    }

    /// True for the trial run's pid (reaped by the loop like any child).
    pub(super) fn is_upgrade_check(&self, pid: i32) -> bool {
        matches!(self.upgrade, Some(Upgrade::Checking { pid: p }) if p == pid)
    }

    /// The trial run ended: exec the new binary if it succeeded.
    pub(super) fn upgrade_check_exited(&mut self, exit: crate::farm::ExitKind) {
        self.upgrade = None;
        if exit != crate::farm::ExitKind::Code(0) {
            tracing::error!(
                "upgrade: {} failed its trial run ({}); the farm runs on unchanged (its output above says why)",
                self.config.program.display(),
                exit.describe(crate::farm::ProcessKind::Program, crate::farm::PhpEnd::Unknown)
            );
            return;
        }
        if self.farm.is_shutting_down() {
            return;
        }
        self.upgrade = Some(Upgrade::Replacing);
        let error = self.exec_new_image();
        self.upgrade = None;
        tracing::error!(
            "upgrade: cannot execute {}: {error}; the farm runs on unchanged",
            self.config.program.display()
        );
    }

    fn exec_parts(&self) -> Option<(CString, Vec<CString>, Vec<CString>)> {
        let path = CString::new(self.config.program.as_os_str().as_bytes()).ok()?;
        let argv = self.config.argv.iter().map(|a| CString::new(a.as_bytes()).ok()).collect::<Option<Vec<_>>>()?;
        let env = std::env::vars_os()
            .filter(|(k, _)| k != UPGRADE_STATE_ENV && k != UPGRADE_CHECK_ENV)
            .map(|(k, v)| {
                let mut pair = k.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(v.as_bytes());
                CString::new(pair).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        Some((path, argv, env))
    }

    /// Writes the handoff and replaces the process image; returns only if
    /// that failed (the farm then runs on).
    fn exec_new_image(&mut self) -> nix::errno::Errno {
        let Some((path, argv, mut env)) = self.exec_parts() else { return nix::errno::Errno::EINVAL };
        // The configuration process and the zygote are started again by the
        // new image; workers keep running.
        let mut others: Vec<i32> = self.farm.config_process().pid().into_iter().collect();
        if let super::zygote::Zygote::Running(running) = &self.zygote {
            others.push(running.pid);
        }
        for pid in others {
            process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        self.finish_clients();
        let now = Instant::now();
        let mut keep = vec![self.control.listener().as_raw_fd()];
        let mut jobs = Vec::new();
        for (id, state) in self.farm.jobs() {
            if state.removed {
                // On their way out already: the new image would not know
                // them, so they do not wait for their stop timeout.
                for (_, pid) in state.pids() {
                    process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
                }
                continue;
            }
            let mut slots = Vec::new();
            for (slot, slot_state) in &state.slots {
                let (pid, since) = match slot_state.phase {
                    Phase::Running { pid, since } => (pid, since),
                    // Stopping to start again: the new image replaces it anyway.
                    Phase::Stopping {
                        pid,
                        since,
                        then: AfterStop::Restart | AfterStop::Recycle | AfterStop::RestartAsFailure,
                        ..
                    } => (pid, since),
                    // Stopping for good (held, scaled away, failed): not the
                    // new image's to wait for.
                    Phase::Stopping { pid, .. } => {
                        process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
                        continue;
                    }
                    _ => continue,
                };
                let pipes = self.output.as_ref().map(|o| o.pipes_of(pid)).unwrap_or_default();
                keep.extend(pipes.iter().flatten().copied());
                slots.push(HandoffSlot {
                    slot: *slot,
                    pid,
                    ran_ms: now.saturating_duration_since(since).as_millis() as u64,
                    restarts: slot_state.restarts,
                    recycles: slot_state.recycles,
                    stdout_fd: pipes[0],
                    stderr_fd: pipes[1],
                });
            }
            let config = serde_json::Value::Object((*state.job.config).clone());
            jobs.push(HandoffJob { id: id.clone(), config, held: state.held, slots });
        }
        let handoff = Handoff { control_fd: self.control.listener().as_raw_fd(), jobs };
        let bytes = match serde_json::to_vec(&handoff) {
            Ok(bytes) => bytes,
            Err(_) => return nix::errno::Errno::EINVAL,
        };
        let memfd = match process::memfd_with(&bytes) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        keep.push(memfd.as_raw_fd());
        env.push(CString::new(format!("{UPGRADE_STATE_ENV}={}", memfd.as_raw_fd())).expect("no NUL"));
        tracing::info!("upgrade: the trial run passed; replacing this host with {}", self.config.program.display());
        crate::host_output::finish(Duration::from_secs(1));
        process::exec_self(&path, &argv, &env, &keep)
    }
}

/// How long connected control clients get to finish before the exec
/// (clients still waiting in the listen backlog are the new image's).
const CLIENT_GRACE: Duration = Duration::from_millis(300);

impl Supervisor<'_> {
    /// Answers the control clients already connected (their connections do
    /// not survive the exec), waiting at most `CLIENT_GRACE`; new ones wait
    /// in the backlog for the new image.
    fn finish_clients(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + CLIENT_GRACE;
        while self.control.client_count() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let (ready, clients): (Vec<bool>, Vec<(crate::control::server::ClientId, bool)>) = {
                let clients = self.control.client_fds();
                let mut fds: Vec<PollFd> = clients
                    .iter()
                    .map(|(_, fd, wants_write)| {
                        PollFd::new(*fd, if *wants_write { PollFlags::POLLOUT } else { PollFlags::POLLIN })
                    })
                    .collect();
                let timeout = PollTimeout::try_from(left.as_millis().min(50) as i32).unwrap_or(PollTimeout::ZERO);
                let _ = poll(&mut fds, timeout);
                let ready = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
                (ready, clients.iter().map(|(id, _, w)| (*id, *w)).collect())
            };
            let now = Instant::now();
            for ((id, wants_write), ready) in clients.into_iter().zip(ready) {
                if !ready {
                    continue;
                }
                if wants_write {
                    self.control.write_client(id);
                } else if let Some(request) = self.control.read_client(id) {
                    self.answer(id, &request, now);
                }
            }
        }
    }
}

/// The handoff of the previous image, if this process is one's new image.
pub fn take_handoff() -> Option<Handoff> {
    let fd: RawFd = std::env::var(UPGRADE_STATE_ENV).ok()?.parse().ok()?;
    std::env::remove_var(UPGRADE_STATE_ENV);
    let file = std::fs::File::from(process::adopt_fd(fd)?);
    match serde_json::from_reader(std::io::BufReader::new(file)) {
        Ok(handoff) => Some(handoff),
        Err(e) => {
            tracing::error!("upgrade: the previous image's handoff is unreadable ({e}); starting afresh");
            None
        }
    }
}

impl Supervisor<'_> {
    /// In the new image: takes the previous image's processes over and
    /// recycles every job onto this image.
    pub(super) fn adopt_handoff(&mut self, handoff: Handoff, now: Instant) {
        let mut adopted = 0;
        for job in handoff.jobs {
            let described = DescribedJob::from_json(job.id.clone(), job.config);
            let mut valid = match described.validate() {
                Ok((valid, _)) => valid,
                Err(errors) => {
                    tracing::error!(
                        "upgrade: job {} is no longer valid ({:?}); its processes are stopped",
                        job.id,
                        errors
                    );
                    for slot in &job.slots {
                        process::signal_group(Pid::from_raw(slot.pid), Signal::SIGTERM);
                    }
                    continue;
                }
            };
            self.config.job_defaults.apply(&mut valid);
            let running: Vec<_> = job
                .slots
                .iter()
                .map(|s| (s.slot, s.pid, Duration::from_millis(s.ran_ms), s.restarts, s.recycles))
                .collect();
            for slot in &job.slots {
                adopted += 1;
                let (Some(out), Some(err)) =
                    (slot.stdout_fd.and_then(process::adopt_fd), slot.stderr_fd.and_then(process::adopt_fd))
                else {
                    continue;
                };
                if let Some(router) = self.output.as_mut() {
                    let source = output::Source::Worker {
                        id: job.id.clone(),
                        name: valid.name.clone(),
                        slot: slot.slot,
                        pid: slot.pid,
                    };
                    router.register(source, out, err);
                }
            }
            self.farm.adopt(valid, job.held, &running, now);
        }
        tracing::info!(
            "upgrade: this is the new image; {adopted} running process(es) adopted, recycling every job onto it"
        );
        let ids: Vec<JobId> = self.farm.jobs().keys().cloned().collect();
        for id in ids {
            let (_, actions) = self.farm.job_command(&id, JobCommand::Recycle, now);
            self.apply(actions);
        }
    }
}
