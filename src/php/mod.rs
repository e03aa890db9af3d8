//! Safe wrapper over the C shim: boot the PHP module once, and run the
//! embedded runner in a forked child. All unsafe FFI lives in this module.

mod ffi;

use std::ffi::{CStr, CString, NulError};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use thiserror::Error;

use crate::process::shared_page::{self, SharedPage};

/// The runner script, compiled in every child (see php/runner.php).
const RUNNER_SOURCE: &str = include_str!("../../php/runner.php");

const TASK_SOURCE: &str = include_str!("../../php/interfaces/Lrpm_Task.php");

/// The interfaces and classes the host provides, by lower-case class name (php/interfaces/).
const INTERFACES: [(&str, &str, &str); 15] = [
    ("lrpm\\worker", "Lrpm_Worker.php", include_str!("../../php/interfaces/Lrpm_Worker.php")),
    ("lrpm\\stoppable", "Lrpm_Stoppable.php", include_str!("../../php/interfaces/Lrpm_Stoppable.php")),
    (
        "lrpm\\configurationsource",
        "Lrpm_ConfigurationSource.php",
        include_str!("../../php/interfaces/Lrpm_ConfigurationSource.php"),
    ),
    // Lrpm\Task and its classes: one file, loaded by whichever is named first.
    ("lrpm\\task", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\taskhandle", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\taskexception", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\taskerror", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\tasktimeout", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\taskfailed", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\toomanytasks", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\pool", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\poolfull", "Lrpm_Task.php", TASK_SOURCE),
    ("lrpm\\idempotent", "Lrpm_Task.php", TASK_SOURCE),
    ("phplrpm\\worker", "PHPLRPM_Worker.php", include_str!("../../php/interfaces/PHPLRPM_Worker.php")),
    (
        "phplrpm\\configurationsource",
        "PHPLRPM_ConfigurationSource.php",
        include_str!("../../php/interfaces/PHPLRPM_ConfigurationSource.php"),
    ),
];

fn strip_open_tag(source: &str) -> &str {
    source.trim_start().strip_prefix("<?php").unwrap_or(source)
}

/// `{classes: {class: file}, sources: {file: source}}` for the runner's
/// fallback autoloader (a file declaring several classes is sent once),
/// built once.
fn interfaces_param() -> &'static serde_json::Value {
    static PARAM: OnceLock<serde_json::Value> = OnceLock::new();
    PARAM.get_or_init(|| {
        let classes: serde_json::Map<String, serde_json::Value> =
            INTERFACES.iter().map(|(class, file, _)| (class.to_string(), serde_json::Value::from(*file))).collect();
        let sources: serde_json::Map<String, serde_json::Value> = INTERFACES
            .iter()
            .map(|(_, file, source)| (file.to_string(), serde_json::Value::from(strip_open_tag(source))))
            .collect();
        serde_json::json!({ "classes": classes, "sources": sources })
    })
}

/// `{EXIT_OK: 0, ...}` from src/exit_code.rs: the runner defines its exit
/// constants from this, so no other layer holds a literal code.
fn exit_codes_param() -> &'static serde_json::Value {
    static PARAM: OnceLock<serde_json::Value> = OnceLock::new();
    PARAM.get_or_init(crate::exit_code::runner_constants)
}

/// The runner as the shim evaluates it (no opening tag), built once.
fn runner_code() -> &'static CStr {
    static CODE: OnceLock<CString> = OnceLock::new();
    CODE.get_or_init(|| CString::new(strip_open_tag(RUNNER_SOURCE)).expect("php/runner.php contains no NUL byte"))
}

