//! How a child ended, as plain data.

/// How a child ended, as plain data for the pure core and for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ExitKind {
    /// `_exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitKind {
    /// The php-lrpm style `lastExitStatus`: the exit code, or 128 + signal.
    pub fn as_status(self) -> i32 {
        match self {
            ExitKind::Code(code) => code,
            ExitKind::Signal(sig) => 128 + sig,
        }
    }

    pub fn describe(self) -> String {
        match self {
            ExitKind::Code(code) => format!("exit code {code} ({})", crate::php::outcome::describe_exit_code(code)),
            ExitKind::Signal(sig) => format!("killed by {}", signal_name(sig)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"))
}
