//! The one table of exit codes: what lrpm-host's children exit with, and
//! what lrpm-host itself exits with. The PHP runner and the C shim receive
//! the child codes from here at spawn time (`runner_constants`), so the
//! three layers cannot drift. Pure: no PHP, no libc.

#![forbid(unsafe_code)]

use serde_json::{Map, Value};

/// Which kind of child ended: the same number means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    Worker,
    ConfigProcess,
    /// A program the host executed (the upgrade's trial run of the binary
    /// on disk): its codes are lrpm-host's own (`host`) or an exec's.
    Program,
}

/// Whether the process's PHP request had ended when it exited: its shared
/// page says so (`ended_status`), so this is known for workers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PhpEnd {
    /// The runner returned: the code is what PHP code passed to exit().
    Ended,
    /// The process exited while PHP was still running (a C library's or an
    /// extension's exit(), the process's setup) or never started it.
    NotEnded,
    /// No shared page to tell (the configuration process, `--no-zygote`
    /// without shared pages).
    #[default]
    Unknown,
}

/// A code a child of lrpm-host exits with, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// Constant name shared with the runner (`Lrpm\Internal\EXIT_...`).
    pub name: &'static str,
    pub code: i32,
    /// Which process kind exits with it on the host's behalf.
    pub kind: Option<ProcessKind>,
    pub meaning: &'static str,
}

/// Clean stop (SIGTERM/SIGINT after the current cycle, `--cycles` reached).
pub const OK: i32 = 0;
/// The configuration source could not be loaded, or `loadConfiguration()`
/// threw or returned something other than an array.
pub const CONFIG_SOURCE_FAILED: i32 = 3;
/// The worker class does not exist or does not implement the Worker interface.
pub const BAD_WORKER_CLASS: i32 = 65;
/// `start()` or `cycle()` threw an exception or Error nobody caught.
pub const UNCAUGHT: i32 = 70;
/// The PHP request could not start (see stderr).
pub const REQUEST_FAILED: i32 = 71;
/// The child's own setup failed (a signal mask, PDEATHSIG, a process group).
pub const CHILD_SETUP_FAILED: i32 = 72;
/// A planned recycle: a limit (maxCycles, maxLifetimeSeconds, memoryLimitMb)
/// was reached between cycles, or the worker called `Lrpm\recycle()`; the
/// worker is started again at once.
pub const RECYCLE: i32 = 75;
/// The bootstrap file is missing, has a syntax error, or threw.
pub const BOOTSTRAP_FAILED: i32 = 78;
/// A PHP fatal error (E_ERROR, out of memory, ...): PHP's own status.
pub const PHP_FATAL: i32 = 255;

pub const CHILD_EXITS: [ChildExit; 9] = [
    ChildExit { name: "EXIT_OK", code: OK, kind: None, meaning: "clean stop" },
    ChildExit {
        name: "EXIT_CONFIG_SOURCE_FAILED",
        code: CONFIG_SOURCE_FAILED,
        kind: Some(ProcessKind::ConfigProcess),
        meaning: "configuration source failed",
    },
    ChildExit {
        name: "EXIT_BAD_WORKER_CLASS",
        code: BAD_WORKER_CLASS,
        kind: Some(ProcessKind::Worker),
        meaning: "bad worker class",
    },
    ChildExit { name: "EXIT_UNCAUGHT", code: UNCAUGHT, kind: None, meaning: "uncaught exception" },
    ChildExit { name: "EXIT_REQUEST_FAILED", code: REQUEST_FAILED, kind: None, meaning: "PHP request startup failed" },
    ChildExit {
        name: "EXIT_CHILD_SETUP_FAILED",
        code: CHILD_SETUP_FAILED,
        kind: None,
        meaning: "process setup failed",
    },
    ChildExit { name: "EXIT_RECYCLE", code: RECYCLE, kind: Some(ProcessKind::Worker), meaning: "planned recycle" },
    ChildExit { name: "EXIT_BOOTSTRAP_FAILED", code: BOOTSTRAP_FAILED, kind: None, meaning: "bootstrap failed" },
    ChildExit { name: "EXIT_PHP_FATAL", code: PHP_FATAL, kind: None, meaning: "PHP fatal error" },
];

/// A shell's and execve's convention: the program could not be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// The same: the program was not found (or its exec failed).
pub const NOT_FOUND: i32 = 127;

