//! `lrpmctl upgrade`: the host replaces itself with the binary on disk (a
//! new release, a new `--preload`, a new bootstrap) without stopping the
//! farm, as nginx's binary upgrade and systemd's daemon-reexec do.
//!
//! 1. A trial run, beside the loop (status, signals and reaping go on): the
//!    binary on disk is started as a child with the same arguments and
//!    `LRPM_UPGRADE_CHECK=3`: it boots PHP (the new preload), loads the
//!    configuration once (the new bootstrap) and writes a `TrialReport` on
//!    its fd 3 (a pipe): it is lrpm-host, which version, the handoff format
//!    it reads, PHP's version, the configuration loaded. Only a report that
//!    says it can take this farm over, then exit 0, within
//!    `--upgrade-trial-timeout`, passes; a program that merely exits 0
//!    (`/bin/true`, a script) fails. A failure changes nothing: the log and
//!    `lrpmctl upgrade`'s answer say why, the farm runs on.
//! 2. The handoff: the configuration process and the zygote are stopped;
//!    the jobs, the pid of each slot's process, its counters and its output
//!    pipes, and the control socket's listening descriptor are written to a
//!    memfd; the host `execve`s the binary with `LRPM_UPGRADE_STATE=<fd>`.
//!    Same pid, so the workers stay its children and keep running.
//! 3. The new image (`adopt_handoff`) takes the listener and the pipes
//!    back, adopts every process in the core, starts a new configuration
//!    process (and zygote), and recycles every job, one slot at a time
//!    (`recycle all`): each old worker runs until its turn.
//! 4. Until the new image has adopted the farm (`confirm_takeover`), it can
//!    roll back: the previous image's executable came along as an open
//!    descriptor (`LRPM_UPGRADE_ROLLBACK`), so a new image that fails while
//!    taking over (an error before its loop, a panic) executes the previous
//!    image again with the same handoff (`roll_back`), which adopts the
//!    farm as the new image would have. Same pid throughout: the workers
//!    never notice. A new image killed by a signal in that moment cannot
//!    roll back: its workers then get SIGKILL (PDEATHSIG) like any host
//!    that dies, and the platform restarts it.

#![forbid(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::children::ChildRole;
use super::cluster::HandedAgent;
use super::DashboardSettings;
use super::{output, Supervisor};
use crate::control::server::ClientId;
use crate::control::Reply;
use crate::farm::zygote::Disabled;
use crate::farm::{Event, ExitKind, JobCommand, PhpEnd, ProcessKind};
use crate::job::{DescribedJob, JobId};
use crate::process;

/// Set for the trial run of the binary on disk: the descriptor it reports on.
pub const UPGRADE_CHECK_ENV: &str = "LRPM_UPGRADE_CHECK";
/// The trial's descriptor for its report.
const TRIAL_REPORT_FD: RawFd = 3;
/// The version of `Handoff`'s layout: a new image takes a farm over only
/// from an image that writes the format it reads. Format 2 adds the
/// cluster agent and the claims each job holds; an image that reads only
/// format 1 can still take over a farm without `--cluster` (it would start
/// every unit afresh beside an agent it does not know of).
pub const HANDOFF_FORMAT: u32 = 2;
/// The format before the cluster's part of the handoff.
const HANDOFF_FORMAT_WITHOUT_CLUSTER: u32 = 1;
/// A longer report is not a trial's.
const MAX_TRIAL_REPORT: usize = 64 * 1024;

/// What a trial run tells the running host (one JSON line on its fd 3).
#[derive(Debug, Serialize, Deserialize)]
pub struct TrialReport {
    /// Its version (`CARGO_PKG_VERSION`).
    pub lrpm_host: String,
    pub handoff_format: u32,
    pub php: String,
    /// How many entries the configuration it loaded had; None when no
    /// configuration arrived.
    pub jobs: Option<usize>,
}

