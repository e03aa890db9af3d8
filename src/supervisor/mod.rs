//! The supervisor: one single-threaded poll loop over the signalfd, the
//! control socket and its clients, and the configuration pipe, with the
//! farm's next deadline as the timeout. Events go into the pure core
//! (`farm`), its actions are applied here. It never runs PHP itself: every
//! PHP request happens in a forked child.

mod config_channel;

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;

use crate::control::server::{ClientId, ControlError, ControlServer};
use crate::control::{self, Request};
use crate::farm::{Action, Event, Farm, LogLevel, StopSignal};
use crate::job::{self, JobId};
use crate::php::{self, Engine, PhpError};
use crate::process::{self, ChildSetup, ExitKind, ProcessError, SignalEvents};
use config_channel::{ConfigChannel, ConfigMessage, ReadOutcome};

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Php(#[from] PhpError),
    #[error(transparent)]
    Control(#[from] ControlError),
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
}

struct Supervisor<'e> {
    engine: &'e Engine,
    config: FarmConfig,
    farm: Farm,
    signals: SignalEvents,
    control: ControlServer,
    config_channel: Option<ConfigChannel>,
    config_pid: Option<Pid>,
    exit_requested: bool,
}

pub fn run(engine: &Engine, config: FarmConfig) -> Result<(), SupervisorError> {
    let socket_path = config.control_socket.clone().unwrap_or_else(control::server::default_socket_path);
    let control = ControlServer::bind(&socket_path, config.control_socket_mode)?;
    let signals = SignalEvents::new()?;
    php::set_process_title(&format!("lrpm-host: supervisor {}", config.source));
    tracing::info!(
        source = %config.source,
        interval = config.interval_seconds,
        bootstrap = %config.bootstrap.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
        control_socket = %socket_path.display(),
        php = php::php_version(),
        "lrpm-host supervisor started"
    );
    let mut supervisor = Supervisor {
        engine,
        config,
        farm: Farm::new(),
        signals,
        control,
        config_channel: None,
        config_pid: None,
        exit_requested: false,
    };
    let first = supervisor.farm.start();
    supervisor.apply(first);
    supervisor.event_loop()?;
    tracing::info!("lrpm-host shut down cleanly");
    Ok(())
}