/// Writes the interfaces and a wrapper that registers a fallback autoloader
/// for them before requiring the user's preload script: preloaded worker
/// classes can then implement Lrpm\Worker, and the interfaces are preloaded
/// too. Returns the wrapper's path (what opcache.preload points at).
fn write_preload_wrapper(user_preload: &str) -> std::io::Result<std::path::PathBuf> {
    let mut files = String::new();
    for (class, file, _) in &INTERFACES {
        files.push_str(&format!("    '{}' => __DIR__ . '/{file}',\n", class.replace('\\', "\\\\")));
    }
    let wrapper = format!(
        "<?php\n// Written by lrpm-host for --preload: the host's interfaces, then the app's preload script.\n\
         spl_autoload_register(static function (string $class): void {{\n    $files = [\n{files}    ];\n    \
         $key = strtolower(ltrim($class, '\\\\'));\n    if (isset($files[$key])) {{\n        require $files[$key];\n    }}\n}});\n\
         require {};\n",
        php_single_quoted(user_preload)
    );
    let digest = wrapper.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let euid = nix::unistd::geteuid();
    let dir = std::env::temp_dir().join(format!("lrpm-host-preload-{euid}-{digest:016x}"));
    std::fs::create_dir_all(&dir)?;
    // The temp folder is shared and the path is predictable, and workers
    // run what this folder holds: it must be a real folder of our own, or
    // whoever made it could swap the scripts.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.file_type().is_dir() || meta.uid() != euid.as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not a folder owned by uid {euid} (a symlink, or made by another user); remove it or set TMPDIR",
            dir.display()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    // Readable by opcache.preload_user, which is not us when we are root.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for (_, file, source) in &INTERFACES {
        std::fs::write(dir.join(file), source)?;
    }
    let path = dir.join("preload.php");
    std::fs::write(&path, wrapper)?;
    Ok(path)
}

fn php_single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// php_embed's defaults, plus OPcache on for the "cli" SAPI name we register.
/// User `-d` settings are appended after these and win.
const BASE_INI: &[(&str, &str)] = &[
    ("html_errors", "0"),
    ("register_argc_argv", "1"),
    ("implicit_flush", "1"),
    ("output_buffering", "0"),
    ("max_execution_time", "0"),
    ("max_input_time", "-1"),
    ("opcache.enable", "1"),
    ("opcache.enable_cli", "1"),
    ("opcache.file_cache_only", "0"),
    // Generous: the segment is shared by every worker and only touched pages
    // cost memory; a full cache triggers an OPcache restart that kills
    // readers, so running out is the expensive case.
    ("opcache.memory_consumption", "256"),
    ("opcache.interned_strings_buffer", "32"),
    ("opcache.max_accelerated_files", "32531"),
];

#[derive(Debug, Error)]
pub enum PhpError {
    #[error("PHP was already started in this process")]
    AlreadyBooted,
    #[error("a PHP setting or argument contains a NUL byte: {0}")]
    Nul(#[from] NulError),
    #[error("PHP module startup failed (see the PHP messages above; a broken php.ini, a missing extension or a failing opcache.preload script are the usual causes)")]
    ModuleStartup,
    #[error("invalid -d setting {0:?}: expected KEY=VALUE")]
    BadSetting(String),
    #[error("cannot write the preload wrapper: {0}")]
    Preload(std::io::Error),
}

/// What the module is started with.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// `-d KEY=VALUE` options, in order.
    pub ini_overrides: Vec<String>,
    /// `--preload FILE`.
    pub preload: Option<String>,
    /// User that OPcache preloading runs as when we are root.
    pub preload_user: Option<String>,
}