/// In the trial run: the report, on the descriptor the running host gave.
pub fn send_trial_report(jobs: Option<usize>) -> std::io::Result<()> {
    use std::io::Write;
    let value = std::env::var(UPGRADE_CHECK_ENV).unwrap_or_default();
    let fd: RawFd = value
        .parse()
        .map_err(|_| std::io::Error::other(format!("{UPGRADE_CHECK_ENV}={value:?} is not a descriptor number")))?;
    let fd = process::adopt_fd(fd)
        .ok_or_else(|| std::io::Error::other(format!("{UPGRADE_CHECK_ENV}: descriptor {fd} is not open")))?;
    let report = TrialReport {
        lrpm_host: env!("CARGO_PKG_VERSION").to_string(),
        handoff_format: HANDOFF_FORMAT,
        php: crate::php::php_version().to_string(),
        jobs,
    };
    let mut line = serde_json::to_vec(&report).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::File::from(fd).write_all(&line)
}
/// The descriptor of the handoff, in the new image's environment.
pub const UPGRADE_STATE_ENV: &str = "LRPM_UPGRADE_STATE";
/// The descriptor of the previous image's executable, in the new image's.
pub const UPGRADE_ROLLBACK_ENV: &str = "LRPM_UPGRADE_ROLLBACK";
/// In an image a failed new image rolled back to: why it failed.
pub const UPGRADE_ROLLED_BACK_ENV: &str = "LRPM_UPGRADE_ROLLED_BACK";
/// Test hook: a new image (not one rolled back to) panics while adopting.
const TEST_FAIL_WHILE_ADOPTING_ENV: &str = "LRPM_TEST_FAIL_WHILE_ADOPTING";

#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    pub control_fd: RawFd,
    pub jobs: Vec<HandoffJob>,
    /// With `--cluster`: the agent, which runs on through the exec.
    #[serde(default)]
    pub cluster: Option<HandedAgent>,
}

impl Handoff {
    /// Every descriptor it hands over: the control listener, the agent's
    /// socket and the workers' output pipes.
    pub fn descriptors(&self) -> impl Iterator<Item = RawFd> + '_ {
        std::iter::once(self.control_fd).chain(self.cluster.iter().map(|agent| agent.socket_fd)).chain(
            self.jobs
                .iter()
                .flat_map(|j| j.slots.iter().flat_map(|s| [s.stdout_fd, s.stderr_fd].into_iter().flatten())),
        )
    }
}

