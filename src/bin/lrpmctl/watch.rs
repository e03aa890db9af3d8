//! `lrpmctl status --watch`: the table redrawn on an interval, with CPU
//! measured between two readings, until a signal or a closed terminal.

use super::*;

/// The signals that end a watch (and SIGWINCH, which redraws, and
/// SIGTSTP, Ctrl-Z), blocked and read from a signalfd: the wait between
/// refreshes is a poll() that returns on them, and the terminal is
/// restored by ordinary code, not by a signal handler.
pub(super) struct WatchSignals {
    pub(super) fd: SignalFd,
    /// A SIGWINCH or SIGTSTP read while waiting for a reply, for the next wait.
    pub(super) resized: std::cell::Cell<bool>,
    pub(super) suspended: std::cell::Cell<bool>,
}

/// What ended a wait.
pub(super) enum Wake {
    Timeout,
    Stop,
    Resize,
    Suspend,
}

impl WatchSignals {
    pub(super) fn new() -> std::io::Result<WatchSignals> {
        let mut mask = SigSet::empty();
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH, Signal::SIGTSTP] {
            mask.add(sig);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(WatchSignals { fd, resized: std::cell::Cell::new(false), suspended: std::cell::Cell::new(false) })
    }

    /// True when a stop signal arrived; notes a resize or a suspension.
    pub(super) fn stop_arrived(&self) -> bool {
        while let Ok(Some(info)) = self.fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGWINCH) => self.resized.set(true),
                Ok(Signal::SIGTSTP) => self.suspended.set(true),
                Ok(_) => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// Waits until `deadline` for a signal.
    pub(super) fn wait(&self, deadline: Instant) -> Wake {
        loop {
            if self.stop_arrived() {
                return Wake::Stop;
            }
            if self.suspended.replace(false) {
                return Wake::Suspend;
            }
            if self.resized.replace(false) {
                return Wake::Resize;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Timeout;
            }
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, poll_timeout(left));
        }
    }

    /// Waits until `stream` is readable; true when a stop signal came first.
    pub(super) fn wait_readable(&self, stream: &UnixStream, timeout: Duration) -> Result<bool, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stop_arrived() {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Invalid(format!("no response within {}s", timeout.as_secs())));
            }
            let mut fds =
                [PollFd::new(stream.as_fd(), PollFlags::POLLIN), PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, poll_timeout(left)) {
                Ok(_) if fds[0].any().unwrap_or(false) => return Ok(false),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Failure::Invalid(format!("waiting for the response failed: {e}"))),
            }
        }
    }
}

pub(super) fn poll_timeout(d: Duration) -> PollTimeout {
    PollTimeout::try_from(d.as_millis().saturating_add(1).min(60_000) as i32).unwrap_or(PollTimeout::MAX)
}

/// The terminal while a watch draws on it: the alternate screen (what was
/// on the terminal comes back at the end, as with top) and no cursor.
/// Dropping it restores both, on every way out of the watch.
pub(super) struct Screen;

impl Screen {
    pub(super) fn enter() -> Screen {
        Screen::draw_on();
        Screen
    }

    pub(super) fn draw_on() {
        print!("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
        let _ = std::io::stdout().flush();
    }

    pub(super) fn give_back() {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }

    /// Ctrl-Z: the shell gets its terminal back as it was until `fg`.
    pub(super) fn suspend(&self) {
        Screen::give_back();
        stop_self();
        Screen::draw_on();
    }
}

/// What SIGTSTP's default action would have done: SIGTSTP is blocked and
/// read from the signalfd.
pub(super) fn stop_self() {
    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
}

impl Drop for Screen {
    fn drop(&mut self) {
        Screen::give_back();
    }
}

pub(super) fn terminal_fit() -> Option<Fit> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some(Fit { columns: size.ws_col as usize, lines: size.ws_row as usize })
}

/// Turns each process's CPU time into the CPU it used since its previous
/// reading, as top shows it; a process read once shows its lifetime
/// figure (as ps).
#[derive(Default)]
pub(super) struct RecentCpu {
    /// (row id, pid) -> CPU seconds, when they were read, and the last
    /// recent figure.
    pub(super) last: HashMap<(String, i64), (f64, Instant, Option<f64>)>,
}

