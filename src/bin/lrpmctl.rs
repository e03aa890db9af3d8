//! lrpmctl: talks to a running lrpm-host (or php-lrpm) over the control
//! socket, with php-lrpm's wire format and exit codes.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indexmap::IndexMap;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::value::RawValue;
use serde_json::Value;

use lrpm_host::control::cluster::ClusterDocument;
use lrpm_host::control::codec::{encode, FrameDecoder};
use lrpm_host::control::server::{client_socket_path, socket_from_env};
use lrpm_host::control::status::{JobStatus, ProcessState, SlotStatus, StatusDocument};
use lrpm_host::control::Reply;
use lrpm_host::escape;
use lrpm_host::farm::StatusName;
use lrpm_host::process::UsageReader;

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_NO_CONNECTION: u8 = 69;
const EXIT_INVALID_RESPONSE: u8 = 76;

/// How long a reply may take before lrpmctl gives up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `upgrade` answers once the new binary's trial run ended, which may take
/// up to the host's `--upgrade-trial-timeout` (600 s at most).
const UPGRADE_REPLY_TIMEOUT: Duration = Duration::from_secs(620);

/// The same during --watch, which then shows the error and tries again.
const WATCH_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Parser)]
#[command(
    name = "lrpmctl",
    version,
    about = "Control a running lrpm-host: status, restart, reload, stop, ...",
    disable_help_subcommand = true,
    subcommand_required = true,
    after_help = "Other commands go to the host as they are: restart ID, restart all, recycle ID, reload, \
                  stop, stop ID, start ID, signal ID SIG, version, help (the host's list)."
)]
struct Args {
    /// Control socket (default: $LRPM_SOCKET, else the first of /run/lrpm-host/control.sock,
    /// $XDG_RUNTIME_DIR/lrpm-host/control.sock, /tmp/lrpm-host-UID/control.sock that exists).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print the status document as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Colour the status table.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The jobs as a table (ID, NAME, STATE, PID, %CPU, RSS, ...), or JSON with --json.
    Status(StatusArgs),
    /// The status document as JSON (php-lrpm's name; `status --json`).
    Jsonstatus(StatusArgs),
    /// With --cluster: the members (name, host, age, units, lease) and every
    /// unit's owner, as this member sees them; JSON with --json.
    Cluster,
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Only these jobs (filtered by lrpmctl; an id the farm does not have is an error).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Refresh until Ctrl-C: in place on a terminal, one table per interval otherwise.
    #[arg(short, long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval, requires = "watch")]
    interval: Duration,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{text} is not a number of seconds from 0.1 to 86400")),
    }
}

/// Why an exchange with the host failed; each has its exit code.
#[derive(Debug)]
enum Failure {
    NoConnection(String),
    Invalid(String),
    /// A signal ended a `--watch` while it waited for the reply.
    Interrupted,
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::NoConnection(_) => EXIT_NO_CONNECTION,
            Failure::Invalid(_) => EXIT_INVALID_RESPONSE,
            Failure::Interrupted => 0,
        }
    }

    /// What went wrong, safe to print (an invalid reply is quoted in it).
    fn message(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Failure::NoConnection(m) | Failure::Invalid(m) => escape::controls_keeping_lines(m),
            Failure::Interrupted => "interrupted".into(),
        }
    }
}

/// One request, one reply. With `signals`, a signal on it ends the wait
/// at once (Ctrl-C during `--watch` while the host is slow to answer).
fn exchange(path: &Path, request: &str, signals: Option<&WatchSignals>) -> Result<String, Failure> {
    let no_connection =
        |e: std::io::Error| Failure::NoConnection(format!("cannot connect to lrpm-host at {}: {e}", path.display()));
    let mut stream = UnixStream::connect(path).map_err(no_connection)?;
    let timeout = if request.trim() == "upgrade" { UPGRADE_REPLY_TIMEOUT } else { REPLY_TIMEOUT };
    stream.set_read_timeout(Some(timeout)).map_err(no_connection)?;
    stream.write_all(&encode(request.as_bytes())).map_err(no_connection)?;
    let mut decoder = FrameDecoder::new(256 * 1024 * 1024);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                return String::from_utf8(frame).map_err(|_| Failure::Invalid("response is not UTF-8".to_string()))
            }
            Ok(None) => {}
            Err(e) => return Err(Failure::Invalid(format!("invalid response: {e}"))),
        }
        if let Some(signals) = signals {
            if signals.wait_readable(&stream, WATCH_REPLY_TIMEOUT)? {
                return Err(Failure::Interrupted);
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(Failure::Invalid("connection closed before a whole response arrived".to_string())),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => return Err(Failure::Invalid(format!("reading the response failed: {e}"))),
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

fn human_duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let clock = format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}d {clock}")
    } else {
        clock
    }
}