/// What a child's exit code means, for logs and status, from what is known:
/// host codes are named only for the kind of process that uses them,
/// 126/127 as an exec's failure, and "exit() from PHP code" only when the
/// process's PHP request had ended (or nothing says it had not).
pub fn describe(kind: ProcessKind, code: i32, php: PhpEnd) -> String {
    if kind == ProcessKind::Program {
        return describe_program(code).to_string();
    }
    if let Some(exit) = CHILD_EXITS.iter().find(|e| e.code == code && e.kind.map_or(true, |k| k == kind)) {
        return exit.meaning.to_string();
    }
    match (php, code) {
        (PhpEnd::NotEnded, CANNOT_EXECUTE) => "cannot execute (exec failed)".to_string(),
        (PhpEnd::NotEnded, NOT_FOUND) => "not found (exec failed)".to_string(),
        (PhpEnd::NotEnded, _) => {
            "exited while PHP was running, not through PHP's exit() (a C library or extension)".to_string()
        }
        (PhpEnd::Ended, _) => "exit() from PHP code".to_string(),
        (PhpEnd::Unknown, _) => "exit() from PHP code or a library it called".to_string(),
    }
}

/// What an exit code of a program the host executed means: lrpm-host's
/// own codes, or the exec's failure.
fn describe_program(code: i32) -> &'static str {
    match u8::try_from(code) {
        Ok(host::OK) => "success",
        Ok(host::USAGE) => "lrpm-host: usage error",
        Ok(host::SOFTWARE) => "lrpm-host: internal error (PHP could not start, a system call failed)",
        Ok(host::CONFIG) => "lrpm-host: the configuration source never produced a configuration",
        Ok(host::ESSENTIAL_JOB_FAILED) => "lrpm-host: an essential job failed",
        _ if code == CANNOT_EXECUTE => "cannot execute (not an executable, or no permission)",
        _ if code == NOT_FOUND => "not found, or its exec failed",
        _ => "not an exit code of lrpm-host's",
    }
}

/// `{EXIT_OK: 0, ...}`: the constants the runner defines from this table.
pub fn runner_constants() -> Value {
    Value::Object(CHILD_EXITS.iter().map(|e| (e.name.to_string(), Value::from(e.code))).collect::<Map<_, _>>())
}

/// Codes lrpm-host itself exits with (README "Exit codes").
pub mod host {
    /// Clean shutdown.
    pub const OK: u8 = 0;
    /// A command-line usage error (EX_USAGE).
    pub const USAGE: u8 = 64;
    /// An internal error: PHP could not start, a syscall failed (EX_SOFTWARE).
    pub const SOFTWARE: u8 = 70;
    /// The configuration source never produced a configuration (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// A job marked `essential` failed for good (EX_UNAVAILABLE).
    pub const ESSENTIAL_JOB_FAILED: u8 = 69;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_process_kind_and_what_is_known_of_its_end() {
        use PhpEnd::*;
        use ProcessKind::*;
        let cases = [
            (ConfigProcess, 3, Unknown, "configuration source failed"),
            (Worker, 3, Ended, "exit() from PHP code"),
            (Worker, 3, Unknown, "exit() from PHP code or a library it called"),
            (Worker, 3, NotEnded, "exited while PHP was running, not through PHP's exit() (a C library or extension)"),
            (Worker, 65, Ended, "bad worker class"),
            (ConfigProcess, 65, Unknown, "exit() from PHP code or a library it called"),
            (Worker, 70, Ended, "uncaught exception"),
            (Worker, 72, NotEnded, "process setup failed"),
            (Worker, 127, Ended, "exit() from PHP code"),
            (Worker, 127, NotEnded, "not found (exec failed)"),
            (Worker, 126, NotEnded, "cannot execute (exec failed)"),
            (Program, 0, Unknown, "success"),
            (Program, 127, Unknown, "not found, or its exec failed"),
            (Program, 126, Unknown, "cannot execute (not an executable, or no permission)"),
            (Program, 70, Unknown, "lrpm-host: internal error (PHP could not start, a system call failed)"),
            (Program, 78, Unknown, "lrpm-host: the configuration source never produced a configuration"),
            (Program, 3, Unknown, "not an exit code of lrpm-host's"),
        ];
        for (kind, code, php, expected) in cases {
            assert_eq!(describe(kind, code, php), expected, "{kind:?} {code} {php:?}");
        }
    }

    #[test]
    fn codes_and_names_are_unique() {
        for (i, a) in CHILD_EXITS.iter().enumerate() {
            for b in &CHILD_EXITS[i + 1..] {
                assert_ne!(a.code, b.code);
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(runner_constants()["EXIT_UNCAUGHT"], 70);
    }
}
