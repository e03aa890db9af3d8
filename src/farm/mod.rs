//! The pure core: desired-vs-actual diff, per-job state, backoff, stop
//! escalation and shutdown order. No I/O and no clock: the supervisor feeds
//! events with the current time and applies the returned actions.

pub mod backoff;
pub mod exit;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use exit::{ExitKind, ProcessKind};

use crate::job::{Job, JobId};
use backoff::{ConfigBackoff, WorkerBackoff};

/// How long the configuration process gets between SIGTERM and SIGKILL
/// (php-lrpm: CONFIG_PROCESS_TERM_TIMEOUT_SECONDS).
pub const CONFIG_STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub type Pid = i32;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new configuration (valid jobs only) arrived from the config process.
    Configuration(Vec<Job>),
    ConfigProcessStarted(Pid),
    WorkerStarted {
        id: JobId,
        pid: Pid,
    },
    /// fork() failed: treated as a run of zero seconds.
    WorkerSpawnFailed(JobId),
    /// A child was reaped (worker or config process).
    ChildExited {
        pid: Pid,
        exit: ExitKind,
    },
    /// A deadline may have passed.
    Tick,
    /// SIGTERM/SIGINT or the control command `stop`; a second one escalates.
    Shutdown,
    /// SIGHUP or `reload`: poll the configuration source now.
    Reload,
    /// `restart ID`: reset the backoff and (re)start at once.
    Restart(JobId),
    /// `start ID`: release a held job.
    Start(JobId),
    /// `stop ID`: stop and hold until started again.
    Hold(JobId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
    Hup,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    StartWorker(JobId),
    SignalWorker {
        id: JobId,
        pid: Pid,
        signal: StopSignal,
    },
    StartConfigProcess,
    SignalConfigProcess {
        pid: Pid,
        signal: StopSignal,
    },
    /// Shutdown is complete: every child is gone.
    Exit,
    /// Something worth telling the operator.
    Log(LogLevel, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
}

/// A running (or stopping) process.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningProcess {
    pub pid: Pid,
    pub started_at: Instant,
    /// Set once SIGTERM was sent: when SIGKILL follows.
    pub kill_at: Option<Instant>,
    pub killed: bool,
}

impl RunningProcess {
    fn new(pid: Pid, now: Instant) -> Self {
        RunningProcess { pid, started_at: now, kill_at: None, killed: false }
    }

