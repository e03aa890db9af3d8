//! The supervisor: one single-threaded poll loop (`event_loop.rs`) over
//! the signalfd, the configuration pipe, workers' output, the zygote, the
//! cluster agent, the control socket and HTTP, with the nearest deadline as
//! the timeout. Events go into the pure core (`farm`), its actions are
//! applied here. It never runs PHP itself: every PHP request happens in a
//! forked child.

#![forbid(unsafe_code)]

mod backtraces;
mod children;
mod cluster;
mod cluster_view;
pub mod config_channel;
mod configuration;
mod dashboard;
pub use dashboard::DashboardSettings;
mod event_loop;
pub use cluster::ClusterSettings;
mod metrics;
mod notify;
mod output;
mod requests;
mod spawn;
pub mod upgrade;
mod zygote;
mod zygote_host;
pub use upgrade::UPGRADE_CHECK_ENV;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;

use crate::control::server::{ControlError, ControlServer};
use crate::farm::{Action, Event, Farm, HostExit, KillReason, LogLevel};
use crate::job::{self, JobId};
use crate::metrics::http::HttpServer;
use crate::php::{self, Engine, PhpError};
use crate::process::shared_page::{SharedPage, SharedSlots};
use crate::process::{self, ExitKind, ProcessError, SignalEvents};
use children::ChildRole;
use config_channel::{ConfigChannel, PushRate};

/// Forking stops for the turn once it took this long; the rest of the due
/// starts wait for the next turn, after signals and clients were served.
const FORK_BUDGET: Duration = Duration::from_millis(5);

/// Workers that can have a shared page at once (256 MiB of address space,
/// one 4 KiB page of memory per live worker).
const SHARED_SLOTS: usize = 65_536;

/// At most this many exited children are reaped per turn.
const REAP_BATCH: usize = 128;

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Php(#[from] PhpError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot listen for metrics on {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
}

