//! Exit codes of PHP child processes (mirrors the constants in php/runner.php).

/// Clean stop (SIGTERM/SIGINT after the current cycle, `--cycles` reached).
pub const EXIT_OK: i32 = 0;
/// The configuration source could not be loaded or `loadConfiguration()` failed.
pub const EXIT_CONFIG_SOURCE_FAILED: i32 = 3;
/// The worker class does not exist or does not implement the Worker interface.
pub const EXIT_BAD_WORKER_CLASS: i32 = 65;
/// `start()` or `cycle()` threw an exception or Error nobody caught.
pub const EXIT_UNCAUGHT: i32 = 70;
/// The PHP request could not start (see stderr).
pub const EXIT_REQUEST_FAILED: i32 = 71;
/// The bootstrap file is missing, has a syntax error, or threw.
pub const EXIT_BOOTSTRAP_FAILED: i32 = 78;
/// A PHP fatal error (E_ERROR, out of memory, ...): PHP's own status.
pub const EXIT_PHP_FATAL: i32 = 255;

/// Human description of a child's exit code, for logs and lrpmctl.
pub fn describe_exit_code(code: i32) -> &'static str {
    match code {
        EXIT_OK => "clean stop",
        EXIT_CONFIG_SOURCE_FAILED => "configuration source failed",
        EXIT_BAD_WORKER_CLASS => "bad worker class",
        EXIT_UNCAUGHT => "uncaught exception",
        EXIT_REQUEST_FAILED => "PHP request startup failed",
        EXIT_BOOTSTRAP_FAILED => "bootstrap failed",
        EXIT_PHP_FATAL => "PHP fatal error",
        _ => "exit() from PHP code",
    }
}