    fn is_stopping(&self) -> bool {
        self.kill_at.is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub job: Job,
    /// False once the job left the configuration: stop it, never restart.
    pub wanted: bool,
    /// Stopped by `stop ID` and held until `start ID` / `restart ID`.
    pub held: bool,
    pub process: Option<RunningProcess>,
    /// Start again as soon as the current process is gone (new mtime, restart).
    pub restart_when_stopped: bool,
    pub restart_at: Option<Instant>,
    pub backoff: WorkerBackoff,
    pub last_exit: Option<ExitKind>,
    pub last_started_at: Option<Instant>,
    pub restarts: u64,
}

impl JobState {
    fn new(job: Job) -> Self {
        JobState {
            job,
            wanted: true,
            held: false,
            process: None,
            restart_when_stopped: false,
            restart_at: None,
            backoff: WorkerBackoff::default(),
            last_exit: None,
            last_started_at: None,
            restarts: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigProcessState {
    pub process: Option<RunningProcess>,
    pub restart_at: Option<Instant>,
    pub backoff: ConfigBackoff,
    /// Asked to start, not yet reported as started.
    pub starting: bool,
    pub reload_pending: bool,
}

#[derive(Debug, Default)]
pub struct Farm {
    jobs: BTreeMap<JobId, JobState>,
    config: ConfigProcessState,
    shutting_down: bool,
    exited: bool,
}

/// Outcome of a control-socket request on one job, as text for the client.
pub type Reply = Result<String, String>;

impl Farm {
    pub fn new() -> Self {
        Farm::default()
    }

    pub fn jobs(&self) -> &BTreeMap<JobId, JobState> {
        &self.jobs
    }

    pub fn job(&self, id: &JobId) -> Option<&JobState> {
        self.jobs.get(id)
    }

    pub fn config_process(&self) -> &ConfigProcessState {
        &self.config
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The first actions: start the configuration process.
    pub fn start(&mut self) -> Vec<Action> {
        self.config.starting = true;
        vec![Action::StartConfigProcess]
    }

    /// What a control request would answer, checked before the event is fed.
    pub fn check_job_request(&self, id: &JobId, verb: &str) -> Reply {
        match self.jobs.get(id) {
            None => Err(format!("Will not {verb} job {id}, it does not exist")),
            Some(state) if !state.wanted => Err(format!("Will not {verb} job {id}, it was removed")),
            Some(_) => Ok(match verb {
                "restart" => format!("Scheduled immediate restart of job {id}"),
                "start" => format!("Job {id} will be started and kept running"),
                _ => format!("Job {id} is being stopped and will stay stopped until `start {id}`"),
            }),
        }
    }

    /// The next moment something is due, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        for state in self.jobs.values() {
            if state.process.is_none() {
                deadlines.extend(state.restart_at);
            }
            if let Some(p) = &state.process {
                if !p.killed {
                    deadlines.extend(p.kill_at);
                }
            }
        }
        if let Some(p) = &self.config.process {
            if !p.killed {
                deadlines.extend(p.kill_at);
            }
        } else {
            deadlines.extend(self.config.restart_at);
        }
        deadlines.into_iter().min()
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.exited {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match event {
            Event::Configuration(jobs) => self.apply_configuration(jobs, now, &mut actions),
            Event::ConfigProcessStarted(pid) => {
                self.config.starting = false;
                self.config.process = Some(RunningProcess::new(pid, now));
                self.config.reload_pending = false;
                if self.shutting_down {
                    self.stop_config_process(now, &mut actions);
                }
            }
            Event::WorkerStarted { id, pid } => {
                if let Some(state) = self.jobs.get_mut(&id) {
                    state.process = Some(RunningProcess::new(pid, now));
                    state.last_started_at = Some(now);
                    state.restart_at = None;
                    if self.shutting_down || !state.wanted || state.held {
                        stop_job(&id, state, now, &mut actions);
                    }
                }
            }
            Event::WorkerSpawnFailed(id) => {
                if let Some(state) = self.jobs.get_mut(&id) {
                    let delay = state.backoff.delay_after(Duration::ZERO, short_run(&state.job));
                    state.restart_at = Some(now + delay);
                }
            }
            Event::ChildExited { pid, exit } => self.child_exited(pid, exit, now, &mut actions),
            Event::Tick => {}
            Event::Shutdown => self.shutdown(now, &mut actions),
            Event::Reload => {
                if let Some(p) = &self.config.process {
                    actions.push(Action::SignalConfigProcess { pid: p.pid, signal: StopSignal::Hup });
                } else if !self.shutting_down && self.config.restart_at.is_some() {
                    self.config.restart_at = Some(now);
                }
            }
            Event::Restart(id) => {
                if let Some(state) = self.jobs.get_mut(&id).filter(|s| s.wanted) {
                    state.held = false;
                    state.backoff.reset();
                    match &state.process {
                        Some(p) if !p.is_stopping() => {
                            state.restart_when_stopped = true;
                            stop_job(&id, state, now, &mut actions);
                        }
                        Some(_) => state.restart_when_stopped = true,
                        None => state.restart_at = Some(now),
                    }
                }
            }
            Event::Start(id) => {
                if let Some(state) = self.jobs.get_mut(&id).filter(|s| s.wanted) {
                    if state.held {
                        state.held = false;
                        state.backoff.reset();
                        match &state.process {
                            Some(_) => state.restart_when_stopped = true,
                            None => state.restart_at = Some(now),
                        }
                    }
                }
            }
            Event::Hold(id) => {
                if let Some(state) = self.jobs.get_mut(&id).filter(|s| s.wanted) {
                    state.held = true;
                    state.restart_at = None;
                    state.restart_when_stopped = false;
                    stop_job(&id, state, now, &mut actions);
                }
            }
        }
        self.run_due(now, &mut actions);
        actions
    }

    fn apply_configuration(&mut self, jobs: Vec<Job>, now: Instant, actions: &mut Vec<Action>) {
        if self.shutting_down {
            return;
        }
        let new_ids: std::collections::BTreeSet<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        for job in jobs {
            let id = job.id.clone();
            match self.jobs.get_mut(&id) {
                None => {
                    actions.push(Action::Log(LogLevel::Info, format!("job {id} added")));
                    let mut state = JobState::new(job);
                    state.restart_at = Some(now);
                    self.jobs.insert(id, state);
                }
                Some(state) if !state.wanted => {
                    // Removed and still stopping, now back: run the new job once the old process is gone.
                    actions.push(Action::Log(LogLevel::Info, format!("job {id} added again")));
                    state.wanted = true;
                    state.job = job;
                    state.backoff.reset();
                    state.restart_when_stopped = true;
                }
                Some(state) if job.mtime > state.job.mtime => {
                    actions.push(Action::Log(
                        LogLevel::Info,
                        format!("job {id} changed (mtime {} -> {}), restarting it", state.job.mtime, job.mtime),
                    ));
                    state.job = job;
                    state.backoff.reset();
                    if state.held {
                        continue;
                    }
                    match &state.process {
                        Some(p) if !p.is_stopping() => {
                            state.restart_when_stopped = true;
                            stop_job(&id, state, now, actions);
                        }
                        Some(_) => state.restart_when_stopped = true,
                        None => state.restart_at = Some(now),
                    }
                }
                Some(_) => {}
            }
        }
        let removed: Vec<JobId> = self.jobs.keys().filter(|id| !new_ids.contains(*id)).cloned().collect();
        for id in removed {
            let Some(state) = self.jobs.get_mut(&id) else { continue };
            if !state.wanted {
                continue;
            }
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} removed from the configuration, stopping it for good"),
            ));
            if state.process.is_some() {
                state.wanted = false;
                state.restart_when_stopped = false;
                state.restart_at = None;
                stop_job(&id, state, now, actions);
            } else {
                self.jobs.remove(&id);
            }
        }
    }

