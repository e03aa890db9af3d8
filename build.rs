//! Finds libphp (embed SAPI, NTS), checks that its PHP version is one the
//! shim supports, generates bindings for the C shim with bindgen and
//! compiles the shim with cc. Links libphp as a shared library, or, with
//! `LRPM_PHP_STATIC=1`, its static archive (`make php PHP_STATIC=1`). Every
//! failure names the fix.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const INSTALL_HINT: &str =
    "sudo apt-get install -y libphp8.2-embed php8.2-dev php8.2-opcache libclang-dev (or run `make deps`)";

fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    println!("cargo:warning={message}");
    exit(1);
}

fn php_config_path() -> PathBuf {
    println!("cargo:rerun-if-env-changed=PHP_CONFIG");
    if let Some(explicit) = env::var_os("PHP_CONFIG") {
        let path = PathBuf::from(explicit);
        if !path.is_file() {
            fail(&format!(
                "PHP_CONFIG is set to {} but no such file exists; point it at the php-config of an embed build",
                path.display()
            ));
        }
        return path;
    }
    for candidate in ["php-config8.2", "php-config"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return PathBuf::from(candidate);
        }
    }
    fail(&format!(
        "php-config was not found on PATH (nor PHP_CONFIG set). Install PHP's development files: {INSTALL_HINT}"
    ));
}

