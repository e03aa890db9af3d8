//! How a child ended, as plain data.

pub use crate::exit_code::{PhpEnd, ProcessKind};

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

    /// "exit code 3 (exit() from PHP code)", "killed by SIGSEGV": the label
    /// of a code depends on which kind of process used it and on whether
    /// its PHP request had ended (`exit_code::describe`).
    pub fn describe(self, kind: ProcessKind, php: PhpEnd) -> String {
        match self {
            ExitKind::Code(code) => format!("exit code {code} ({})", crate::exit_code::describe(kind, code, php)),
            ExitKind::Signal(sig) => format!("killed by {}", signal_name(sig)),
        }
    }
}

/// A reaped process's end, with what its shared page said of its PHP
/// request (which decides whether a code is labelled as PHP's exit()).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub exit: ExitKind,
    pub php: PhpEnd,
}

impl End {
    pub fn describe(self, kind: ProcessKind) -> String {
        self.exit.describe(kind, self.php)
    }
}

/// Linux's signal names, by number (x86-64 and arm64 agree on 1-31).
const SIGNAL_NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

pub fn signal_name(sig: i32) -> String {
    match usize::try_from(sig).ok().and_then(|i| SIGNAL_NAMES.get(i)).filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(64), "signal 64");
        assert_eq!(signal_name(-1), "signal -1");
    }

    #[test]
    fn a_user_exit_code_is_the_users() {
        assert_eq!(
            ExitKind::Code(3).describe(ProcessKind::Worker, PhpEnd::Ended),
            "exit code 3 (exit() from PHP code)"
        );
        assert_eq!(
            ExitKind::Code(3).describe(ProcessKind::ConfigProcess, PhpEnd::Unknown),
            "exit code 3 (configuration source failed)"
        );
    }
}