fn last_exit(state: &ProcessState) -> String {
    match (&state.last_exit, state.last_exit_status) {
        (Some(exit), _) => exit.to_string(),
        (None, Some(status)) => status.to_string(),
        (None, None) => "-".into(),
    }
}

/// A process's CPU and memory, as the host measured them or, for a
/// document without them (php-lrpm's), as lrpmctl reads them itself.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_percent: Option<f64>,
    cpu_seconds: Option<f64>,
    rss_bytes: Option<u64>,
    /// How old the reading was when the document was received.
    age: Duration,
}

impl Usage {
    /// From the document when it has the keys (null: the host has no
    /// figure). Only for a document without them (php-lrpm's, an older
    /// lrpm-host's) does lrpmctl read /proc itself: a pid in the document
    /// names a process in the host's PID namespace, which may not be ours.
    fn of(slot: Option<&SlotStatus>, pid: Option<i64>) -> Usage {
        match slot {
            Some(s) if s.cpu_percent.is_some() || s.rss_bytes.is_some() => Usage {
                cpu_percent: s.cpu_percent.flatten(),
                cpu_seconds: s.cpu_seconds.flatten(),
                rss_bytes: s.rss_bytes.flatten(),
                age: Duration::from_millis(s.usage_age_ms.unwrap_or(0)),
            },
            _ => Usage::read_locally(pid),
        }
    }

    fn read_locally(pid: Option<i64>) -> Usage {
        let reading = pid.and_then(|p| i32::try_from(p).ok()).and_then(|p| UsageReader::new().read(p));
        match reading {
            Some(u) => Usage {
                cpu_percent: Some(u.cpu_percent()),
                cpu_seconds: Some(u.cpu_time.as_secs_f64()),
                rss_bytes: Some(u.rss_bytes),
                age: Duration::ZERO,
            },
            None => Usage::default(),
        }
    }
}

/// One row of the table: a job, or one slot of a job with replicas.
struct Row {
    id: String,
    name: String,
    pid: Option<i64>,
    status: Option<StatusName>,
    started_at: Option<i64>,
    restart_at: Option<i64>,
    restarts: Option<u64>,
    last_exit: String,
    cycles: Option<u64>,
    usage: Usage,
    /// `--cluster`: the member that runs the unit.
    owner: Option<String>,
}