impl Supervisor<'_> {
    fn event_loop(&mut self) -> Result<(), SupervisorError> {
        while !self.exit_requested {
            let now = Instant::now();
            let deadline = [self.farm.next_deadline(), self.control.next_deadline()].into_iter().flatten().min();
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(at) => {
                    // Round up so a deadline is never polled a millisecond early.
                    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
            };

            let signal_fd = self.signals.raw_fd();
            let listener_fd = self.control.listener_fd();
            let config_fd = self.config_channel.as_ref().map(ConfigChannel::raw_fd);
            let clients = self.control.client_fds();
            let mut raw: Vec<(RawFd, PollFlags)> =
                vec![(signal_fd, PollFlags::POLLIN), (listener_fd, PollFlags::POLLIN)];
            if let Some(fd) = config_fd {
                raw.push((fd, PollFlags::POLLIN));
            }
            for (_, fd, wants_write) in &clients {
                raw.push((*fd, if *wants_write { PollFlags::POLLOUT } else { PollFlags::POLLIN }));
            }
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd> = raw
                    .iter()
                    // SAFETY: every descriptor is owned by self and stays open
                    // until after poll returns (nothing is closed in between).
                    .map(|(fd, flags)| PollFd::new(unsafe { BorrowedFd::borrow_raw(*fd) }, *flags))
                    .collect();
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(ProcessError::Signals(e).into()),
                }
                fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
            };
            let now = Instant::now();

            // Configuration messages first: a config process's last words are
            // read before its exit is handled.
            if config_fd.is_some() && ready[2] {
                self.read_config_channel(now);
            }
            if ready[0] {
                self.handle_signals(now);
            }
            if ready[1] {
                self.control.accept_all(now);
            }
            let client_offset = if config_fd.is_some() { 3 } else { 2 };
            for (i, (id, _, wants_write)) in clients.iter().enumerate() {
                if ready[client_offset + i] {
                    if *wants_write {
                        self.control.write_client(*id);
                    } else if let Some(request) = self.control.read_client(*id) {
                        self.answer(*id, &request, now);
                    }
                }
            }
            self.control.expire(now);
            let actions = self.farm.handle(Event::Tick, now);
            self.apply(actions);
        }
        Ok(())
    }

    fn handle_signals(&mut self, now: Instant) {
        for sig in self.signals.drain() {
            match sig {
                Signal::SIGCHLD => {
                    for (pid, exit) in process::reap_exited() {
                        self.child_exited(pid, exit, now);
                    }
                }
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                    tracing::info!("received {}", sig.as_str());
                    let actions = self.farm.handle(Event::Shutdown, now);
                    self.apply(actions);
                }
                Signal::SIGHUP => {
                    tracing::info!("received SIGHUP: polling the configuration source now");
                    let actions = self.farm.handle(Event::Reload, now);
                    self.apply(actions);
                }
                other => tracing::debug!("ignoring {}", other.as_str()),
            }
        }
    }

    fn child_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant) {
        if self.config_pid == Some(pid) {
            self.config_pid = None;
            // Whatever is still in the pipe was written before the exit.
            self.read_config_channel(now);
            self.config_channel = None;
        }
        let actions = self.farm.handle(Event::ChildExited { pid: pid.as_raw(), exit }, now);
        self.apply(actions);
    }

    fn read_config_channel(&mut self, now: Instant) {
        let Some(channel) = self.config_channel.as_mut() else { return };
        let (messages, closed) = match channel.read_available() {
            ReadOutcome::Open(m) => (m, false),
            ReadOutcome::Closed(m) => (m, true),
        };
        if closed {
            self.config_channel = None;
        }
        for message in messages {
            match message {
                Ok(ConfigMessage::Configuration { jobs }) => {
                    let (valid, errors) = job::validate_all(&jobs);
                    for error in &errors {
                        tracing::error!("invalid configuration for {error}; the job is dropped, the others run");
                    }
                    tracing::debug!(jobs = valid.len(), "configuration received");
                    let actions = self.farm.handle(Event::Configuration(valid), now);
                    self.apply(actions);
                }
                Ok(ConfigMessage::Error { message }) => {
                    tracing::error!("configuration source error: {message}");
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    /// Descriptors a forked child must not keep.
    fn supervisor_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.signals.raw_fd()];
        fds.extend(self.control.all_fds());
        fds.extend(self.config_channel.as_ref().map(ConfigChannel::raw_fd));
        fds
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let now = Instant::now();
            match action {
                Action::StartWorker(id) => {
                    let event = self.spawn_worker(&id);
                    queue.extend(self.farm.handle(event, now));
                }
                Action::StartConfigProcess => match self.spawn_config_process() {
                    Ok(pid) => queue.extend(self.farm.handle(Event::ConfigProcessStarted(pid.as_raw()), now)),
                    Err(e) => {
                        tracing::error!("cannot start the configuration process: {e}");
                        self.farm.config_spawn_failed(now);
                    }
                },
                Action::SignalWorker { pid, signal, .. } | Action::SignalConfigProcess { pid, signal } => {
                    let sig = match signal {
                        StopSignal::Term => Signal::SIGTERM,
                        StopSignal::Kill => Signal::SIGKILL,
                        StopSignal::Hup => Signal::SIGHUP,
                    };
                    process::send_signal(Pid::from_raw(pid), sig);
                }
                Action::Log(LogLevel::Info, message) => tracing::info!("{message}"),
                Action::Log(LogLevel::Warn, message) => tracing::warn!("{message}"),
                Action::Exit => self.exit_requested = true,
            }
        }
    }

    fn spawn_worker(&mut self, id: &JobId) -> Event {
        let Some(state) = self.farm.job(id) else { return Event::Tick };
        let source_file = self.config.source_is_file.then(|| Path::new(&self.config.source));
        let program = match php::farm_worker_program(
            &state.job,
            self.config.bootstrap.as_deref(),
            source_file,
            &self.config.argv,
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("job {id}: cannot prepare the worker: {e}");
                return Event::WorkerSpawnFailed(id.clone());
            }
        };
        let setup = ChildSetup { close_fds: self.supervisor_fds() };
        let engine = self.engine;
        match process::spawn_child(&setup, |parent| program.run(engine, parent)) {
            Ok(pid) => {
                tracing::info!("job {id} ({}) started as pid {pid}", state.job.name);
                Event::WorkerStarted { id: id.clone(), pid: pid.as_raw() }
            }
            Err(e) => {
                tracing::error!("job {id}: {e}");
                Event::WorkerSpawnFailed(id.clone())
            }
        }
    }

    fn spawn_config_process(&mut self) -> Result<Pid, SupervisorError> {
        let (read_end, write_end) = process::message_pipe()?;
        let program = php::config_program(
            &self.config.source,
            self.config.source_is_file,
            self.config.interval_seconds,
            false,
            self.config.bootstrap.as_deref(),
            &self.config.argv,
            std::os::fd::AsRawFd::as_raw_fd(&write_end),
        )?;
        let mut close_fds = self.supervisor_fds();
        close_fds.push(std::os::fd::AsRawFd::as_raw_fd(&read_end));
        let setup = ChildSetup { close_fds };
        let engine = self.engine;
        let pid = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
        drop(write_end);
        self.config_channel = Some(ConfigChannel::new(read_end));
        self.config_pid = Some(pid);
        tracing::debug!("configuration process started as pid {pid}");
        Ok(pid)
    }

    fn answer(&mut self, client: ClientId, text: &str, now: Instant) {
        let response = match Request::parse(text) {
            Err(message) => message,
            Ok(request) => self.handle_request(request, now),
        };
        self.control.respond(client, &response);
    }

    fn handle_request(&mut self, request: Request, now: Instant) -> String {
        let job_event = |farm: &mut Farm, id: JobId, verb: &str, event: Event| -> (String, Vec<Action>) {
            match farm.check_job_request(&id, verb) {
                Ok(message) => (message, farm.handle(event, now)),
                Err(message) => (format!("error: {message}"), Vec::new()),
            }
        };
        let (response, actions) = match request {
            Request::Help => (format!("lrpm-host: {}", control::HELP), Vec::new()),
            Request::Status => {
                let doc = control::status::status_document(&self.farm, now, control::status::unix_now());
                (doc.to_string(), Vec::new())
            }
            Request::Version => {
                (format!("lrpm-host {} (PHP {})", env!("CARGO_PKG_VERSION"), php::php_version()), Vec::new())
            }
            Request::Reload => {
                ("Scheduled immediate configuration reload".to_string(), self.farm.handle(Event::Reload, now))
            }
            Request::Shutdown => {
                ("lrpm: Shutting down process manager".to_string(), self.farm.handle(Event::Shutdown, now))
            }
            Request::Restart(id) => job_event(&mut self.farm, id.clone(), "restart", Event::Restart(id)),
            Request::Start(id) => job_event(&mut self.farm, id.clone(), "start", Event::Start(id)),
            Request::Hold(id) => job_event(&mut self.farm, id.clone(), "stop", Event::Hold(id)),
            Request::Signal(id, name) => match (control::parse_signal(&name), self.farm.job(&id)) {
                (None, _) => (format!("error: unknown signal {name}"), Vec::new()),
                (_, None) => (format!("error: job {id} does not exist"), Vec::new()),
                (Some(sig), Some(state)) => match &state.process {
                    Some(p) => {
                        process::send_signal(Pid::from_raw(p.pid), sig);
                        (format!("Sent {} to job {id} (pid {})", sig.as_str(), p.pid), Vec::new())
                    }
                    None => (format!("error: job {id} is not running"), Vec::new()),
                },
            },
        };
        self.apply(actions);
        response
    }
}