impl EngineSettings {
    /// The ini string handed to the SAPI (one `key=value` per line).
    pub fn ini_entries(&self) -> Result<String, PhpError> {
        let mut ini = String::new();
        for (key, value) in BASE_INI {
            ini.push_str(&format!("{key}={value}\n"));
        }
        if let Some(preload) = &self.preload {
            let wrapper = write_preload_wrapper(preload).map_err(PhpError::Preload)?;
            ini.push_str(&format!("opcache.preload=\"{}\"\n", wrapper.display()));
            if let Some(user) = &self.preload_user {
                ini.push_str(&format!("opcache.preload_user={user}\n"));
            }
        }
        for setting in &self.ini_overrides {
            let (key, value) = setting.split_once('=').map(|(k, v)| (k.trim(), v)).unwrap_or((setting.trim(), "1"));
            if key.is_empty() || key.contains('\n') || value.contains('\n') {
                return Err(PhpError::BadSetting(setting.clone()));
            }
            // Quote values so that characters ini syntax treats specially survive.
            if value.is_empty() || value.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)) {
                ini.push_str(&format!("{key}={value}\n"));
            } else {
                ini.push_str(&format!("{key}=\"{}\"\n", value.replace('"', "\\\"")));
            }
        }
        Ok(ini)
    }
}

static BOOTED: AtomicBool = AtomicBool::new(false);

/// Proof that the PHP module is started in this process. There is at most
/// one per process; children inherit it through fork.
#[derive(Debug)]
pub struct Engine {
    _private: (),
}

impl Engine {
    /// Starts the PHP module (never a request). Call once, single-threaded,
    /// before any fork.
    pub fn boot(settings: &EngineSettings) -> Result<Engine, PhpError> {
        if BOOTED.swap(true, Ordering::SeqCst) {
            return Err(PhpError::AlreadyBooted);
        }
        let ini = CString::new(settings.ini_entries()?)?;
        // PHP_BINARY is derived from this. It names the php CLI of the PHP
        // build we link (apps run `PHP_BINARY script.php` for subprocesses,
        // which lrpm-host would take for a farm), or is empty without one.
        let php_cli = std::path::Path::new(env!("LRPM_PHP_CLI_BINARY"));
        let exe = php_cli.is_file().then(|| CString::new(php_cli.as_os_str().as_encoded_bytes())).transpose()?;
        // SAFETY: called once per process (guarded by BOOTED) before any
        // request; both pointers are valid NUL-terminated strings for the
        // duration of the call and the shim copies what it keeps.
        let status = unsafe { ffi::lrpm_boot(ini.as_ptr(), exe.as_ref().map_or(std::ptr::null(), |e| e.as_ptr())) };
        if status != ffi::LRPM_BOOT_OK as i32 {
            return Err(PhpError::ModuleStartup);
        }
        Ok(Engine { _private: () })
    }
}

/// PHP's `memory_limit` in bytes as the module started with it (php.ini,
/// `-d`); None when unlimited (-1) or before [`Engine::boot`] succeeded.
pub fn memory_limit_bytes() -> Option<u64> {
    // SAFETY: reads one global of the module (or returns -1 before it
    // started); no pointer crosses the call.
    limit_from_raw(unsafe { ffi::lrpm_memory_limit_bytes() })
}

/// PHP's convention: a negative limit is no limit.
fn limit_from_raw(raw: i64) -> Option<u64> {
    u64::try_from(raw).ok()
}

/// The PHP version libphp was built as.
pub fn php_version() -> &'static str {
    env!("LRPM_PHP_VERSION")
}

/// Makes the argv/environ area writable for process titles. Call first
/// thing in main, single-threaded.
pub fn init_process_title() {
    // SAFETY: runs before any other thread exists; the shim only rewrites
    // environ entries to heap copies and records the area's bounds.
    unsafe { ffi::lrpm_title_init() }
}

/// Sets the title shown by `ps`.
pub fn set_process_title(title: &str) {
    if let Ok(title) = CString::new(title) {
        // SAFETY: valid NUL-terminated string; the shim copies it.
        unsafe { ffi::lrpm_title_set(title.as_ptr()) }
    }
}

/// Everything a child needs, built before fork so the child allocates
/// nothing before PHP takes over.
pub struct ChildProgram {
    runner: &'static CStr,
    params: CString,
    title: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*mut libc::c_char>,
    message_fd: RawFd,
    shared_page: Option<SharedPage>,
    stop_grace: Option<std::time::Duration>,
}