    fn child_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) {
        if self.config.process.as_ref().is_some_and(|p| p.pid == pid) {
            let process = self.config.process.take().expect("checked above");
            if self.shutting_down {
                self.finish_shutdown_if_done(actions);
                return;
            }
            let delay = self.config.backoff.delay_after(now.saturating_duration_since(process.started_at));
            let reason = if self.config.reload_pending { "; a reload was requested" } else { "" };
            actions.push(Action::Log(
                LogLevel::Warn,
                format!(
                    "configuration process {pid} ended ({}); keeping the last good configuration, restarting it in {}s{reason}",
                    exit.describe(ProcessKind::ConfigProcess),
                    delay.as_secs()
                ),
            ));
            self.config.restart_at = Some(now + delay);
            return;
        }
        let Some((id, state)) = self.jobs.iter_mut().find(|(_, s)| s.process.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return;
        };
        let id = id.clone();
        let process = state.process.take().expect("matched on the process");
        state.last_exit = Some(exit);
        let ran = now.saturating_duration_since(process.started_at);
        if self.shutting_down {
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} (pid {pid}) stopped: {}", exit.describe(ProcessKind::Worker)),
            ));
            self.finish_shutdown_if_done(actions);
            return;
        }
        if !state.wanted {
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} (pid {pid}) stopped: {}; removed for good", exit.describe(ProcessKind::Worker)),
            ));
            self.jobs.remove(&id);
            return;
        }
        if state.held {
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} (pid {pid}) stopped: {}; held", exit.describe(ProcessKind::Worker)),
            ));
            return;
        }
        state.restarts += 1;
        if state.restart_when_stopped {
            state.restart_when_stopped = false;
            state.restart_at = Some(now);
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} (pid {pid}) stopped: {}; starting it again", exit.describe(ProcessKind::Worker)),
            ));
            return;
        }
        let delay = state.backoff.delay_after(ran, short_run(&state.job));
        state.restart_at = Some(now + delay);
        let level = if exit == ExitKind::Code(0) { LogLevel::Info } else { LogLevel::Warn };
        actions.push(Action::Log(
            level,
            format!(
                "job {id} (pid {pid}) exited after {:.1}s: {}; restarting {}",
                ran.as_secs_f64(),
                exit.describe(ProcessKind::Worker),
                if delay.is_zero() { "now".to_string() } else { format!("in {}s (backoff)", delay.as_secs()) }
            ),
        ));
    }

    fn shutdown(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.shutting_down {
            actions.push(Action::Log(LogLevel::Warn, "second stop request: killing every process now".into()));
            if let Some(p) = self.config.process.as_mut() {
                p.killed = true;
                actions.push(Action::SignalConfigProcess { pid: p.pid, signal: StopSignal::Kill });
            }
            for (id, state) in &mut self.jobs {
                if let Some(p) = state.process.as_mut() {
                    p.killed = true;
                    actions.push(Action::SignalWorker { id: id.clone(), pid: p.pid, signal: StopSignal::Kill });
                }
            }
            return;
        }
        self.shutting_down = true;
        actions.push(Action::Log(
            LogLevel::Info,
            "shutting down: stopping the configuration process, then every worker".into(),
        ));
        self.config.restart_at = None;
        self.stop_config_process(now, actions);
        for (id, state) in &mut self.jobs {
            state.restart_at = None;
            stop_job(id, state, now, actions);
        }
        self.finish_shutdown_if_done(actions);
    }

    fn stop_config_process(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let Some(p) = self.config.process.as_mut() {
            if !p.is_stopping() {
                p.kill_at = Some(now + CONFIG_STOP_TIMEOUT);
                actions.push(Action::SignalConfigProcess { pid: p.pid, signal: StopSignal::Term });
            }
        }
    }

    fn finish_shutdown_if_done(&mut self, actions: &mut Vec<Action>) {
        let workers_left = self.jobs.values().any(|s| s.process.is_some());
        if self.shutting_down && !workers_left && self.config.process.is_none() && !self.config.starting {
            self.exited = true;
            actions.push(Action::Exit);
        }
    }

    /// Starts what is due and escalates stops whose timeout passed.
    fn run_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for (id, state) in &mut self.jobs {
            if let Some(p) = state.process.as_mut() {
                if !p.killed && p.kill_at.is_some_and(|at| at <= now) {
                    p.killed = true;
                    actions.push(Action::Log(
                        LogLevel::Warn,
                        format!(
                            "job {id} (pid {}) did not stop within {}s of SIGTERM, sending SIGKILL",
                            p.pid, state.job.shutdown_timeout_seconds
                        ),
                    ));
                    actions.push(Action::SignalWorker { id: id.clone(), pid: p.pid, signal: StopSignal::Kill });
                }
            } else if !self.shutting_down && state.wanted && !state.held && state.restart_at.is_some_and(|at| at <= now)
            {
                state.restart_at = None;
                actions.push(Action::StartWorker(id.clone()));
            }
        }
        if let Some(p) = self.config.process.as_mut() {
            if !p.killed && p.kill_at.is_some_and(|at| at <= now) {
                p.killed = true;
                actions.push(Action::SignalConfigProcess { pid: p.pid, signal: StopSignal::Kill });
            }
        } else if !self.shutting_down && !self.config.starting && self.config.restart_at.is_some_and(|at| at <= now) {
            self.config.restart_at = None;
            self.config.starting = true;
            actions.push(Action::StartConfigProcess);
        }
    }

    /// The configuration process could not be forked: retry with backoff.
    pub fn config_spawn_failed(&mut self, now: Instant) {
        self.config.starting = false;
        let delay = self.config.backoff.delay_after(Duration::ZERO);
        self.config.restart_at = Some(now + delay);
    }
}

fn short_run(job: &Job) -> Duration {
    Duration::from_secs(job.short_run_time_seconds)
}

fn stop_job(id: &JobId, state: &mut JobState, now: Instant, actions: &mut Vec<Action>) {
    if let Some(p) = state.process.as_mut() {
        if !p.is_stopping() {
            p.kill_at = Some(now + Duration::from_secs(state.job.shutdown_timeout_seconds));
            actions.push(Action::SignalWorker { id: id.clone(), pid: p.pid, signal: StopSignal::Term });
        }
    }
}