/// This process's environment without the upgrade's own variables, for the
/// next image (which is given its own).
pub(super) fn inherited_environment() -> Option<Vec<CString>> {
    std::env::vars_os()
        .filter(|(k, _)| {
            ![UPGRADE_STATE_ENV, UPGRADE_CHECK_ENV, UPGRADE_ROLLBACK_ENV, UPGRADE_ROLLED_BACK_ENV]
                .iter()
                .any(|name| k == name)
        })
        .map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            CString::new(pair).ok()
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandoffJob {
    pub id: JobId,
    /// The validated job as `start()` gets it (validated again by the new image).
    pub config: serde_json::Value,
    pub held: bool,
    pub slots: Vec<HandoffSlot>,
    /// The slots whose claim this member holds, with its fencing token
    /// (with `--cluster`): those running and those about to start.
    #[serde(default)]
    pub units: Vec<(u32, i64)>,
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
    /// The trial run of the new binary is running.
    Checking(Trial),
    /// The trial passed: the host is about to replace itself.
    Replacing,
}

/// The trial run: its pid, the read end of its report pipe, what it sent.
pub struct Trial {
    pid: i32,
    report: OwnedFd,
    received: Vec<u8>,
    /// The pipe reached EOF (no longer polled).
    closed: bool,
    deadline: Instant,
    killed_at_deadline: bool,
    /// The `lrpmctl upgrade` client waiting for the outcome.
    client: Option<ClientId>,
}

impl Trial {
    /// Reads what the trial wrote so far (non-blocking), bounded.
    fn read_report(&mut self) {
        let mut buffer = [0u8; 4096];
        while !self.closed && self.received.len() <= MAX_TRIAL_REPORT {
            match nix::unistd::read(self.report.as_raw_fd(), &mut buffer) {
                Ok(0) => self.closed = true,
                Ok(n) => self.received.extend_from_slice(&buffer[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => self.closed = true,
            }
        }
    }

    /// The verdict on a trial that exited: Ok(what it reported) when it may
    /// take the farm over, else why not.
    fn verdict(&self, exit: ExitKind, timeout: Duration, clustered: bool) -> Result<TrialReport, String> {
        if self.killed_at_deadline {
            return Err(format!(
                "its trial run did not finish within {}s (--upgrade-trial-timeout) and was killed",
                timeout.as_secs()
            ));
        }
        if exit != ExitKind::Code(0) {
            return Err(format!("its trial run failed ({})", exit.describe(ProcessKind::Program, PhpEnd::Unknown)));
        }
        let line = self.received.split(|b| *b == b'\n').next().unwrap_or_default();
        if line.is_empty() {
            return Err(
                "it exited 0 without the trial's report: it is not lrpm-host, or one too old to take a farm over"
                    .to_string(),
            );
        }
        let report: TrialReport = serde_json::from_slice(line).map_err(|e| {
            format!(
                "its trial report is not lrpm-host's ({e}): {:?}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            )
        })?;
        if !takes_over(report.handoff_format, clustered) {
            let what = if clustered { "this clustered host" } else { "this host" };
            return Err(format!(
                "it is lrpm-host {} and reads handoff format {}, {what} writes format {HANDOFF_FORMAT}: it cannot take this farm over (restart the host instead{})",
                report.lrpm_host,
                report.handoff_format,
                if clustered { ", or drain it and start the new release beside it" } else { "" }
            ));
        }
        if report.jobs.is_none() {
            return Err("its trial run loaded no configuration (its output above says why)".to_string());
        }
        Ok(report)
    }
}

/// Whether an image that reads handoff `format` can take this farm over.
fn takes_over(format: u32, clustered: bool) -> bool {
    format == HANDOFF_FORMAT || (format == HANDOFF_FORMAT_WITHOUT_CLUSTER && !clustered)
}

impl Supervisor<'_> {
    /// `upgrade`: starts the trial run; the answer follows when it ends
    /// (None: deferred), unless it cannot start.
    pub(super) fn handle_upgrade(&mut self, client: ClientId, now: Instant) -> Option<Reply> {
        if self.upgrade.is_some() {
            return Some(Reply::refused(
                "an upgrade is already under way (its trial run is running); wait for its outcome",
            ));
        }
        if self.farm.is_shutting_down() {
            return Some(Reply::refused("Will not upgrade, lrpm-host is shutting down"));
        }
        let Some((path, argv, mut env)) = self.exec_parts() else {
            return Some(Reply::refused("cannot upgrade: the program's path or arguments are not valid C strings"));
        };
        env.push(CString::new(format!("{UPGRADE_CHECK_ENV}={TRIAL_REPORT_FD}")).expect("no NUL"));
        let program = self.config.program.display().to_string();
        let (report, report_end) = match process::message_pipe() {
            Ok(pipe) => pipe,
            Err(e) => return Some(Reply::Refused(format!("cannot upgrade: {e}"))),
        };
        match process::spawn_program(&path, &argv, &env, process::ProgramIo::Report(Some(report_end.as_raw_fd()))) {
            Ok(pid) => {
                let timeout = self.config.upgrade_trial_timeout;
                tracing::info!(
                    "upgrade: trying {program} (pid {pid}: PHP boot and one configuration load, at most {}s) before replacing this host",
                    timeout.as_secs()
                );
                // The client waits for the outcome; lrpmctl waits that long.
                self.control.clients.defer(client, now + timeout + Duration::from_secs(5));
                self.children.insert(pid.as_raw(), ChildRole::UpgradeTrial);
                self.upgrade = Some(Upgrade::Checking(Trial {
                    pid: pid.as_raw(),
                    report,
                    received: Vec::new(),
                    closed: false,
                    deadline: now + timeout,
                    killed_at_deadline: false,
                    client: Some(client),
                }));
                None
            }
            Err(e) => Some(Reply::Refused(format!("cannot start {program}: {e}"))),
        }
    }

    /// The trial's report pipe, to poll while it runs.
    pub(super) fn upgrade_report_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.upgrade {
            Some(Upgrade::Checking(trial)) if !trial.closed && trial.received.len() <= MAX_TRIAL_REPORT => {
                Some(trial.report.as_fd())
            }
            _ => None,
        }
    }

    pub(super) fn read_upgrade_report(&mut self) {
        if let Some(Upgrade::Checking(trial)) = &mut self.upgrade {
            trial.read_report();
        }
    }

    /// When the trial run must have ended.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        match &self.upgrade {
            Some(Upgrade::Checking(trial)) if !trial.killed_at_deadline => Some(trial.deadline),
            _ => None,
        }
    }

    /// Kills a trial run past its deadline (its exit ends the upgrade).
    pub(super) fn enforce_upgrade_deadline(&mut self, now: Instant) {
        if let Some(Upgrade::Checking(trial)) = &mut self.upgrade {
            if !trial.killed_at_deadline && now >= trial.deadline {
                trial.killed_at_deadline = true;
                tracing::warn!("upgrade: the trial run (pid {}) is past its deadline; killing it", trial.pid);
                process::signal_group(Pid::from_raw(trial.pid), Signal::SIGKILL);
            }
        }
    }

    /// The trial run ended: exec the new binary if it passed.
    pub(super) fn upgrade_check_exited(&mut self, exit: ExitKind) {
        let Some(Upgrade::Checking(mut trial)) = self.upgrade.take() else { return };
        trial.read_report();
        let program = self.config.program.display().to_string();
        let verdict = trial.verdict(exit, self.config.upgrade_trial_timeout, self.agent.is_some());
        let answer = |control: &mut crate::control::server::ControlServer, reply: Reply| {
            if let Some(client) = trial.client {
                control.respond(client, &reply.wire());
            }
        };
        let report = match verdict {
            Ok(report) => report,
            Err(why) => {
                tracing::error!("upgrade: {program} cannot take the farm over: {why}; the farm runs on unchanged");
                answer(
                    &mut self.control,
                    Reply::Refused(format!("upgrade refused: {program}: {why}; the farm runs on unchanged")),
                );
                return;
            }
        };
        if self.farm.is_shutting_down() {
            answer(&mut self.control, Reply::refused("Will not upgrade, lrpm-host is shutting down"));
            return;
        }
        let jobs = report.jobs.unwrap_or(0);
        answer(
            &mut self.control,
            Reply::Done(format!(
                "Upgrade: {program} passed its trial (lrpm-host {}, PHP {}, {jobs} job(s) loaded); replacing this host",
                report.lrpm_host, report.php
            )),
        );
        self.upgrade = Some(Upgrade::Replacing);
        let error = self.exec_new_image(&report);
        self.upgrade = None;
        tracing::error!("upgrade: cannot execute {program}: {error}; the farm runs on unchanged");
    }

    fn exec_parts(&self) -> Option<(CString, Vec<CString>, Vec<CString>)> {
        let path = CString::new(self.config.program.as_os_str().as_bytes()).ok()?;
        let argv = self.config.argv.iter().map(|a| CString::new(a.as_bytes()).ok()).collect::<Option<Vec<_>>>()?;
        let mut env = inherited_environment()?;
        if let Some(DashboardSettings { token: Some(token), token_from_env: true }) = &self.config.dashboard {
            env.push(CString::new(format!("LRPM_DASHBOARD_TOKEN={token}")).ok()?);
        }
        Some((path, argv, env))
    }

    /// Writes the handoff and replaces the process image; returns only if
    /// that failed (the farm then runs on).
    fn exec_new_image(&mut self, report: &TrialReport) -> nix::errno::Errno {
        let Some((path, argv, mut env)) = self.exec_parts() else { return nix::errno::Errno::EINVAL };
        // Starts the zygote owes are answered first: a worker it forked
        // whose pid never arrived would run on unknown to the new image.
        self.settle_zygote_starts();
        // The configuration process and the zygote are started again by the
        // new image; workers keep running.
        self.end_zygote_for_exec(Instant::now());
        if let Some(pid) = self.farm.config_process().pid() {
            let exit = process::kill_group_and_wait(Pid::from_raw(pid));
            // Told to the core: should the exec fail, it starts another.
            self.child_exited(Pid::from_raw(pid), exit, Instant::now());
        }
        self.finish_clients();
        let now = Instant::now();
        let mut keep = vec![self.control.listener_fd()];
        // Units whose process is not handed over are killed, and given back
        // to the agent once reaped (never before: another member may start
        // them the moment the claim goes).
        let handoff = self.farm.handoff(now);
        let mut released = Vec::new();
        for killed in &handoff.killed {
            process::signal_group(Pid::from_raw(killed.pid), Signal::SIGKILL);
            if killed.unit {
                released.push(killed.pid);
            }
        }
        let mut jobs = Vec::new();
        for job in handoff.jobs {
            let Some(state) = self.farm.job(&job.id) else { continue };
            let config = serde_json::Value::Object((*state.job.config).clone());
            let mut slots = Vec::new();
            for running in job.running {
                let pipes = self.output.as_ref().map(|o| o.pipes_of(running.pid)).unwrap_or_default();
                keep.extend(pipes.iter().flatten().copied());
                slots.push(HandoffSlot {
                    slot: running.slot,
                    pid: running.pid,
                    ran_ms: running.ran.as_millis() as u64,
                    restarts: running.restarts,
                    recycles: running.recycles,
                    stdout_fd: pipes[0],
                    stderr_fd: pipes[1],
                });
            }
            jobs.push(HandoffJob { id: job.id, config, held: job.held, slots, units: job.units });
        }
        // Reaped here, and told to the core like any exit: the claim goes
        // (`ReleaseUnit`) only now, and should the exec fail, the farm runs
        // on knowing these processes are gone.
        for pid in released {
            let exit = process::wait_for_exit(Pid::from_raw(pid));
            self.child_exited(Pid::from_raw(pid), exit, Instant::now());
        }
        let cluster = self.agent.as_mut().and_then(|agent| agent.hand_over(Instant::now()));
        if let Some(agent) = &cluster {
            keep.push(agent.socket_fd);
        }
        let handoff = Handoff { control_fd: self.control.listener_fd(), jobs, cluster };
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
        // The way back, should the new image fail while taking over.
        let own_executable = process::open_own_executable();
        match &own_executable {
            Ok(fd) => {
                keep.push(fd.as_raw_fd());
                env.push(CString::new(format!("{UPGRADE_ROLLBACK_ENV}={}", fd.as_raw_fd())).expect("no NUL"));
            }
            Err(e) => tracing::warn!("upgrade: cannot keep this image to roll back to ({e}); going on without"),
        }
        tracing::info!(
            "upgrade: the trial run passed (lrpm-host {}, PHP {}); replacing this host with {}",
            report.lrpm_host,
            report.php,
            self.config.program.display()
        );
        crate::host_output::finish(Duration::from_secs(1));
        process::exec_self(process::Image::Path(&path), &argv, &env, &keep)
    }
}