/// Readings closer than this are the same reading (or too close to divide by).
pub(super) const MIN_CPU_INTERVAL: Duration = Duration::from_millis(200);

impl RecentCpu {
    pub(super) fn apply(&mut self, rows: &mut [Row], received: Instant) {
        let mut next = HashMap::new();
        for row in rows.iter_mut() {
            let (Some(pid), Some(cpu)) = (row.pid, row.usage.cpu_seconds) else { continue };
            let read_at = received.checked_sub(row.usage.age).unwrap_or(received);
            let key = (row.id.clone(), pid);
            let entry = match self.last.get(&key) {
                Some(&(last_cpu, last_at, recent)) if read_at.saturating_duration_since(last_at) < MIN_CPU_INTERVAL => {
                    (last_cpu, last_at, recent)
                }
                Some(&(last_cpu, last_at, _)) => {
                    let seconds = read_at.duration_since(last_at).as_secs_f64();
                    (cpu, read_at, Some(((cpu - last_cpu) / seconds * 100.0).max(0.0)))
                }
                None => (cpu, read_at, None),
            };
            if let Some(recent) = entry.2 {
                row.usage.cpu_percent = Some(recent);
            }
            next.insert(key, entry);
        }
        self.last = next;
    }
}

pub(super) fn watch(path: &Path, args: &StatusArgs, json: bool, color: Color) -> ExitCode {
    let signals = match WatchSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lrpmctl: cannot set up --watch: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tty = std::io::stdout().is_terminal() && !json;
    let color = use_color(color);
    let screen = tty.then(Screen::enter);
    let every = format!("every {}s", args.interval.as_secs_f64());
    let mut recent = RecentCpu::default();
    let mut first_document = true;
    let mut tables = 0u64;
    loop {
        let header = format!("lrpmctl status: {}  {}  {every}", path.display(), utc_time(unix_seconds()));
        let fetched = fetch_status(path, &args.ids, json, Some(&signals));
        let received = Instant::now();
        let body = match fetched {
            Err((Failure::Interrupted, _)) => return ExitCode::SUCCESS,
            // A typo in an id ends the watch; a job that goes away later
            // (a new configuration) does not.
            Err((failure, Some(code))) if first_document => {
                drop(screen);
                eprintln!("lrpmctl: {}", failure.message());
                return ExitCode::from(code);
            }
            Err((failure, _)) => Err(format!("lrpmctl: {} (retrying {every})", failure.message())),
            Ok(view) => {
                first_document = false;
                Ok(view)
            }
        };
        let mut out = std::io::stdout().lock();
        let written = match (body, tty) {
            (Ok(StatusView::Json(text)), _) => writeln!(out, "{text}"),
            (Ok(StatusView::Table(mut rows)), true) => {
                recent.apply(&mut rows, received);
                // Below the watch's header and a blank line, leaving the
                // terminal's last line free: a newline there would scroll.
                let fit = terminal_fit().map(|f| Fit { lines: f.lines.saturating_sub(3), ..f });
                let table = render_table(rows, color, fit);
                let cut: String = header.chars().take(fit.map_or(usize::MAX, |f| f.columns)).collect();
                write!(out, "\x1b[H{cut}\x1b[K\n\x1b[K\n{}\x1b[J", table.replace('\n', "\x1b[K\n"))
            }
            (Ok(StatusView::Table(mut rows)), false) => {
                recent.apply(&mut rows, received);
                let gap = if tables > 0 { "\n" } else { "" };
                tables += 1;
                write!(out, "{gap}{header}\n{}", render_table(rows, color, None))
            }
            (Err(message), true) => write!(out, "\x1b[H{header}\x1b[K\n\x1b[K\n{message}\x1b[K\n\x1b[J"),
            (Err(message), false) => {
                eprintln!("{message}");
                Ok(())
            }
        };
        if written.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        let next = Instant::now() + args.interval;
        loop {
            match signals.wait(next) {
                Wake::Stop => return ExitCode::SUCCESS,
                Wake::Timeout => break,
                Wake::Suspend => {
                    match &screen {
                        Some(screen) => screen.suspend(),
                        None => stop_self(),
                    }
                    break;
                }
                Wake::Resize if tty => break,
                Wake::Resize => {}
            }
        }
    }
}