// The C layout of the shared page must be the one src/process/shared_page.rs maps.
const _: () = {
    assert!(std::mem::size_of::<ffi::lrpm_shared_page>() == shared_page::PAGE_SIZE);
    assert!(ffi::LRPM_SHARED_PAGE_SIZE as usize == shared_page::PAGE_SIZE);
    assert!(ffi::LRPM_SHARED_PAGE_MAGIC == shared_page::MAGIC);
    assert!(ffi::LRPM_SHARED_PAGE_VERSION == shared_page::VERSION);
    assert!(ffi::LRPM_FLAG_USER_SIGTERM_HANDLER as u64 == shared_page::FLAG_USER_SIGTERM_HANDLER);
    assert!(ffi::LRPM_FLAG_USER_SIGINT_HANDLER as u64 == shared_page::FLAG_USER_SIGINT_HANDLER);
    assert!(ffi::LRPM_FLAG_STOP_SIGNALLED as u64 == shared_page::FLAG_STOP_SIGNALLED);
    use shared_page::Layout;
    use std::mem::offset_of;
    type C = ffi::lrpm_shared_page;
    assert!(offset_of!(C, magic) == offset_of!(Layout, magic));
    assert!(offset_of!(C, version) == offset_of!(Layout, version));
    assert!(offset_of!(C, flags) == offset_of!(Layout, flags));
    assert!(offset_of!(C, cycles) == offset_of!(Layout, cycles));
    assert!(offset_of!(C, cycle_started_ns) == offset_of!(Layout, cycle_started_ns));
    assert!(offset_of!(C, last_cycle_ns) == offset_of!(Layout, last_cycle_ns));
    assert!(offset_of!(C, heap_bytes) == offset_of!(Layout, heap_bytes));
    assert!(offset_of!(C, peak_heap_bytes) == offset_of!(Layout, peak_heap_bytes));
    assert!(offset_of!(C, recycle_reason) == offset_of!(Layout, recycle_reason));
    assert!(offset_of!(C, opcache_published_ns) == offset_of!(Layout, opcache_published_ns));
    assert!(offset_of!(C, opcache_used_bytes) == offset_of!(Layout, opcache_used_bytes));
    assert!(offset_of!(C, opcache_free_bytes) == offset_of!(Layout, opcache_free_bytes));
    assert!(offset_of!(C, opcache_hits) == offset_of!(Layout, opcache_hits));
    assert!(offset_of!(C, opcache_misses) == offset_of!(Layout, opcache_misses));
    assert!(offset_of!(C, ended_status) == offset_of!(Layout, ended_status));
    assert!(offset_of!(C, tasks_running) == offset_of!(Layout, tasks_running));
    assert!(offset_of!(C, task_pids) == offset_of!(Layout, task_pids));
    assert!(offset_of!(C, progress_ns) == offset_of!(Layout, progress_ns));
    assert!(offset_of!(C, progress_calls) == offset_of!(Layout, progress_calls));
    assert!(offset_of!(C, cycle_ended_ns) == offset_of!(Layout, cycle_ended_ns));
    assert!(offset_of!(C, progress_note_seq) == offset_of!(Layout, progress_note_seq));
    assert!(offset_of!(C, progress_note) == offset_of!(Layout, progress_note));
    assert!(offset_of!(C, backtrace_asked) == offset_of!(Layout, backtrace_asked));
    assert!(offset_of!(C, backtrace_answered) == offset_of!(Layout, backtrace_answered));
    assert!(offset_of!(C, backtrace_length) == offset_of!(Layout, backtrace_length));
    assert!(offset_of!(C, backtrace_text) == offset_of!(Layout, backtrace_text));
    assert!(offset_of!(C, reserved) == offset_of!(Layout, reserved));
    assert!(ffi::LRPM_FLAG_BACKTRACE_READY as u64 == shared_page::FLAG_BACKTRACE_READY);
    assert!(ffi::LRPM_PROGRESS_NOTE_BYTES as usize == shared_page::PROGRESS_NOTE_BYTES);
    assert!(ffi::LRPM_BACKTRACE_BYTES as usize == shared_page::BACKTRACE_BYTES);
};