/// How long the zygote gets to answer the starts it owes before the exec.
const ZYGOTE_SETTLE: Duration = Duration::from_secs(2);

impl Supervisor<'_> {
    /// Before the exec: no further start goes to the zygote, and those it
    /// owes are answered (their workers adopted into the handoff like any
    /// other), for at most `ZYGOTE_SETTLE`.
    fn settle_zygote_starts(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        // Not signalled: it is killed right before the exec.
        self.zygote.stop(Disabled::Upgrading);
        let deadline = Instant::now() + ZYGOTE_SETTLE;
        loop {
            let Some(running) = self.zygote.process().map(|p| &p.link) else { return };
            if running.pending.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "upgrade: the zygote did not answer {} start(s) within {}s; a worker it forked meanwhile is \
                     not handed over",
                    running.pending.len(),
                    ZYGOTE_SETTLE.as_secs()
                );
                return;
            }
            let mut fds = [PollFd::new(running.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left.as_millis().min(50) as i32).unwrap_or(PollTimeout::ZERO);
            let _ = poll(&mut fds, timeout);
            self.read_zygote(Instant::now());
        }
    }

    /// Right before the exec: the zygote is killed and reaped (the new image
    /// starts its own). Starts it did not answer fail and those it had not
    /// been sent wait, both through the core, and the zygote is due again:
    /// should the exec fail, the farm runs on as before.
    fn end_zygote_for_exec(&mut self, now: Instant) {
        let Some(zygote) = self.zygote.take(Disabled::Upgrading) else { return };
        process::kill_group_and_wait(Pid::from_raw(zygote.pid));
        self.children.remove(zygote.pid);
        self.zygote.rearm_after_exec(now);
        for start in zygote.link.pending {
            self.give_back_page(start.page);
            let actions = self.farm.handle(Event::WorkerSpawnFailed(start.key), now);
            self.apply(actions);
        }
        for key in zygote.link.awaiting {
            let actions = self.farm.handle(Event::WorkerStartDeferred(key), now);
            self.apply(actions);
        }
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
        use nix::poll::PollTimeout;
        let deadline = Instant::now() + CLIENT_GRACE;
        while !self.control.clients.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut set = crate::poll_set::PollSet::default();
            self.control.clients.register(&mut set, None, |id, wants_write| (id, wants_write));
            let timeout = PollTimeout::try_from(left.as_millis().min(50) as i32).unwrap_or(PollTimeout::ZERO);
            let ready = set.poll(timeout).unwrap_or_default();
            let now = Instant::now();
            for (id, wants_write) in ready {
                if let Some(request) = self.control.clients.ready(id, wants_write) {
                    self.answer(id, &request, now);
                }
            }
        }
    }
}

