//! Control socket: php-lrpm's wire format (`codec`), the request language
//! (`Request`), the status document (`status`) and the server (`server`).

pub mod codec;
pub mod server;
pub mod status;

use crate::job::JobId;

pub const HELP: &str = "valid messages:
  help                 description of valid messages
  status, jsonstatus   information about worker processes (JSON keyed by job id)
  restart <job_id>     restart job <job_id> now, resetting its backoff
  reload               poll the configuration source now
  stop                 shut down lrpm-host and all worker processes
  stop <job_id>        stop job <job_id> and keep it stopped across configuration polls
  start <job_id>       start a job held by `stop <job_id>`
  signal <job_id> <SIG>  send a signal (TERM, HUP, USR1, ...) to the job's process
  version              lrpm-host and PHP versions";

/// One control request, parsed from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Help,
    Status,
    Restart(JobId),
    Reload,
    Shutdown,
    Hold(JobId),
    Start(JobId),
    Signal(JobId, String),
    Version,
}

impl Request {
    /// Parses a request; the error is the full response for the client.
    pub fn parse(text: &str) -> Result<Request, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let id = |verb: &str| -> Result<JobId, String> {
            words.get(1).map(|w| JobId::parse(w)).ok_or_else(|| format!("error: {verb} requires a job id argument"))
        };
        match words.as_slice() {
            ["help"] => Ok(Request::Help),
            ["status"] | ["jsonstatus"] => Ok(Request::Status),
            ["restart", _] => Ok(Request::Restart(id("restart")?)),
            ["restart"] => Err("error: restart requires a job id argument".into()),
            ["reload"] => Ok(Request::Reload),
            ["stop"] => Ok(Request::Shutdown),
            ["stop", _] => Ok(Request::Hold(id("stop")?)),
            ["start", _] => Ok(Request::Start(id("start")?)),
            ["start"] => Err("error: start requires a job id argument".into()),
            ["signal", _, sig] => Ok(Request::Signal(id("signal")?, sig.to_string())),
            ["signal", ..] => Err("error: usage: signal <job_id> <SIGNAL>".into()),
            ["version"] => Ok(Request::Version),
            _ => {
                let shown: String = text.chars().take(80).filter(|c| !c.is_control()).collect();
                Err(format!("error: '{shown}' is not a valid message. {HELP}"))
            }
        }
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
        assert_eq!(Request::parse("status"), Ok(Request::Status));
        assert_eq!(Request::parse("jsonstatus"), Ok(Request::Status));
        assert_eq!(Request::parse("restart 42"), Ok(Request::Restart(JobId::Int(42))));
        assert_eq!(Request::parse("stop"), Ok(Request::Shutdown));
        assert_eq!(Request::parse("stop abc"), Ok(Request::Hold(JobId::Str("abc".into()))));
        assert_eq!(Request::parse("signal 7 HUP"), Ok(Request::Signal(JobId::Int(7), "HUP".into())));
        assert!(Request::parse("restart").unwrap_err().contains("requires a job id"));
    }

    #[test]
    fn unknown_commands_name_the_valid_ones() {
        let err = Request::parse("frobnicate").unwrap_err();
        assert!(err.contains("not a valid message") && err.contains("jsonstatus"));
        assert!(Request::parse("\u{0}\u{1}garbage").is_err());
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