/// The real-time signal that asks a worker for its PHP stack (its page must
/// say `FLAG_BACKTRACE_READY` first: before, the signal would end it).
pub fn backtrace_signal() -> i32 {
    // SAFETY: a pure function of the C library's SIGRTMIN.
    unsafe { ffi::lrpm_backtrace_signal() }
}

impl ChildProgram {
    /// `params` is the JSON object the runner reads with `Lrpm\Internal\params()`.
    pub fn new(
        params: &serde_json::Value,
        argv: &[String],
        title: &str,
        message_fd: Option<RawFd>,
    ) -> Result<Self, PhpError> {
        let argv: Vec<CString> = argv.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut libc::c_char).collect();
        argv_ptrs.push(std::ptr::null_mut());
        Ok(ChildProgram {
            runner: runner_code(),
            params: CString::new(params.to_string())?,
            // A job's name or id may hold any byte PHP strings hold, NUL
            // included: the title is C text, so a NUL is shown, not refused.
            title: CString::new(title.replace('\0', "\\0"))?,
            _argv: argv,
            argv_ptrs,
            message_fd: message_fd.unwrap_or(-1),
            shared_page: None,
            stop_grace: None,
        })
    }

    /// Gives the child this shared page (create it before fork and keep a
    /// clone to read what the child reports).
    pub fn set_shared_page(&mut self, page: SharedPage) {
        self.shared_page = Some(page);
    }

    /// Once a stop is requested, blocking waits inside PHP (stream reads)
    /// end this long after it (see `poll()` in csrc/lrpm_waits.c).
    pub fn set_stop_grace(&mut self, grace: std::time::Duration) {
        self.stop_grace = Some(grace);
    }

    /// Runs the PHP request in this (forked) process and returns the exit
    /// status the process should `_exit` with.
    pub fn run(&self, _engine: &Engine, parent_pid: i32) -> i32 {
        let spec = ffi::lrpm_child_spec {
            runner_code: self.runner.as_ptr(),
            params_json: self.params.as_ptr(),
            argc: (self.argv_ptrs.len() - 1) as i32,
            argv: self.argv_ptrs.as_ptr() as *mut *mut libc::c_char,
            title: self.title.as_ptr(),
            message_fd: self.message_fd,
            parent_pid,
            request_failed_exit: crate::exit_code::REQUEST_FAILED,
            setup_failed_exit: crate::exit_code::CHILD_SETUP_FAILED,
            shared_page: self.shared_page.as_ref().map_or(std::ptr::null_mut(), |p| p.as_ptr().cast()),
            stop_grace_ms: self.stop_grace.map_or(-1, |g| i64::try_from(g.as_millis()).unwrap_or(i64::MAX)),
        };
        // SAFETY: the Engine token proves module startup happened in this
        // process image; every pointer in `spec` borrows from `self`, which
        // outlives the call; the shim catches every bailout with zend_try,
        // so no longjmp crosses this frame.
        unsafe { ffi::lrpm_child_main(&spec) }
    }
}

/// The zygote's wire format, from csrc/lrpm_shim.h's definitions (bindgen):
/// a request's header and a reply's, field by field at the C offsets, so
/// that a change on the C side fails to compile here instead of misreading.
pub mod zygote_wire {
    use super::ffi;
    use std::mem::{offset_of, size_of};

    pub const READY: u32 = ffi::LRPM_ZYGOTE_READY;
    pub const REFUSED: u32 = ffi::LRPM_ZYGOTE_REFUSED;
    pub const STARTED: u32 = ffi::LRPM_ZYGOTE_STARTED;
    pub const FAILED: u32 = ffi::LRPM_ZYGOTE_FAILED;
    pub const STALE: u32 = ffi::LRPM_ZYGOTE_STALE;