/// What the previous image handed over, read at the start of `main`.
struct Takeover {
    /// The handoff, as the previous image wrote it.
    state: Vec<u8>,
    /// The previous image's executable (None once confirmed, or without one).
    rollback: Option<OwnedFd>,
    /// This process's arguments, read before the process title overwrites them.
    argv: Vec<CString>,
}

static TAKEOVER: std::sync::Mutex<Option<Takeover>> = std::sync::Mutex::new(None);
/// Why the image this one replaced failed, when this is a rolled-back image.
static ROLLED_BACK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// At the start of `main`, before anything can fail: when this process is
/// an upgrade's new image, takes the handoff and the way back from the
/// environment, and makes a panic before `confirm_takeover` roll back.
pub fn prepare_takeover() {
    let Some(state_fd) = std::env::var(UPGRADE_STATE_ENV).ok().and_then(|v| v.parse::<RawFd>().ok()) else {
        return;
    };
    std::env::remove_var(UPGRADE_STATE_ENV);
    let rollback_fd = std::env::var(UPGRADE_ROLLBACK_ENV).ok().and_then(|v| v.parse::<RawFd>().ok());
    std::env::remove_var(UPGRADE_ROLLBACK_ENV);
    if let Some(why) = std::env::var_os(UPGRADE_ROLLED_BACK_ENV) {
        let _ = ROLLED_BACK.set(why.to_string_lossy().into_owned());
        std::env::remove_var(UPGRADE_ROLLED_BACK_ENV);
    }
    let mut state = Vec::new();
    if let Some(fd) = process::adopt_fd(state_fd) {
        use std::io::Read;
        if let Err(e) = std::fs::File::from(fd).read_to_end(&mut state) {
            eprintln!("lrpm-host: upgrade: cannot read the previous image's handoff: {e}");
        }
    }
    let rollback = rollback_fd.and_then(process::adopt_fd);
    let argv = std::env::args_os().filter_map(|a| CString::new(a.as_bytes()).ok()).collect();
    *TAKEOVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Takeover { state, rollback, argv });
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        roll_back(&format!("it panicked: {info}"));
    }));
}

