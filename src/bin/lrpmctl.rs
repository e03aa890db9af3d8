//! lrpmctl: talks to a running lrpm-host (or php-lrpm) over the control
//! socket, with php-lrpm's wire format and exit codes.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::Value;

use lrpm_host::control::codec::{encode, FrameDecoder};
use lrpm_host::control::server::client_socket_path;
use lrpm_host::control::status::{JobStatus, ProcessState, SlotStatus, StatusDocument};
use lrpm_host::farm::StatusName;
use lrpm_host::process::UsageReader;

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_NO_CONNECTION: u8 = 69;
const EXIT_INVALID_RESPONSE: u8 = 76;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Parser)]
#[command(name = "lrpmctl", version, about = "Control a running lrpm-host: status, restart, reload, stop, ...")]
struct Args {
    /// Control socket (default: the first of /run/lrpm-host/control.sock,
    /// $XDG_RUNTIME_DIR/lrpm-host/control.sock, /tmp/lrpm-host-UID/control.sock that exists).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the raw JSON of `status`.
    #[arg(long)]
    json: bool,
    /// Colour the status table.
    #[arg(long, value_enum, default_value = "auto")]
    color: Color,
    /// The command and its arguments (send `help` for the list).
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

fn exchange(path: &PathBuf, request: &str) -> Result<String, (u8, String)> {
    let no_connection =
        |e: std::io::Error| (EXIT_NO_CONNECTION, format!("cannot connect to lrpm-host at {}: {e}", path.display()));
    let mut stream = UnixStream::connect(path).map_err(no_connection)?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(no_connection)?;
    stream.write_all(&encode(request.as_bytes())).map_err(no_connection)?;
    let mut decoder = FrameDecoder::new(256 * 1024 * 1024);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                return String::from_utf8(frame)
                    .map_err(|_| (EXIT_INVALID_RESPONSE, "response is not UTF-8".to_string()))
            }
            Ok(None) => {}
            Err(e) => return Err((EXIT_INVALID_RESPONSE, format!("invalid response: {e}"))),
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err((EXIT_INVALID_RESPONSE, "connection closed before a whole response arrived".to_string()))
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => return Err((EXIT_INVALID_RESPONSE, format!("reading the response failed: {e}"))),
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

fn render_status(doc: &StatusDocument<Value>, color: bool) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let header =
        ["ID", "NAME", "STATE", "PID", "%CPU", "RSS", "UPTIME", "CYCLES", "RESTARTS", "LAST EXIT", "NEXT START"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut states = Vec::new();
    for row in doc.iter().flat_map(|(id, entry)| rows_of(id, entry)) {
        // php-lrpm's documents have no status: derive the basic one.
        let status = match row.status {
            Some(name) => name.as_str().to_string(),
            None if row.pid.is_some() => "running".to_string(),
            None => "exited".to_string(),
        };
        let uptime = match (row.pid, row.started_at) {
            (Some(_), Some(started)) => human_duration(now - started),
            _ => "-".into(),
        };
        let next_start = match (status.as_str(), row.restart_at) {
            ("backoff", Some(at)) => format!("in {}", human_duration(at - now)),
            _ => "-".into(),
        };
        rows.push(vec![
            row.id,
            row.name,
            status.clone(),
            row.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            row.usage.cpu_percent.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
            row.usage.rss_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            uptime,
            row.cycles.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            row.restarts.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            row.last_exit,
            next_start,
        ]);
        states.push(status);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let paint = |text: String, code: &str| if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text };
    let mut out = String::new();
    let line = |cells: Vec<String>, widths: &[usize]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&paint(line(header.iter().map(|h| h.to_string()).collect(), &widths), "1"));
    out.push('\n');
    for (row, status) in rows.into_iter().zip(states) {
        let text = line(row, &widths);
        let code = match status.as_str() {
            "running" => "32",
            "backoff" | "stopping" => "33",
            "exited" | "failed" => "31",
            _ => "2",
        };
        out.push_str(&paint(text, code));
        out.push('\n');
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
    let path = args.socket.clone().unwrap_or_else(client_socket_path);
    let request = args.command.join(" ");
    let response = match exchange(&path, &request) {
        Ok(r) => r,
        Err((code, message)) => {
            eprintln!("lrpmctl: {message}");
            return ExitCode::from(code);
        }
    };
    if response.starts_with("error: ") {
        eprintln!("lrpmctl: {}", response.trim_start_matches("error: "));
        return ExitCode::from(EXIT_REFUSED);
    }
    if args.command[0] == "status" && !args.json {
        let doc = match parse_status(&response) {
            Some(doc) => doc,
            None => {
                eprintln!(
                    "lrpmctl: invalid status response from {}: {}",
                    path.display(),
                    response.chars().take(200).collect::<String>()
                );
                return ExitCode::from(EXIT_INVALID_RESPONSE);
            }
        };
        let color = match args.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => std::io::stdout().is_terminal(),
        };
        print!("{}", render_status(&doc, color));
    } else {
        println!("{response}");
    }
    ExitCode::SUCCESS
}