fn php_config(tool: &Path, flag: &str) -> String {
    let output = Command::new(tool)
        .arg(flag)
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run {} {flag}: {e}", tool.display())));
    if !output.status.success() {
        fail(&format!("{} {flag} failed", tool.display()));
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// PHP API numbers (`PHP_API_VERSION` in main/php.h) of the versions the
/// shim supports.
/// 8.2 and 8.4 are built and tested (Debian's package, `make test-php84`);
/// 8.3 and 8.5 take the same code paths as their neighbours (csrc/lrpm_shim.c).
const SUPPORTED_APIS: &[(&str, &str)] =
    &[("20220829", "8.2"), ("20230831", "8.3"), ("20240924", "8.4"), ("20250925", "8.5")];

/// php-config 8.2 has `--phpapi`, 8.4's no longer does: the header is
/// what every version has.
fn check_version(tool: &Path, version: &str, include_dir: &str) {
    let php_h = Path::new(include_dir).join("main/php.h");
    let header = std::fs::read_to_string(&php_h)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}. Install: {INSTALL_HINT}", php_h.display())));
    let api = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define PHP_API_VERSION").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| fail(&format!("{} defines no PHP_API_VERSION", php_h.display())));
    let major_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let supported = SUPPORTED_APIS.iter().map(|(_, v)| *v).collect::<Vec<_>>().join(", ");
    match SUPPORTED_APIS.iter().find(|(number, _)| *number == api) {
        Some((_, expected)) if *expected == major_minor => {}
        Some((_, expected)) => fail(&format!(
            "{} reports PHP {version} but API {api}, which is PHP {expected}'s: a mixed installation? Point PHP_CONFIG at one build",
            tool.display()
        )),
        None => fail(&format!(
            "{} is PHP {version} (API {api}); lrpm-host supports PHP {supported}. Install one of those (`make php PHP_VERSION=8.4` builds 8.4 from source) and set PHP_CONFIG",
            tool.display()
        )),
    }
}

/// libphp's SONAME is libphp.so; Debian installs it as libphp<version>.so.
fn find_libphp(prefix: &str, version: &str) -> (PathBuf, String) {
    let major_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let dirs = [format!("{prefix}/lib"), format!("{prefix}/lib64"), "/usr/lib".to_string()];
    let names = [format!("php{major_minor}"), "php".to_string()];
    for dir in &dirs {
        for name in &names {
            if Path::new(dir).join(format!("lib{name}.so")).exists() {
                return (PathBuf::from(dir), name.clone());
            }
        }
    }
    fail(&format!("libphp (the embed SAPI library) was not found under {dirs:?}. Install it: {INSTALL_HINT}"));
}

#[derive(PartialEq)]
enum Link {
    Shared,
    Static,
    /// A static archive that holds OPcache's objects (before PHP 8.5 OPcache
    /// is only ever a shared Zend extension; `make php` adds its objects to
    /// the archive and the shim registers it at startup).
    StaticWithOpcache,
}

fn link_shared(prefix: &str, version: &str) -> Link {
    let (lib_dir, lib_name) = find_libphp(prefix, version);
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib={lib_name}");
    // Debian puts libphp8.2.so in /usr/lib, already on the loader path; for other
    // prefixes record it so the binary runs without LD_LIBRARY_PATH.
    if lib_dir != Path::new("/usr/lib") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
    Link::Shared
}

/// libphp.a and the libraries its extensions need (`php-config --libs`:
/// the C library, libxml2, OpenSSL, ICU, ... stay shared).
fn link_static(tool: &Path, prefix: &str) -> Link {
    let lib_dir = Path::new(prefix).join("lib");
    let archive = lib_dir.join("libphp.a");
    if !archive.is_file() {
        fail(&format!(
            "LRPM_PHP_STATIC=1 but {} does not exist: build it with `make php PHP_STATIC=1`",
            archive.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", archive.display());
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=static:-bundle=php");
    let flags = format!("{} {}", php_config(tool, "--ldflags"), php_config(tool, "--libs"));
    let mut seen = std::collections::HashSet::new();
    // php-config repeats libraries (-lxml2 once per XML extension); one
    // mention each is enough for shared libraries.
    for flag in flags.split_whitespace().filter(|f| seen.insert(*f)) {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else {
            println!("cargo:rustc-link-arg={flag}");
        }
    }
    let members = Command::new("ar")
        .arg("t")
        .arg(&archive)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot list {} with ar: {e}", archive.display())));
    if String::from_utf8_lossy(&members.stdout).lines().any(|m| m == "ZendAccelerator.o") {
        Link::StaticWithOpcache
    } else {
        Link::Static
    }
}

/// What csrc/lrpm_waits.c defines for every library of the process to bind to.
const WAIT_EXPORTS: &[&str] = &[
    "poll",
    "__poll_chk",
    "ppoll",
    "__ppoll_chk",
    "select",
    "pselect",
    "epoll_wait",
    "epoll_pwait",
    "recv",
    "__recv_chk",
    "read",
    "__read_chk",
    "nanosleep",
    "usleep",
    "sleep",
    "dlopen",
];

fn main() {
    for file in [
        "lrpm_shim.c",
        "lrpm_functions.c",
        "lrpm_tasks.c",
        "lrpm_waits.c",
        "lrpm_zygote.c",
        "lrpm_backtrace.c",
        "lrpm_shim.h",
        "lrpm_shim_internal.h",
    ] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    println!("cargo:rerun-if-changed=csrc/wrapper.h");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");

    let tool = php_config_path();
    let sapis = php_config(&tool, "--php-sapis");
    if !sapis.split_whitespace().any(|s| s == "embed") {
        fail(&format!(
            "{} reports SAPIs [{sapis}] without `embed`. Install Debian's embed library: {INSTALL_HINT}, or build PHP with --enable-embed (see php-src-config/)",
            tool.display()
        ));
    }
    let include_dir = php_config(&tool, "--include-dir");
    let php_config_h = Path::new(&include_dir).join("main/php_config.h");
    let config_h = std::fs::read_to_string(&php_config_h)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}. Install: {INSTALL_HINT}", php_config_h.display())));
    // `php-config --configure-options` describes the CLI build; the header is the truth.
    if config_h.lines().any(|l| l.trim() == "#define ZTS 1") {
        fail("this libphp is a thread-safe (ZTS) build; lrpm-host needs an NTS build (one interpreter per process). Use Debian's libphp8.2-embed or build with the flags in php-src-config/");
    }
    println!("cargo:rerun-if-changed={}", php_config_h.display());

    let includes: Vec<String> = php_config(&tool, "--includes")
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("-I").map(str::to_string))
        .collect();
    // PHP_BINARY in workers names the php CLI of the same build, as apps
    // use it to start PHP subprocesses (Symfony's PhpExecutableFinder, ...).
    println!("cargo:rustc-env=LRPM_PHP_CLI_BINARY={}", php_config(&tool, "--php-binary"));
    let version = php_config(&tool, "--version");
    check_version(&tool, &version, &include_dir);
    let prefix = php_config(&tool, "--prefix");

    println!("cargo:rerun-if-env-changed=LRPM_PHP_STATIC");
    let link = if env::var("LRPM_PHP_STATIC").is_ok_and(|v| v == "1") {
        link_static(&tool, &prefix)
    } else {
        link_shared(&prefix, &version)
    };

    let mut build = cc::Build::new();
    build
        .files([
            "csrc/lrpm_shim.c",
            "csrc/lrpm_functions.c",
            "csrc/lrpm_tasks.c",
            "csrc/lrpm_waits.c",
            "csrc/lrpm_zygote.c",
            "csrc/lrpm_backtrace.c",
        ])
        .warnings(false)
        .flag_if_supported("-Wno-unused-parameter");
    for dir in &includes {
        build.include(dir);
    }
    if link != Link::Shared {
        build.define("LRPM_STATIC_PHP", "1");
    }
    if link == Link::StaticWithOpcache {
        build.define("LRPM_STATIC_OPCACHE", "1");
    }
    build.compile("lrpm_shim");

    // The shim's waits (csrc/lrpm_waits.c) must be the ones libphp, its
    // extensions and their libraries call (they bound waits once a stop is
    // pending): export them from the binary. A static libphp binds to them
    // at link time; shared libraries (libcurl, libpq, libgearman) look them
    // up dynamically, and find them because the exported dlopen() drops
    // RTLD_DEEPBIND.
    for symbol in WAIT_EXPORTS {
        println!("cargo:rustc-link-arg-bin=lrpm-host=-Wl,--export-dynamic-symbol={symbol}");
    }

    let mut builder = bindgen::Builder::default()
        .header("csrc/wrapper.h")
        .allowlist_function("lrpm_.*")
        .allowlist_type("lrpm_child_spec")
        .allowlist_type("lrpm_zygote_request")
        .allowlist_type("lrpm_zygote_reply")
        .allowlist_var("LRPM_.*")
        .allowlist_var("PHP_VERSION_ID")
        .allowlist_var("ZEND_MODULE_API_NO")
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in &includes {
        builder = builder.clang_arg(format!("-I{dir}"));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        fail(&format!("bindgen could not generate the PHP bindings ({e}). If libclang is missing: {INSTALL_HINT}"))
    });
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("php_bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));
    println!("cargo:rustc-env=LRPM_PHP_VERSION={version}");
}
