//! Control socket: php-lrpm's wire format (`codec`), the request language
//! (`Request`), the status document (`status`) and the server (`server`).

#![forbid(unsafe_code)]

pub mod cluster;
pub mod codec;
pub mod server;
pub mod status;

use crate::farm::{JobCommand, Refusal};
use crate::job::JobId;

pub const HELP: &str = "valid messages:
  help                 description of valid messages
  status, jsonstatus   information about worker processes (JSON keyed by job id)
  restart <job_id>     restart job <job_id> now, resetting its backoff
  restart all          restart every job
  recycle <job_id>     replace the job's processes one at a time (rolling), each new one
                       past its first cycle before the next old one stops
  recycle all          recycle every job (each job rolls on its own)
  reload               poll the configuration source now
  reopen-logs          open the --log-file path again (after logrotate renamed the file)
  stop                 shut down lrpm-host and all worker processes
  stop <job_id>        stop job <job_id> and keep it stopped across configuration polls
  start <job_id>       start a job held by `stop <job_id>`
  signal <job_id> <SIG>  send a signal (TERM, HUP, USR1, ...) to the job's processes
  backtrace <job_id>[#<slot>]  the PHP stack of the job's processes (or one slot's), without
                       stopping them
  metrics              the Prometheus text of /metrics (see --metrics-listen)
  cluster              --cluster: this member's view of the members and units (JSON)
  drain                --cluster: hand every unit of this member to the others (every-host
                       jobs keep running; undone by `undrain` or a restart)
  undrain              --cluster: take a share of the units again after `drain`
  upgrade              replace this host with the binary on disk (new code, new --preload) without
                       stopping the farm: tried first, then every job recycled onto it
  version              lrpm-host and PHP versions";

/// One control request, parsed once from its command line; the supervisor
/// has one handler per variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Help,
    Status,
    Version,
    /// `metrics`: the Prometheus text exposition, as `GET /metrics` serves it.
    Metrics,
    Reload,
    /// `reopen-logs`: open `--log-file`'s path again (logrotate).
    ReopenLogs,
    Shutdown,
    /// `restart all`: every job, as `restart ID` would.
    RestartAll,
    /// `recycle all`: every job, as `recycle ID` would.
    RecycleAll,
    /// `upgrade`: re-execute the binary on disk, keeping the farm.
    Upgrade,
    /// `cluster`: the members and units as this member sees them.
    Cluster,
    /// `drain`: hand this member's units to the others, keep running.
    Drain,
    /// `undrain`: take a share of the units again.
    Undrain,
    /// `restart ID`, `stop ID`, `start ID`: decided by the core.
    Job {
        id: JobId,
        command: JobCommand,
    },
    Signal {
        id: JobId,
        signal: nix::sys::signal::Signal,
    },
    /// `backtrace ID` or `backtrace ID#SLOT`: the PHP stacks of running
    /// processes (the id and slot are told apart against the farm's jobs).
    Backtrace {
        target: String,
    },
}

/// Why a command line is not a request; `Display` is the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0} requires a job id argument")]
    MissingJobId(&'static str),
    #[error("usage: signal <job_id> <SIGNAL>")]
    SignalUsage,
    #[error("unknown signal {0} (use a name such as TERM, HUP, USR1, or a number)")]
    UnknownSignal(String),
    #[error("'{0}' is not a valid message. {HELP}")]
    UnknownVerb(String),
}

impl Request {
    pub fn parse(text: &str) -> Result<Request, ParseError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let job = |id: &str, command| Request::Job { id: JobId::parse(id), command };
        match words.as_slice() {
            ["help"] => Ok(Request::Help),
            ["status"] | ["jsonstatus"] => Ok(Request::Status),
            ["version"] => Ok(Request::Version),
            ["upgrade"] => Ok(Request::Upgrade),
            ["cluster"] => Ok(Request::Cluster),
            ["drain"] => Ok(Request::Drain),
            ["undrain"] => Ok(Request::Undrain),
            ["metrics"] => Ok(Request::Metrics),
            ["reload"] => Ok(Request::Reload),
            ["reopen-logs"] => Ok(Request::ReopenLogs),
            ["stop"] => Ok(Request::Shutdown),
            ["stop", id] => Ok(job(id, JobCommand::Hold)),
            ["restart", "all"] => Ok(Request::RestartAll),
            ["restart", id] => Ok(job(id, JobCommand::Restart)),
            ["restart"] => Err(ParseError::MissingJobId("restart")),
            ["start", id] => Ok(job(id, JobCommand::Start)),
            ["recycle", "all"] => Ok(Request::RecycleAll),
            ["recycle", id] => Ok(job(id, JobCommand::Recycle)),
            ["recycle"] => Err(ParseError::MissingJobId("recycle")),
            ["start"] => Err(ParseError::MissingJobId("start")),
            ["signal", id, name] => match parse_signal(name) {
                Some(signal) => Ok(Request::Signal { id: JobId::parse(id), signal }),
                None => Err(ParseError::UnknownSignal(printable(name))),
            },
            ["signal", ..] => Err(ParseError::SignalUsage),
            ["backtrace", target] => Ok(Request::Backtrace { target: target.to_string() }),
            ["backtrace"] => Err(ParseError::MissingJobId("backtrace")),
            _ => Err(ParseError::UnknownVerb(printable(text))),
        }
    }
}

/// At most 80 characters of client input, without control characters, for a reply.
fn printable(text: &str) -> String {
    text.chars().take(80).filter(|c| !c.is_control()).collect()
}