/// The handoff of the previous image, if this process is one's new image.
pub fn take_handoff() -> Option<Handoff> {
    let guard = TAKEOVER.lock().unwrap_or_else(|e| e.into_inner());
    let state = &guard.as_ref()?.state;
    match serde_json::from_slice(state) {
        Ok(handoff) => Some(handoff),
        Err(e) => {
            tracing::error!("upgrade: the previous image's handoff is unreadable ({e}); starting afresh");
            None
        }
    }
}

/// The previous image's executable, while this image may still roll back
/// to it (no child may inherit it).
pub fn rollback_fd() -> Option<RawFd> {
    let guard = TAKEOVER.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref()?.rollback.as_ref().map(|fd| fd.as_raw_fd())
}

/// The farm is this image's now: no rollback from here on.
fn confirm_takeover() {
    if let Some(takeover) = TAKEOVER.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        takeover.rollback = None;
        takeover.state = Vec::new();
    }
}

/// A new image that failed before `confirm_takeover` executes the previous
/// image again with the same handoff; returns only when there is nothing to
/// roll back to (not a new image, already confirmed) or the exec failed.
pub fn roll_back(why: &str) {
    // try_lock: a panic while the lock is held must not deadlock here.
    let Ok(mut guard) = TAKEOVER.try_lock() else { return };
    let Some(Takeover { state, rollback: Some(executable), argv }) = guard.take() else { return };
    let why: String = crate::escape::controls(why).chars().take(2000).collect();
    eprintln!("lrpm-host: upgrade: the new image failed while taking the farm over ({why}); rolling back to the previous image");
    let handed: Vec<RawFd> =
        serde_json::from_slice::<Handoff>(&state).map(|h| h.descriptors().collect()).unwrap_or_default();
    let memfd = match process::memfd_with(&state) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("lrpm-host: upgrade: cannot roll back: memfd: {e}");
            return;
        }
    };
    let mut keep: Vec<RawFd> = handed.into_iter().filter(|fd| process::is_open(*fd)).collect();
    keep.push(memfd.as_raw_fd());
    keep.push(executable.as_raw_fd());
    let mut env = inherited_environment().unwrap_or_default();
    env.push(CString::new(format!("{UPGRADE_STATE_ENV}={}", memfd.as_raw_fd())).expect("no NUL"));
    env.push(CString::new(format!("{UPGRADE_ROLLED_BACK_ENV}={}", why.replace('\0', ""))).unwrap_or_default());
    let error = process::exec_self(process::Image::Descriptor(executable.as_fd()), &argv, &env, &keep);
    eprintln!("lrpm-host: upgrade: cannot roll back: executing the previous image: {error}");
}