fn rows_of(id: &str, entry: &JobStatus<Value>) -> Vec<Row> {
    let state = &entry.state;
    let name = entry.config.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let single = state.slots.len() <= 1 && state.replicas.unwrap_or(1) <= 1;
    if single {
        let slot = state.slots.first();
        return vec![Row {
            id: id.to_string(),
            name,
            pid: state.pid,
            status: state.status,
            started_at: state.started_at,
            restart_at: state.restart_at,
            restarts: state.restarts,
            last_exit: last_exit(state),
            cycles: slot.and_then(|s| s.cycles),
            usage: Usage::of(slot, state.pid),
            owner: slot.and_then(|s| s.owner.clone()),
        }];
    }
    state
        .slots
        .iter()
        .map(|slot| Row {
            id: format!("{id}#{}", slot.slot),
            name: name.clone(),
            pid: slot.pid,
            status: slot.status,
            started_at: slot.started_at,
            restart_at: slot.restart_at,
            restarts: slot.restarts,
            last_exit: slot.last_exit.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
            cycles: slot.cycles,
            usage: Usage::of(Some(slot), slot.pid),
            owner: slot.owner.clone(),
        })
        .collect()
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Where the table must fit (a terminal), if anywhere.
#[derive(Debug, Clone, Copy)]
struct Fit {
    columns: usize,
    lines: usize,
}

/// The table's lines, each with the colour of its row (None: the header).
fn table_lines(rows: Vec<Row>) -> Vec<(String, &'static str)> {
    let now = unix_seconds();
    let header =
        ["ID", "NAME", "STATE", "PID", "%CPU", "RSS", "UPTIME", "CYCLES", "RESTARTS", "LAST EXIT", "NEXT START"];
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut colours = Vec::new();
    let dash = || "-".to_string();
    for row in rows {
        // php-lrpm's documents have no status: derive the basic one.
        let status = match row.status {
            Some(name) => name.as_str().to_string(),
            None if row.pid.is_some() => "running".to_string(),
            None => "exited".to_string(),
        };
        let uptime = match (row.pid, row.started_at) {
            (Some(_), Some(started)) => human_duration(now - started),
            _ => dash(),
        };
        let next_start = match (status.as_str(), row.restart_at) {
            ("backoff", Some(at)) => format!("in {}", human_duration(at - now)),
            _ => dash(),
        };
        colours.push(match status.as_str() {
            "running" => "32",
            "backoff" | "stopping" => "33",
            "exited" | "failed" => "31",
            _ => "2",
        });
        // A unit another member runs: which one.
        let status = match (&row.owner, status.as_str()) {
            (Some(owner), "elsewhere") => format!("on {owner}"),
            _ => status,
        };
        // Ids, names and exits come from the configuration: never raw to the terminal.
        let row_cells = vec![
            row.id,
            row.name,
            status,
            row.pid.map_or_else(dash, |p| p.to_string()),
            row.usage.cpu_percent.map_or_else(dash, |c| format!("{c:.1}")),
            row.usage.rss_bytes.map_or_else(dash, human_bytes),
            uptime,
            row.cycles.map_or_else(dash, |c| c.to_string()),
            row.restarts.map_or_else(dash, |r| r.to_string()),
            row.last_exit,
            next_start,
        ];
        cells.push(row_cells.iter().map(|cell| escape::controls(cell).into_owned()).collect());
    }
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(cells);
    aligned(&rows).into_iter().zip(std::iter::once("1").chain(colours)).collect()
}

/// Each row as one line: cells padded to their column's width, two spaces
/// apart, without trailing blanks.
fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The table as text: painted when `color`, cut to `fit` when given.
fn render_table(rows: Vec<Row>, color: bool, fit: Option<Fit>) -> String {
    let mut lines = table_lines(rows);
    if let Some(fit) = fit {
        if lines.len() > fit.lines.max(2) {
            let hidden = lines.len() - (fit.lines.max(2) - 1);
            lines.truncate(fit.lines.max(2) - 1);
            lines.push((format!("... {hidden} more rows"), "2"));
        }
        for (text, _) in &mut lines {
            if text.chars().count() > fit.columns {
                *text = text.chars().take(fit.columns).collect();
            }
        }
    }
    let mut out = String::new();
    for (text, code) in lines {
        if color {
            out.push_str(&format!("\x1b[{code}m{text}\x1b[0m\n"));
        } else {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

/// The status document; php-lrpm encodes an empty or 0..n-keyed farm as a JSON list.
fn parse_status(response: &str) -> Option<StatusDocument<Value>> {
    if let Ok(doc) = serde_json::from_str::<StatusDocument<Value>>(response) {
        return Some(doc);
    }
    let items: Vec<JobStatus<Value>> = serde_json::from_str(response).ok()?;
    Some(items.into_iter().enumerate().map(|(i, item)| (i.to_string(), item)).collect())
}

/// The document's jobs as raw JSON, in its order (php-lrpm's list form keyed 0..n).
fn raw_jobs(response: &str) -> Option<IndexMap<String, Box<RawValue>>> {
    if let Ok(doc) = serde_json::from_str::<IndexMap<String, Box<RawValue>>>(response) {
        return Some(doc);
    }
    let items: Vec<Box<RawValue>> = serde_json::from_str(response).ok()?;
    Some(items.into_iter().enumerate().map(|(i, item)| (i.to_string(), item)).collect())
}

/// `ids` that are not among the document's, as a refusal naming them.
fn unknown_ids<'a>(ids: &'a [String], known: impl Fn(&str) -> bool) -> Option<String> {
    let missing: Vec<&'a str> = ids.iter().map(String::as_str).filter(|id| !known(id)).collect();
    match missing.as_slice() {
        [] => None,
        [one] => Some(format!("job {one} does not exist")),
        many => Some(format!("jobs {} do not exist", many.join(", "))),
    }
}

/// What one `status` round gives, for a table or JSON.
enum StatusView {
    Table(Vec<Row>),
    Json(String),
}

/// Asks for the document and keeps the jobs of `ids` (all when empty).
/// Filtering is done here, not by the host, so it works against php-lrpm
/// too. Err: the exit code and the message.
fn fetch_status(
    path: &Path,
    ids: &[String],
    json: bool,
    signals: Option<&WatchSignals>,
) -> Result<StatusView, (Failure, Option<u8>)> {
    let response = match Reply::from_wire(&exchange(path, "status", signals).map_err(|f| (f, None))?) {
        Reply::Refused(why) => return Err((Failure::Invalid(why), Some(EXIT_REFUSED))),
        Reply::Done(response) => response,
    };
    let invalid = || {
        let start: String = response.chars().take(200).collect();
        (Failure::Invalid(format!("invalid status response from {}: {start}", path.display())), None)
    };
    if json {
        if ids.is_empty() {
            return Ok(StatusView::Json(response.trim_end().to_string()));
        }
        let jobs = raw_jobs(&response).ok_or_else(invalid)?;
        if let Some(refusal) = unknown_ids(ids, |id| jobs.contains_key(id)) {
            return Err((Failure::Invalid(refusal), Some(EXIT_REFUSED)));
        }
        let kept: IndexMap<&str, &RawValue> =
            jobs.iter().filter(|(id, _)| ids.contains(id)).map(|(id, job)| (id.as_str(), job.as_ref())).collect();
        return Ok(StatusView::Json(serde_json::to_string(&kept).unwrap_or_default()));
    }
    let doc = parse_status(&response).ok_or_else(invalid)?;
    if let Some(refusal) = unknown_ids(ids, |id| doc.contains_key(id)) {
        return Err((Failure::Invalid(refusal), Some(EXIT_REFUSED)));
    }
    let rows = doc.iter().filter(|(id, _)| ids.is_empty() || ids.contains(id)).flat_map(|(id, e)| rows_of(id, e));
    Ok(StatusView::Table(rows.collect()))
}

fn use_color(color: Color) -> bool {
    match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal(),
    }
}

fn status_once(path: &Path, args: &StatusArgs, json: bool, color: Color) -> ExitCode {
    match fetch_status(path, &args.ids, json, None) {
        Ok(StatusView::Json(text)) => println!("{text}"),
        Ok(StatusView::Table(rows)) => print!("{}", render_table(rows, use_color(color), None)),
        Err((failure, code)) => {
            eprintln!("lrpmctl: {}", failure.message());
            return ExitCode::from(code.unwrap_or(failure.exit_code()));
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------
// --watch
// ---------------------------------------------------------------------------

/// The signals that end a watch (and SIGWINCH, which redraws, and
/// SIGTSTP, Ctrl-Z), blocked and read from a signalfd: the wait between
/// refreshes is a poll() that returns on them, and the terminal is
/// restored by ordinary code, not by a signal handler.
struct WatchSignals {
    fd: SignalFd,
    /// A SIGWINCH or SIGTSTP read while waiting for a reply, for the next wait.
    resized: std::cell::Cell<bool>,
    suspended: std::cell::Cell<bool>,
}

/// What ended a wait.
enum Wake {
    Timeout,
    Stop,
    Resize,
    Suspend,
}

impl WatchSignals {
    fn new() -> std::io::Result<WatchSignals> {
        let mut mask = SigSet::empty();
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH, Signal::SIGTSTP] {
            mask.add(sig);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(WatchSignals { fd, resized: std::cell::Cell::new(false), suspended: std::cell::Cell::new(false) })
    }

    /// True when a stop signal arrived; notes a resize or a suspension.
    fn stop_arrived(&self) -> bool {
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
    fn wait(&self, deadline: Instant) -> Wake {
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
    fn wait_readable(&self, stream: &UnixStream, timeout: Duration) -> Result<bool, Failure> {
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

fn poll_timeout(d: Duration) -> PollTimeout {
    PollTimeout::try_from(d.as_millis().saturating_add(1).min(60_000) as i32).unwrap_or(PollTimeout::MAX)
}

/// The terminal while a watch draws on it: the alternate screen (what was
/// on the terminal comes back at the end, as with top) and no cursor.
/// Dropping it restores both, on every way out of the watch.
struct Screen;

impl Screen {
    fn enter() -> Screen {
        Screen::draw_on();
        Screen
    }

    fn draw_on() {
        print!("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
        let _ = std::io::stdout().flush();
    }

    fn give_back() {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }

    /// Ctrl-Z: the shell gets its terminal back as it was until `fg`.
    fn suspend(&self) {
        Screen::give_back();
        stop_self();
        Screen::draw_on();
    }
}

/// What SIGTSTP's default action would have done: SIGTSTP is blocked and
/// read from the signalfd.
fn stop_self() {
    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
}

impl Drop for Screen {
    fn drop(&mut self) {
        Screen::give_back();
    }
}

fn terminal_fit() -> Option<Fit> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some(Fit { columns: size.ws_col as usize, lines: size.ws_row as usize })
}

/// "2026-01-31 23:59:59 UTC" (the supervisor logs in UTC too).
fn utc_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Turns each process's CPU time into the CPU it used since its previous
/// reading, as top shows it; a process read once shows its lifetime
/// figure (as ps).
#[derive(Default)]
struct RecentCpu {
    /// (row id, pid) -> CPU seconds, when they were read, and the last
    /// recent figure.
    last: HashMap<(String, i64), (f64, Instant, Option<f64>)>,
}

/// Readings closer than this are the same reading (or too close to divide by).
const MIN_CPU_INTERVAL: Duration = Duration::from_millis(200);

impl RecentCpu {
    fn apply(&mut self, rows: &mut [Row], received: Instant) {
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

fn watch(path: &Path, args: &StatusArgs, json: bool, color: Color) -> ExitCode {
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

/// One request whose reply is printed: the reply, or the exit code once
/// the failure or the host's refusal is on stderr.
fn ask(path: &Path, request: &str) -> Result<String, ExitCode> {
    let response = exchange(path, request, None).map_err(|failure| {
        eprintln!("lrpmctl: {}", failure.message());
        ExitCode::from(failure.exit_code())
    })?;
    match Reply::from_wire(&response) {
        Reply::Refused(why) => {
            eprintln!("lrpmctl: {}", escape::controls_keeping_lines(&why));
            Err(ExitCode::from(EXIT_REFUSED))
        }
        Reply::Done(response) => Ok(response),
    }
}

/// `lrpmctl cluster`: the members, then every unit with its owner.
fn cluster(path: &Path, json: bool) -> ExitCode {
    let response = match ask(path, "cluster") {
        Ok(response) => response,
        Err(code) => return code,
    };
    let Ok(doc) = serde_json::from_str::<ClusterDocument>(&response) else {
        let start: String = response.chars().take(200).collect();
        eprintln!("lrpmctl: invalid cluster response from {}: {}", path.display(), escape::controls(&start));
        return ExitCode::from(EXIT_INVALID_RESPONSE);
    };
    if json {
        println!("{}", response.trim_end());
    } else {
        print!("{}", cluster_text(&doc, unix_seconds()));
    }
    ExitCode::SUCCESS
}

/// The rows aligned, one line each.
fn columns(rows: &[Vec<String>]) -> String {
    aligned(rows).into_iter().map(|line| line + "\n").collect()
}

fn cluster_text(doc: &ClusterDocument, now: i64) -> String {
    let clean = |s: &str| escape::controls(s).into_owned();
    let lease = if doc.lease.held {
        match doc.lease.seconds_since_renewal {
            Some(s) => format!("held, renewed {s:.1}s ago"),
            None => "held".into(),
        }
    } else {
        format!("none ({})", doc.lease.reason.as_deref().unwrap_or("no renewal in time"))
    };
    let mut out = format!("member {} of {}: lease {}", clean(&doc.member), clean(&doc.cluster), clean(&lease));
    if let Some(why) = &doc.draining {
        out.push_str(&format!(", draining ({})", clean(why)));
    }
    out.push_str(&format!(
        "\nclaims: {} won, {} taken by others, {} failed; units in {}, out {}\n\n",
        doc.claims.won, doc.claims.taken, doc.claims.failed, doc.grants, doc.revocations
    ));
    let mut members =
        vec![["MEMBER", "HOST", "PID", "AGE", "UNITS", "WEIGHT", "VERSION", "STATE"].map(String::from).to_vec()];
    for row in &doc.members {
        let m = &row.key;
        let name = if row.me { format!("{} (this)", m.name) } else { m.name.clone() };
        members.push(vec![
            clean(&name),
            clean(&m.host),
            m.pid.to_string(),
            human_duration(now - m.started_at as i64),
            row.units.to_string(),
            m.weight.to_string(),
            clean(&m.version),
            if m.draining { "draining".into() } else { "active".into() },
        ]);
    }
    out.push_str(&columns(&members));
    out.push('\n');
    let mut units = vec![["UNIT", "OWNER", "TOKEN", "HERE", "PLACED"].map(String::from).to_vec()];
    for u in &doc.units {
        // Where it is going, when that is not where it is.
        let placed = match (&u.placed, &u.member) {
            (Some(placed), Some(owner)) if placed == owner => "-".into(),
            (Some(placed), _) => format!("-> {}", clean(placed)),
            (None, _) => "-".into(),
        };
        units.push(vec![
            clean(&u.unit),
            u.member.as_deref().map_or_else(|| "-".into(), clean),
            u.token.map_or_else(|| "-".into(), |t| t.to_string()),
            u.status.map_or_else(|| "-".into(), |s| s.as_str().to_string()),
            placed,
        ]);
    }
    out.push_str(&columns(&units));
    out
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`lrpmctl status
    // | head -1`) would panic. Like any Unix tool, die of SIGPIPE instead:
    // lrpmctl is a short-lived client that never forks.
    lrpm_host::process::die_on_broken_pipe();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let path = args.socket.clone().or_else(socket_from_env).unwrap_or_else(client_socket_path);
    let words = match &args.command {
        Command::Status(status) | Command::Jsonstatus(status) => {
            let json = args.json || matches!(args.command, Command::Jsonstatus(_));
            return if status.watch {
                watch(&path, status, json, args.color)
            } else {
                status_once(&path, status, json, args.color)
            };
        }
        Command::Cluster => return cluster(&path, args.json),
        Command::Other(words) => words,
    };
    let response = match ask(&path, &words.join(" ")) {
        Ok(response) => response,
        Err(code) => return code,
    };
    println!("{}", escape::controls_keeping_lines(&response));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_formats_dates_around_leap_days_and_epochs() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc_time(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn the_cluster_view_lists_members_then_units_with_their_owners() {
        use lrpm_host::cluster::messages::MemberView;
        use lrpm_host::control::cluster::{LeaseState, MemberRow, UnitRow};
        let doc = ClusterDocument {
            cluster: "etcd://127.0.0.1:2379/f".into(),
            member: "a".into(),
            lease: LeaseState { held: false, reason: Some("etcd \u{1b}[31mdown".into()), ..Default::default() },
            members: vec![MemberRow {
                key: MemberView { name: "a".into(), host: "h".into(), ..Default::default() },
                me: true,
                units: 1,
            }],
            units: vec![
                UnitRow {
                    unit: "1#0".into(),
                    member: Some("a".into()),
                    token: Some(7),
                    status: Some(StatusName::Running),
                    placed: Some("a".into()),
                },
                UnitRow {
                    unit: "1#1".into(),
                    member: None,
                    token: None,
                    status: Some(StatusName::Elsewhere),
                    placed: Some("b".into()),
                },
            ],
            ..Default::default()
        };
        let text = cluster_text(&doc, 100);
        assert!(text.starts_with("member a of etcd://127.0.0.1:2379/f: lease none (etcd \\x1b[31mdown)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("a (this)  h ") && l.ends_with("active")), "{text}");
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1#0", "a", "7", "running", "-"]),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1#1", "-", "-", "elsewhere", "->", "b"]),
            "{text}"
        );
    }

    #[test]
    fn unknown_ids_are_named() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let known = |id: &str| id == "1";
        assert_eq!(unknown_ids(&ids(&["1"]), known), None);
        assert_eq!(unknown_ids(&ids(&["1", "9"]), known).as_deref(), Some("job 9 does not exist"));
        assert_eq!(unknown_ids(&ids(&["8", "9"]), known).as_deref(), Some("jobs 8, 9 do not exist"));
    }

    #[test]
    fn a_table_cut_to_a_terminal_says_how_many_rows_it_hides() {
        let row = |id: &str| Row {
            id: id.to_string(),
            name: "a long job name".to_string(),
            pid: Some(7),
            status: None,
            started_at: None,
            restart_at: None,
            restarts: None,
            last_exit: "-".into(),
            cycles: None,
            usage: Usage::default(),
            owner: None,
        };
        let rows = (0..10).map(|i| row(&i.to_string())).collect();
        let text = render_table(rows, false, Some(Fit { columns: 20, lines: 4 }));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{text}");
        assert_eq!(lines[3], "... 8 more rows");
    }
}