    type Request = ffi::lrpm_zygote_request;
    type Reply = ffi::lrpm_zygote_reply;
    pub const REQUEST_HEADER_LEN: usize = size_of::<Request>();
    pub const REPLY_HEADER_LEN: usize = size_of::<Reply>();

    // No padding anywhere: the bytes written below are the whole struct.
    const _: () = {
        assert!(REQUEST_HEADER_LEN == 8 + 8 + 4 + 4);
        assert!(offset_of!(Request, shared_page) == 0);
        assert!(offset_of!(Request, stop_grace_ms) == 8);
        assert!(offset_of!(Request, title_len) == 16);
        assert!(offset_of!(Request, params_len) == 20);
        assert!(REPLY_HEADER_LEN == 4 + 4);
        assert!(offset_of!(Reply, kind) == 0);
        assert!(offset_of!(Reply, value) == 4);
    };

    /// A request's header, as `lrpm_zygote_serve` reads it.
    pub fn request_header(request: Request) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[offset_of!(Request, shared_page)..][..8].copy_from_slice(&request.shared_page.to_ne_bytes());
        out[offset_of!(Request, stop_grace_ms)..][..8].copy_from_slice(&request.stop_grace_ms.to_ne_bytes());
        out[offset_of!(Request, title_len)..][..4].copy_from_slice(&request.title_len.to_ne_bytes());
        out[offset_of!(Request, params_len)..][..4].copy_from_slice(&request.params_len.to_ne_bytes());
        out
    }

    pub fn request(shared_page: u64, stop_grace_ms: i64, title_len: u32, params_len: u32) -> Request {
        Request { shared_page, stop_grace_ms, title_len, params_len }
    }

    /// A reply message: its kind, its value and the text after the header;
    /// None when it is shorter than the header.
    pub fn reply(message: &[u8]) -> Option<(u32, i32, &[u8])> {
        let field = |at: usize| -> Option<[u8; 4]> { message.get(at..at + 4)?.try_into().ok() };
        let kind = u32::from_ne_bytes(field(offset_of!(Reply, kind))?);
        let value = i32::from_ne_bytes(field(offset_of!(Reply, value))?);
        Some((kind, value, &message[REPLY_HEADER_LEN..]))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_request_header_is_its_fields_at_their_offsets_and_a_short_reply_is_none() {
            let bytes = request_header(request(0x1122, -1, 3, 4));
            assert_eq!(&bytes[0..8], &0x1122u64.to_ne_bytes());
            assert_eq!(&bytes[8..16], &(-1i64).to_ne_bytes());
            assert_eq!(&bytes[16..20], &3u32.to_ne_bytes());
            assert_eq!(&bytes[20..24], &4u32.to_ne_bytes());
            let mut message = STARTED.to_ne_bytes().to_vec();
            message.extend_from_slice(&42i32.to_ne_bytes());
            message.extend_from_slice(b"text");
            assert_eq!(reply(&message), Some((STARTED, 42, &b"text"[..])));
            assert_eq!(reply(&message[..7]), None);
        }
    }
}

/// The params every runner mode reads (`mode`, the host's interfaces, the
/// exit codes); `crate::launch` adds each mode's own.
pub fn runner_params(mode: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut params = serde_json::Map::new();
    params.insert("mode".into(), mode.into());
    params.insert("interfaces".into(), interfaces_param().clone());
    params.insert("exitCodes".into(), exit_codes_param().clone());
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_memory_limit_is_no_limit() {
        assert_eq!(limit_from_raw(-1), None);
        assert_eq!(limit_from_raw(i64::MIN), None);
        assert_eq!(limit_from_raw(128 << 20), Some(128 << 20));
    }
}