/// The command's word on the control socket.
pub fn verb(command: JobCommand) -> &'static str {
    match command {
        JobCommand::Restart => "restart",
        JobCommand::Hold => "stop",
        JobCommand::Start => "start",
        JobCommand::Recycle => "recycle",
    }
}

/// What the supervisor answers a request, typed: done (with its text or
/// the document asked for) or refused (why). On the wire it is php-lrpm's
/// text, a refusal's starting with `error: `; `lrpmctl` reads it back with
/// `Reply::from_wire` (and exits 1 on a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done(String),
    Refused(String),
}

impl Reply {
    pub const REFUSAL_PREFIX: &'static str = "error: ";

    pub fn done(text: impl Into<String>) -> Reply {
        Reply::Done(text.into())
    }

    pub fn refused(why: impl Into<String>) -> Reply {
        Reply::Refused(why.into())
    }

    /// The text sent on the control socket.
    pub fn wire(&self) -> String {
        match self {
            Reply::Done(text) => text.clone(),
            Reply::Refused(why) => format!("{}{why}", Reply::REFUSAL_PREFIX),
        }
    }

    pub fn from_wire(text: &str) -> Reply {
        match text.strip_prefix(Reply::REFUSAL_PREFIX) {
            Some(why) => Reply::Refused(why.to_string()),
            None => Reply::Done(text.to_string()),
        }
    }
}

impl From<ParseError> for Reply {
    fn from(error: ParseError) -> Reply {
        Reply::Refused(error.to_string())
    }
}

/// The reply to a job request, php-lrpm's wording.
pub fn job_reply(id: &JobId, command: JobCommand, outcome: Result<(), Refusal>) -> Reply {
    let verb = verb(command);
    match outcome {
        Ok(()) => Reply::Done(match command {
            JobCommand::Restart => format!("Scheduled immediate restart of job {id}"),
            JobCommand::Start => format!("Job {id} will be started and kept running"),
            JobCommand::Hold => format!("Job {id} is being stopped and will stay stopped until `start {id}`"),
            JobCommand::Recycle => format!("Scheduled rolling recycle of job {id}"),
        }),
        Err(refusal) => Reply::Refused(format!("Will not {verb} job {id}, {}", refusal_reason(refusal))),
    }
}

pub fn refusal_reason(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::NoSuchJob => "it does not exist",
        Refusal::Removed => "it was removed",
        Refusal::ShuttingDown => "lrpm-host is shutting down",
        Refusal::NotRunning => "it is not running",
    }
}

/// Parses TERM, SIGTERM, term or 15.
pub fn parse_signal(text: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    nix::sys::signal::Signal::from_str(&name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_php_lrpm_and_extended_commands() {
        let job = |id: JobId, command| Ok(Request::Job { id, command });
        assert_eq!(Request::parse("status"), Ok(Request::Status));
        assert_eq!(Request::parse("jsonstatus"), Ok(Request::Status));
        assert_eq!(Request::parse("metrics"), Ok(Request::Metrics));
        assert_eq!(Request::parse("reopen-logs"), Ok(Request::ReopenLogs));
        assert_eq!(Request::parse("restart 42"), job(JobId::Int(42), JobCommand::Restart));
        assert_eq!(Request::parse("restart all"), Ok(Request::RestartAll));
        assert_eq!(Request::parse("recycle all"), Ok(Request::RecycleAll));
        assert_eq!(Request::parse("recycle 3"), job(JobId::Int(3), JobCommand::Recycle));
        assert_eq!(Request::parse("recycle"), Err(ParseError::MissingJobId("recycle")));
        assert_eq!(Request::parse("stop"), Ok(Request::Shutdown));
        assert_eq!(Request::parse("cluster"), Ok(Request::Cluster));
        assert_eq!(Request::parse(" drain "), Ok(Request::Drain));
        assert_eq!(Request::parse("undrain"), Ok(Request::Undrain));
        assert_eq!(Request::parse("stop abc"), job(JobId::Str("abc".into()), JobCommand::Hold));
        assert_eq!(
            Request::parse("signal 7 HUP"),
            Ok(Request::Signal { id: JobId::Int(7), signal: nix::sys::signal::Signal::SIGHUP })
        );
        assert_eq!(Request::parse("restart"), Err(ParseError::MissingJobId("restart")));
        assert_eq!(Request::parse("signal 7 NOPE"), Err(ParseError::UnknownSignal("NOPE".into())));
    }

    #[test]
    fn unknown_commands_name_the_valid_ones() {
        let err = Request::parse("frobnicate").unwrap_err().to_string();
        assert!(err.contains("not a valid message") && err.contains("jsonstatus"));
        assert!(matches!(Request::parse("\u{0}\u{1}garbage"), Err(ParseError::UnknownVerb(_))));
    }

    #[test]
    fn refusals_name_the_job_and_the_reason() {
        let id = JobId::Int(9);
        assert_eq!(
            job_reply(&id, JobCommand::Restart, Err(Refusal::NoSuchJob)).wire(),
            "error: Will not restart job 9, it does not exist"
        );
        assert_eq!(
            job_reply(&id, JobCommand::Hold, Ok(())),
            Reply::done("Job 9 is being stopped and will stay stopped until `start 9`")
        );
    }

    #[test]
    fn a_reply_reads_back_as_what_was_sent() {
        for reply in [Reply::done("Scheduled"), Reply::refused("Will not"), Reply::done("")] {
            assert_eq!(Reply::from_wire(&reply.wire()), reply);
        }
        assert_eq!(Reply::from(ParseError::SignalUsage).wire(), "error: usage: signal <job_id> <SIGNAL>");
    }

    #[test]
    fn signal_names() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigusr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
