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

mod cluster;
mod status;
mod table;
mod watch;

use cluster::*;
use status::*;
use table::*;
use watch::*;

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
                  stop, stop ID, start ID, signal ID SIG, backtrace ID[#SLOT], version, help (the host's list)."
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