/// `lrpm-host check SOURCE`: loads the configuration once, prints the jobs
/// and every validation error; true when every job is valid.
pub fn check(
    engine: &Engine,
    source: &str,
    bootstrap: Option<&Path>,
    argv: &[String],
) -> Result<bool, SupervisorError> {
    let is_file = crate::cli::source_is_file(source);
    let source = if is_file {
        crate::cli::absolute(Path::new(source)).to_string_lossy().into_owned()
    } else {
        source.to_string()
    };
    let (read_end, write_end) = process::message_pipe()?;
    let program =
        php::config_program(&source, is_file, 0, true, bootstrap, argv, std::os::fd::AsRawFd::as_raw_fd(&write_end))?;
    let setup = ChildSetup { close_fds: vec![std::os::fd::AsRawFd::as_raw_fd(&read_end)] };
    let child = process::spawn_child(&setup, |parent| program.run(engine, parent))?;
    drop(write_end);
    let mut channel = ConfigChannel::new(read_end);
    let mut messages = Vec::new();
    loop {
        // SAFETY: the pipe's read end is owned by `channel` for the whole loop.
        let fd = unsafe { BorrowedFd::borrow_raw(channel.raw_fd()) };
        let _ = poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], PollTimeout::from(1000u16));
        match channel.read_available() {
            ReadOutcome::Open(m) => messages.extend(m),
            ReadOutcome::Closed(m) => {
                messages.extend(m);
                break;
            }
        }
    }
    let status = nix::sys::wait::waitpid(child, None).map(|s| format!("{s:?}")).unwrap_or_default();
    let mut all_valid = true;
    let mut got_configuration = false;
    for message in messages {
        match message {
            Ok(ConfigMessage::Configuration { jobs }) => {
                got_configuration = true;
                let (valid, errors) = job::validate_all(&jobs);
                println!("{} job(s), {} valid", jobs.len(), valid.len());
                for job in &valid {
                    println!(
                        "  ok    {}: {} ({}, mtime {}, shortRunTimeSeconds {}, shutdownTimeoutSeconds {})",
                        job.id,
                        job.name,
                        job.worker_class,
                        job.mtime,
                        job.short_run_time_seconds,
                        job.shutdown_timeout_seconds
                    );
                }
                for error in &errors {
                    println!("  error {error}");
                }
                all_valid &= errors.is_empty();
            }
            Ok(ConfigMessage::Error { message }) => {
                eprintln!("lrpm-host: {message}");
                all_valid = false;
            }
            Err(e) => {
                eprintln!("lrpm-host: {e}");
                all_valid = false;
            }
        }
    }
    if !got_configuration {
        eprintln!("lrpm-host: the configuration process ended without sending a configuration ({status})");
        return Ok(false);
    }
    Ok(all_valid)
}
