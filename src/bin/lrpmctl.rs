//! lrpmctl: talks to a running lrpm-host (or php-lrpm) over the control
//! socket, with php-lrpm's wire format and exit codes.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::Value;

use lrpm_host::control::codec::{encode, FrameDecoder};
use lrpm_host::control::server::{client_socket_path, socket_from_env};
use lrpm_host::control::status::{JobStatus, ProcessState, SlotStatus, StatusDocument};
use lrpm_host::farm::StatusName;
use lrpm_host::process::UsageReader;

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_NO_CONNECTION: u8 = 69;
const EXIT_INVALID_RESPONSE: u8 = 76;

/// How long a reply may take before lrpmctl gives up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Only these jobs (filtered by lrpmctl; an id the farm does not have is an error).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
}

/// Why an exchange with the host failed; each has its exit code.
#[derive(Debug)]
enum Failure {
    NoConnection(String),
    Invalid(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::NoConnection(_) => EXIT_NO_CONNECTION,
            Failure::Invalid(_) => EXIT_INVALID_RESPONSE,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::NoConnection(m) | Failure::Invalid(m) => m,
        }
    }
}

/// One request, one reply.
fn exchange(path: &Path, request: &str) -> Result<String, Failure> {
    let no_connection =
        |e: std::io::Error| Failure::NoConnection(format!("cannot connect to lrpm-host at {}: {e}", path.display()));
    let mut stream = UnixStream::connect(path).map_err(no_connection)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(no_connection)?;
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
    rss_bytes: Option<u64>,
}

impl Usage {
    /// From the document when it has the keys (null: the host has no
    /// figure). Only for a document without them (php-lrpm's, an older
    /// lrpm-host's) does lrpmctl read /proc itself: a pid in the document
    /// names a process in the host's PID namespace, which may not be ours.
    fn of(slot: Option<&SlotStatus>, pid: Option<i64>) -> Usage {
        match slot {
            Some(s) if s.cpu_percent.is_some() || s.rss_bytes.is_some() => {
                Usage { cpu_percent: s.cpu_percent.flatten(), rss_bytes: s.rss_bytes.flatten() }
            }
            _ => Usage::read_locally(pid),
        }
    }

    fn read_locally(pid: Option<i64>) -> Usage {
        let reading = pid.and_then(|p| i32::try_from(p).ok()).and_then(|p| UsageReader::new().read(p));
        match reading {
            Some(u) => Usage { cpu_percent: Some(u.cpu_percent()), rss_bytes: Some(u.rss_bytes) },
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
        })
        .collect()
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
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
        cells.push(vec![
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
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once((line(&header), "1")).chain(cells.iter().map(|c| line(c)).zip(colours)).collect()
}

/// The table as text, painted when `color`.
fn render_table(rows: Vec<Row>, color: bool) -> String {
    let lines = table_lines(rows);
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
fn fetch_status(path: &Path, ids: &[String], json: bool) -> Result<StatusView, (Failure, Option<u8>)> {
    let response = exchange(path, "status").map_err(|f| (f, None))?;
    if let Some(refusal) = response.strip_prefix("error: ") {
        return Err((Failure::Invalid(refusal.to_string()), Some(EXIT_REFUSED)));
    }
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
    match fetch_status(path, &args.ids, json) {
        Ok(StatusView::Json(text)) => println!("{text}"),
        Ok(StatusView::Table(rows)) => print!("{}", render_table(rows, use_color(color))),
        Err((failure, code)) => {
            eprintln!("lrpmctl: {}", failure.message());
            return ExitCode::from(code.unwrap_or(failure.exit_code()));
        }
    }
    ExitCode::SUCCESS
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
            return status_once(&path, status, json, args.color);
        }
        Command::Other(words) => words,
    };
    let response = match exchange(&path, &words.join(" ")) {
        Ok(r) => r,
        Err(failure) => {
            eprintln!("lrpmctl: {}", failure.message());
            return ExitCode::from(failure.exit_code());
        }
    };
    if let Some(refusal) = response.strip_prefix("error: ") {
        eprintln!("lrpmctl: {refusal}");
        return ExitCode::from(EXIT_REFUSED);
    }
    println!("{response}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_are_named() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let known = |id: &str| id == "1";
        assert_eq!(unknown_ids(&ids(&["1"]), known), None);
        assert_eq!(unknown_ids(&ids(&["1", "9"]), known).as_deref(), Some("job 9 does not exist"));
        assert_eq!(unknown_ids(&ids(&["8", "9"]), known).as_deref(), Some("jobs 8, 9 do not exist"));
    }
}