impl Supervisor<'_> {
    /// In the new image: takes the previous image's processes over and
    /// recycles every job onto this image.
    pub(super) fn adopt_handoff(&mut self, handoff: Handoff, now: Instant) {
        let rolled_back = ROLLED_BACK.get();
        let mut adopted = 0;
        for job in handoff.jobs {
            let described = DescribedJob::from_json(job.id.clone(), job.config);
            let valid = match described.validate_with(&self.config.job_defaults) {
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
            let running: Vec<_> = job
                .slots
                .iter()
                .map(|s| (s.slot, s.pid, Duration::from_millis(s.ran_ms), s.restarts, s.recycles))
                .collect();
            for slot in &job.slots {
                adopted += 1;
                self.children.insert_worker(slot.pid, None);
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
            if rolled_back.is_none() && std::env::var_os(TEST_FAIL_WHILE_ADOPTING_ENV).is_some() {
                panic!("{TEST_FAIL_WHILE_ADOPTING_ENV} is set: failing while adopting job {}", job.id);
            }
            self.farm.adopt(valid, job.held, &running, &job.units, now);
        }
        self.take_agent_over(handoff.cluster, now);
        confirm_takeover();
        match rolled_back {
            Some(why) => tracing::error!(
                "upgrade: the new image failed while taking the farm over ({why}); rolled back to the previous \
                 image: {adopted} running process(es) adopted, recycling every job onto it"
            ),
            None => tracing::info!(
                "upgrade: this is the new image; {adopted} running process(es) adopted, recycling every job onto it"
            ),
        }
        let ids: Vec<JobId> = self.farm.jobs().keys().cloned().collect();
        for id in ids {
            let (_, actions) = self.farm.job_command(&id, JobCommand::Recycle, now);
            self.apply(actions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clustered_farm_goes_only_to_an_image_that_reads_its_agent() {
        assert!(takes_over(HANDOFF_FORMAT, true));
        assert!(takes_over(HANDOFF_FORMAT, false));
        assert!(takes_over(HANDOFF_FORMAT_WITHOUT_CLUSTER, false), "a farm without --cluster, as before");
        assert!(!takes_over(HANDOFF_FORMAT_WITHOUT_CLUSTER, true), "it would start every unit beside the agent");
        assert!(!takes_over(999, false));
    }

    #[test]
    fn a_handoff_without_the_cluster_part_reads_as_one_without_agent_or_claims() {
        let handoff: Handoff =
            serde_json::from_str(r#"{"control_fd":5,"jobs":[{"id":1,"config":{},"held":false,"slots":[]}]}"#).unwrap();
        assert!(handoff.cluster.is_none());
        assert!(handoff.jobs[0].units.is_empty());
        assert_eq!(handoff.descriptors().collect::<Vec<_>>(), vec![5]);
    }
}