/// What the farm runs, from the command line.
#[derive(Debug, Clone)]
pub struct FarmConfig {
    pub source: String,
    pub source_is_file: bool,
    pub interval_seconds: u64,
    pub bootstrap: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub control_socket_mode: u32,
    pub argv: Vec<String>,
    /// Descriptors of the host (the pidfile's lock) no child may keep.
    pub close_in_children: Vec<std::os::fd::RawFd>,
    /// Adopt orphaned descendants (`--subreaper`).
    pub subreaper: bool,
    /// Defaults for jobs that do not set lrpm-host's optional fields.
    pub job_defaults: job::JobDefaults,
    /// Capture workers' stdout and stderr (else they inherit the host's).
    pub capture_output: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--dashboard`: the web page and its documents on the same listener.
    pub dashboard: Option<DashboardSettings>,
    /// Fork workers from a zygote (the default; `--no-zygote` turns it off).
    pub zygote: bool,
    /// This program's path (`lrpmctl upgrade` executes what is there now).
    pub program: PathBuf,
    /// How long the upgrade's trial run may take.
    pub upgrade_trial_timeout: Duration,
    /// `--cluster`: the farm spans the members of an etcd cluster.
    pub cluster: Option<cluster::ClusterSettings>,
    /// `--user`: whom every child runs as (the config process, the zygote,
    /// workers of jobs without their own `user`); the supervisor stays root.
    pub user: Option<std::sync::Arc<job::users::Credentials>>,
}

struct Supervisor<'e> {
    /// `--cluster`: the agent process and its link.
    agent: Option<cluster::Agent>,
    engine: &'e Engine,
    config: FarmConfig,
    farm: Farm,
    signals: SignalEvents,
    control: ControlServer,
    config_channel: Option<ConfigChannel>,
    exit: Option<HostExit>,
    /// (job, field) pairs already warned about.
    warned_fields: HashSet<(JobId, String)>,
    push_rate: PushRate,
    /// Entries the current configuration process sent, for the ones it
    /// later sends as unchanged.
    entry_cache: job::EntryCache,
    /// The nice value children go back to (the supervisor runs above them).
    child_nice: Option<i32>,
    /// The open-files soft limit children go back to.
    child_open_files: Option<u64>,
    /// systemd's `Type=notify` protocol, when started that way.
    notifier: Option<notify::Notifier>,
    /// Time spent forking workers in the current loop turn.
    forking: Duration,
    /// More exited children may be waiting to be reaped (a turn reaps a batch).
    reap_pending: bool,
    /// One shared page per worker, from one region mapped before the first fork.
    slots: Option<SharedSlots>,
    /// Every child not reaped yet, what it is, and the workers' pages.
    children: children::ChildTable,
    /// Workers' output, when captured (`--worker-output=capture`).
    output: Option<output::OutputRouter>,
    /// The zygote's lifecycle (Disabled with `--no-zygote`) and, while it
    /// runs, the connection to it.
    zygote: crate::farm::zygote::Zygote<zygote::Connection>,
    /// `lrpmctl upgrade` under way.
    upgrade: Option<upgrade::Upgrade>,
    /// Creating output pipes failed and was logged (until it works again).
    output_pipes_failed: bool,
    /// The descriptors children keep (open before the supervisor started:
    /// libraries' own); every other one is closed in a child.
    keep_fds: std::sync::Arc<Vec<std::os::fd::RawFd>>,
    /// The metrics and health endpoints (`--metrics-listen`).
    http: Option<HttpServer>,
    /// Uptime and configuration loads, for the metrics.
    host: crate::metrics::HostCounters,
    /// Backtrace requests waiting for the workers' answers.
    backtraces: backtraces::Backtraces,
    /// `--dashboard`: its history and settings.
    dashboard: Option<dashboard::Dashboard>,
    rss: crate::metrics::rss::RssSampler,
    /// Workers' CPU and memory as `status` last read them (`requests.rs`).
    usage: process::UsageCache,
}

/// Runs the farm until it has shut down; returns how it ended.
pub fn run(engine: &Engine, config: FarmConfig) -> Result<HostExit, SupervisorError> {
    // The previous image's state, when `lrpmctl upgrade` started this one.
    let handoff = upgrade::take_handoff();
    let handed: Vec<std::os::fd::RawFd> =
        handoff.iter().flat_map(upgrade::Handoff::descriptors).chain(upgrade::rollback_fd()).collect();
    // Before the supervisor opens anything: what is open now, but what the
    // host was started with, is the libraries' (OPcache's lock file).
    let keep_fds: Vec<std::os::fd::RawFd> = process::descriptors_for_children()
        .into_iter()
        .filter(|fd| !config.close_in_children.contains(fd) && !handed.contains(fd))
        .collect();
    crate::host_output::install();
    let output = if config.capture_output {
        match output::OutputRouter::new(crate::telemetry::format()) {
            Ok(router) => Some(router),
            Err(e) => {
                tracing::warn!("cannot capture workers' output ({e}); they write to the host's stdout and stderr");
                None
            }
        }
    } else {
        None
    };
    let socket_path = config.control_socket.clone().unwrap_or_else(crate::control::server::default_socket_path);
    let control = match handoff.as_ref().and_then(|h| process::adopt_fd(h.control_fd)) {
        Some(listener) => ControlServer::adopt(listener, &socket_path)?,
        None => ControlServer::bind(&socket_path, config.control_socket_mode)?,
    };
    let signals = SignalEvents::new()?;
    let dashboard = config.dashboard.clone().map(|settings| dashboard::Dashboard::new(settings, Instant::now()));
    let http = match config.metrics_listen {
        Some(address) => Some(HttpServer::bind(address).map_err(|e| SupervisorError::Metrics(address, e))?),
        None => None,
    };
    // Workers forked by the zygote's intermediate are reparented here.
    if config.subreaper || config.zygote {
        process::become_subreaper()?;
    }
    let child_open_files = process::raise_open_files_limit();
    php::set_process_title(&format!("lrpm-host: supervisor {}", config.source));
    tracing::info!(
        source = %config.source,
        interval = config.interval_seconds,
        bootstrap = %config.bootstrap.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
        control_socket = %socket_path.display(),
        metrics = %http.as_ref().map_or_else(|| "off".to_string(), |h| format!("http://{}/metrics", h.address())),
        php = php::php_version(),
        "lrpm-host supervisor started"
    );
    let zygote_enabled = config.zygote;
    let mut supervisor = Supervisor {
        engine,
        config,
        farm: Farm::new(),
        signals,
        control,
        config_channel: None,
        exit: None,
        warned_fields: HashSet::new(),
        push_rate: PushRate::default(),
        entry_cache: job::EntryCache::default(),
        child_nice: process::raise_supervisor_priority(),
        child_open_files,
        notifier: notify::Notifier::from_environment(Instant::now()),
        reap_pending: false,
        forking: Duration::ZERO,
        slots: match SharedSlots::new(SHARED_SLOTS) {
            Ok(slots) => Some(slots),
            Err(e) => {
                tracing::warn!("cannot map the workers' shared pages ({e}); running without them");
                None
            }
        },
        children: children::ChildTable::default(),
        output,
        zygote: crate::farm::zygote::Zygote::new(zygote_enabled, Instant::now()),
        upgrade: None,
        output_pipes_failed: false,
        keep_fds: std::sync::Arc::new(keep_fds),
        http,
        host: crate::metrics::HostCounters::new(Instant::now()),
        backtraces: Default::default(),
        dashboard,
        rss: Default::default(),
        usage: process::UsageCache::default(),
        agent: None,
    };
    if let Some(settings) = supervisor.config.cluster.clone() {
        supervisor.farm.enable_cluster();
        supervisor.agent = Some(cluster::Agent::new(settings));
        // An upgrade's new image takes the running agent over instead.
        if !handoff.as_ref().is_some_and(|h| h.cluster.is_some()) {
            supervisor.start_agent_if_due(Instant::now());
        }
    }
    supervisor.zygote_overdue(Instant::now());
    if let Some(handoff) = handoff {
        supervisor.adopt_handoff(handoff, Instant::now());
    }
    let first = supervisor.farm.start();
    supervisor.apply(first);
    let exit = supervisor.event_loop();
    supervisor.reap_zygote();
    // Every child is gone: what they wrote last is still in the pipes.
    if let Some(output) = supervisor.output.as_mut() {
        output.drain_all();
    }
    let exit = exit?;
    match exit {
        HostExit::Clean => tracing::info!("lrpm-host shut down cleanly"),
        HostExit::ConfigNeverLoaded => tracing::error!("lrpm-host stopped: no configuration could be loaded"),
        HostExit::EssentialJobFailed => tracing::error!("lrpm-host stopped: an essential job failed for good"),
    }
    crate::host_output::finish(OUTPUT_FLUSH_AT_EXIT);
    Ok(exit)
}

/// How long the host waits at exit for a slow reader of its stdout and stderr.
const OUTPUT_FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

impl Supervisor<'_> {
    fn handle_signals(&mut self, now: Instant) {
        for sig in self.signals.drain() {
            match sig {
                Signal::SIGCHLD => self.reap_children(now),
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                    tracing::info!("received {}", sig.as_str());
                    let actions = self.farm.handle(Event::Shutdown, now);
                    self.apply(actions);
                }
                Signal::SIGHUP => {
                    match crate::log_file::reopen() {
                        Some(Ok(())) => tracing::info!("received SIGHUP: log file reopened"),
                        Some(Err(e)) => {
                            tracing::error!(
                                "received SIGHUP: cannot reopen the log file: {e}; still writing to the file it had"
                            )
                        }
                        None => {}
                    }
                    tracing::info!("received SIGHUP: polling the configuration source now");
                    let actions = self.farm.handle(Event::Reload, now);
                    self.apply(actions);
                }
                Signal::SIGUSR1 => self.log_status_report(now),
                other => tracing::debug!("ignoring {}", other.as_str()),
            }
        }
    }

    /// Reaps a batch of exited children and tells the core.
    fn reap_children(&mut self, now: Instant) {
        // The pids of workers the zygote forked first: one that exited at
        // once must be known as the farm's before it is reaped.
        self.read_zygote(now);
        let farm = &self.farm;
        let (exited, more) = process::reap_exited(|pid| farm.knows_pid(pid.as_raw()), REAP_BATCH);
        self.reap_pending = more;
        for (pid, exit) in exited {
            self.child_exited(pid, exit, now);
        }
    }

    /// One reaped child, handed to whoever started it.
    fn child_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant) {
        let children::Reaped { role, page } = self.children.remove(pid.as_raw());
        match role {
            Some(ChildRole::Zygote | ChildRole::RetiredZygote) => {
                if let Some(output) = self.output.as_mut() {
                    output.drain(pid.as_raw());
                }
                if role == Some(ChildRole::Zygote) {
                    self.zygote_exited(pid.as_raw(), exit, now);
                }
                return;
            }
            Some(ChildRole::UpgradeTrial) => return self.upgrade_check_exited(exit),
            Some(ChildRole::ClusterAgent) => {
                self.agent_exited(pid.as_raw(), exit, now);
                return;
            }
            Some(ChildRole::Worker | ChildRole::ConfigProcess) | None => {}
        }
        if !self.farm.knows_pid(pid.as_raw()) {
            // An orphan adopted as PID 1 or subreaper: reaped, nothing more.
            tracing::debug!(
                "reaped orphaned process {pid} ({})",
                exit.describe(crate::farm::ProcessKind::Worker, crate::farm::PhpEnd::Unknown)
            );
        }
        // The page is read before it goes back to the pool: the next worker
        // to get it starts from zero.
        let (recycle, cycles, tasks, stop_signalled, php) = page.as_ref().map_or(
            (None, 0, crate::farm::TaskCounts::default(), false, crate::farm::PhpEnd::Unknown),
            |page| {
                let php = match page.ended_status() {
                    Some(_) => crate::farm::PhpEnd::Ended,
                    None => crate::farm::PhpEnd::NotEnded,
                };
                let recycle = crate::farm::RecycleReason::from_worker_code(page.recycle_reason());
                let tasks = page.tasks();
                let tasks = crate::farm::TaskCounts {
                    started: tasks.started,
                    failed: tasks.failed,
                    timed_out: tasks.timed_out,
                };
                (recycle, page.cycles(), tasks, page.stop_signalled(), php)
            },
        );
        self.backtrace_process_ended(pid.as_raw(), page.as_ref());
        self.give_back_page(page);
        // Its last words before the line about its exit.
        if let Some(output) = self.output.as_mut() {
            output.drain(pid.as_raw());
        }
        if self.farm.config_process().pid() == Some(pid.as_raw()) {
            // Whatever is still in the pipe was written before the exit.
            self.read_config_channel(now);
            self.config_channel = None;
            self.host.config_process_exited(exit, self.farm.is_shutting_down());
        }
        if stop_signalled {
            let actions = self.farm.handle(Event::StopSignalled { pid: pid.as_raw() }, now);
            self.apply(actions);
        }
        let actions =
            self.farm.handle(Event::ChildExited { pid: pid.as_raw(), exit, recycle, cycles, tasks, php }, now);
        self.apply(actions);
    }

    /// A core log line, with the job's name looked up for structured logs.
    fn log(&self, event: &crate::farm::LogEvent) {
        let job = event.job.as_ref().map(ToString::to_string);
        let name = event.job.as_ref().and_then(|id| self.farm.job(id)).map(|s| s.job.name.as_str());
        let subject = crate::telemetry::Subject { job: job.as_deref(), name, slot: event.slot, pid: event.pid };
        crate::telemetry::log(event.level, &event.message, subject);
    }

    /// A worker's cycle counters from its shared page (None without one).
    fn cycle_figures(&self, pid: i32) -> Option<crate::control::status::CycleFigures> {
        let page = self.children.page(pid)?;
        let now_ns = process::monotonic_now_ns();
        let snapshot = page.cycle_snapshot(now_ns);
        Some(crate::control::status::CycleFigures {
            since_activity: page.since_activity(now_ns),
            cycles: snapshot.cycles,
            last_cycle: snapshot.last_cycle,
            cycle_running: snapshot.current_cycle_running_for,
            heap_bytes: snapshot.heap_bytes,
            peak_heap_bytes: snapshot.peak_heap_bytes,
        })
    }

    fn cycle_progress(&self, pid: i32) -> Option<crate::farm::CycleProgress> {
        let page = self.children.page(pid)?;
        let now_ns = process::monotonic_now_ns();
        let snapshot = page.cycle_snapshot(now_ns);
        let silent_for = snapshot.current_cycle_running_for.map(|running| {
            let progress_ns = page.heartbeat().progress_ns;
            let since_progress = Duration::from_nanos(now_ns.saturating_sub(progress_ns));
            if progress_ns == 0 {
                running
            } else {
                running.min(since_progress)
            }
        });
        Some(crate::farm::CycleProgress {
            cycles: snapshot.cycles,
            current_cycle: snapshot.current_cycle_running_for,
            silent_for,
        })
    }

    fn apply(&mut self, actions: Vec<Action>) {
        if self.farm.is_shutting_down() {
            // Before the stops' releases, so the agent hands each unit over
            // as its worker ends, to members that no longer count this one.
            self.leave_cluster("lrpm-host is shutting down");
        }
        self.apply_actions(actions);
        // A configuration, a scale or a removal may have changed the units.
        self.sync_units();
    }

    fn apply_actions(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let now = Instant::now();
            match action {
                Action::StartWorker(key) => {
                    // The zygote's answer (the pid) comes later, as a reply.
                    if self.start_through_zygote(&key, now).is_some() {
                        continue;
                    }
                    let event = if self.forking >= FORK_BUDGET {
                        Event::WorkerStartDeferred(key)
                    } else {
                        let fork_started = Instant::now();
                        let event = self.spawn_worker(&key);
                        self.forking += fork_started.elapsed();
                        event
                    };
                    queue.extend(self.farm.handle(event, now));
                }
                Action::StopWorker { pid, .. } | Action::StopConfigProcess { pid } => {
                    process::signal_group(Pid::from_raw(pid), Signal::SIGTERM)
                }
                Action::InspectCycles { key, pid } => {
                    let progress = self.cycle_progress(pid);
                    queue.extend(self.farm.handle(Event::CycleProgress { key, pid, progress }, now));
                }
                Action::KillWorker { key, pid, reason } => {
                    if let KillReason::StopTimeout(timeout) = reason {
                        // Exits collected this turn were handled before the
                        // deadlines; one that came since, or a process still
                        // in the kernel's teardown, has stopped: it is reaped
                        // next turn, neither killed nor reported as stuck.
                        let ended = self.children.page(pid).and_then(SharedPage::ended_status);
                        match (ended, process::exit_progress(Pid::from_raw(pid))) {
                            (None, process::ExitProgress::Alive) => {}
                            (ended, progress) => {
                                let how =
                                    ended.map_or_else(String::new, |s| format!(", its PHP request ended with {s}"));
                                tracing::debug!(
                                    "{key} (pid {pid}) reached its stop deadline already ending ({progress:?}{how}): \
                                     not killed"
                                );
                                self.reap_pending |= progress == process::ExitProgress::Exited;
                                continue;
                            }
                        }
                        let handler = match self.children.page(pid) {
                            Some(page) if page.user_replaced_stop_handler() => {
                                "user code had installed its own SIGTERM/SIGINT handler (pcntl_signal), which lrpm-host chains: \
                                 the stop was requested, but cycle() did not return in time"
                            }
                            Some(_) => "user code had not replaced the SIGTERM handler: cycle() did not return in time",
                            None => "cycle() did not return in time",
                        };
                        let label = self.farm.job(&key.id).map_or_else(|| format!("job {key}"), |s| s.label(key.slot));
                        let message = format!(
                            "{label} (pid {pid}) did not stop within {}s of SIGTERM, sending SIGKILL ({handler}; \
                             bound blocking calls with timeouts, see the README, \"Writing an app\")",
                            timeout.as_secs()
                        );
                        self.log(&crate::farm::LogEvent {
                            level: LogLevel::Warn,
                            message,
                            job: Some(key.id.clone()),
                            slot: Some(key.slot),
                            pid: Some(pid),
                        });
                        // Where it was stuck goes to the log first.
                        let why = format!("{label} (pid {pid}) killed at its stop deadline");
                        self.kill_after_backtrace(&key.id, key.slot, pid, why, now);
                        continue;
                    }
                    process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
                }
                Action::LogBacktrace { key, pid, why } => self.log_backtrace(&key.id, key.slot, pid, why, now),
                Action::KillConfigProcess { pid } => process::signal_group(Pid::from_raw(pid), Signal::SIGKILL),
                Action::ReloadConfigProcess { pid } => {
                    if let Err(e) = process::signal_process(Pid::from_raw(pid), Signal::SIGHUP) {
                        tracing::warn!("cannot ask the configuration process {pid} to reload: {e}");
                    }
                }
                Action::StartConfigProcess => {
                    let event = match self.spawn_config_process() {
                        Ok(pid) => Event::ConfigProcessStarted(pid.as_raw()),
                        Err(e) => {
                            tracing::error!("cannot start the configuration process: {e}");
                            self.host.config_spawn_failed();
                            if let Some(dashboard) = self.dashboard.as_mut() {
                                dashboard.configuration_failed(&format!("cannot start the configuration process: {e}"));
                            }
                            Event::ConfigSpawnFailed
                        }
                    };
                    queue.extend(self.farm.handle(event, now));
                }
                Action::Log(event) => self.log(&event),
                Action::Exit(exit) => self.exit = Some(exit),
                Action::ReleaseUnit(key) => {
                    // A unit list without it first: the agent would claim a
                    // released unit it still thinks wanted.
                    self.sync_units();
                    self.send_to_agent(&crate::cluster::messages::ToAgent::Stopped { unit: key.to_string() })
                }
            }
        }
    }
}
