//! Command-line definitions (clap). php-lrpm spellings are kept: `-i N` /
//! `--interval=N`, and the configuration source as the only argument.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lrpm-host",
    // The PHP it was built against: with several PHP builds around
    // (Debian's, `make php`), which one a binary holds matters.
    version = concat!(env!("CARGO_PKG_VERSION"), " (PHP ", env!("LRPM_PHP_VERSION"), ")"),
    about = "Runs farms of long-running PHP workers from one embedded, warmed-up PHP (php-lrpm compatible)",
    subcommand_negates_reqs = true,
    subcommand_precedence_over_arg = true,
    // clap's own usage line reads `[SOURCE] <COMMAND>`: SOURCE goes after a
    // subcommand's name (before it is accepted too: `source_for_command`).
    override_usage = "lrpm-host [OPTIONS] SOURCE\n       \
                      lrpm-host [OPTIONS] worker CLASS [SOURCE] [--job JSON] [--id ID] [--cycles N]\n       \
                      lrpm-host [OPTIONS] check [--strict] SOURCE"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Configuration source: a .php file declaring (or returning) a
    /// Lrpm\ConfigurationSource, or a class name autoloadable from the bootstrap.
    #[arg(value_name = "SOURCE", required = true)]
    pub source: Option<String>,

    /// Seconds between configuration polls; 0 = push mode (loadConfiguration() blocks until something changes).
    #[arg(short = 'i', long, default_value_t = 30, value_name = "N")]
    pub interval: u64,

    #[command(flatten)]
    pub farm: FarmOptions,

    #[command(flatten)]
    pub php: PhpOptions,
}

#[derive(Debug, Args, Clone)]
pub struct FarmOptions {
    /// Control socket path (default: $LRPM_SOCKET, else /run/lrpm-host/control.sock, else
    /// $XDG_RUNTIME_DIR/lrpm-host/control.sock, else /tmp/lrpm-host-UID/control.sock).
    #[arg(long, value_name = "PATH", global = true)]
    pub control_socket: Option<PathBuf>,

    /// Pidfile, locked for the host's life: a second lrpm-host on the same
    /// file refuses to start; a stale one is taken over.
    #[arg(long, value_name = "PATH", global = true)]
    pub pidfile: Option<PathBuf>,

    /// Adopt and reap orphaned descendants (PR_SET_CHILD_SUBREAPER), as an
    /// init would: for a container whose PID 1 is not lrpm-host and does not
    /// reap, or under another supervisor. As PID 1, lrpm-host reaps them anyway.
    #[arg(long, global = true)]
    pub subreaper: bool,

    /// `--max-cycles`, `--replicas`, ...: one option per job field with a
    /// host-wide default, from the field table (src/job/fields.rs).
    #[command(flatten)]
    pub job_defaults: JobDefaultOptions,

    /// Log format: text, or json (one object per line; worker output too).
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT", global = true)]
    pub log_format: crate::telemetry::LogFormat,

    /// Log level or filter (env-filter syntax: info, debug, warn, ...);
    /// default: LRPM_LOG, else info.
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    /// Workers' stdout and stderr: capture (through pipes, forwarded a whole
    /// line at a time with the job's name and slot) or inherit (the host's
    /// own descriptors, untouched).
    #[arg(long, value_enum, default_value = "capture", value_name = "MODE", global = true)]
    pub worker_output: WorkerOutput,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this
    /// address, e.g. 127.0.0.1:9464 or [::]:9464.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen_address, global = true)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Fork workers from a zygote (the default): one process that ran the
    /// bootstrap once (workers share what it built, copy-on-write, and
    /// start faster).
    #[arg(long, global = true, overrides_with = "no_zygote")]
    pub zygote: bool,
    /// Fork workers from the supervisor itself: each worker starts its own
    /// PHP request and runs the bootstrap.
    #[arg(long, global = true, overrides_with = "zygote")]
    pub no_zygote: bool,

    /// Run every child (configuration process, zygote, workers) as this
    /// user (USER or USER:GROUP, with the user's supplementary groups); the
    /// supervisor keeps root to switch, signal and restart them. Needs root.
    #[arg(long, value_name = "USER[:GROUP]", global = true)]
    pub user: Option<String>,

    /// Permissions of the control socket, octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_octal_mode, global = true)]
    pub control_socket_mode: u32,

    /// Write the host's log and its workers' output to this file (appended)
    /// instead of stdout and stderr: nothing is ever dropped for a slow
    /// reader. Reopened on SIGHUP and `lrpmctl reopen-logs` (logrotate).
    #[arg(long, value_name = "PATH", global = true)]
    pub log_file: Option<PathBuf>,

    /// Serve the web dashboard on the --metrics-listen address: GET / (the
    /// page), /api/status and /api/farm. Read-only unless a token is given.
    #[arg(long, global = true)]
    pub dashboard: bool,
    /// Allow the dashboard's actions (restart, recycle, stop, start) to
    /// requests with `Authorization: Bearer TOKEN`, TOKEN being this file's
    /// content (at least 16 characters).
    #[arg(long, value_name = "PATH", global = true, requires = "dashboard", conflicts_with = "dashboard_token")]
    pub dashboard_token_file: Option<PathBuf>,
    /// The same token given directly (a command line is visible to every
    /// local user in ps: prefer the file, or the environment variable).
    #[arg(long, value_name = "TOKEN", env = "LRPM_DASHBOARD_TOKEN", hide_env_values = true, global = true)]
    pub dashboard_token: Option<String>,

    /// `lrpmctl upgrade`: how long the new binary's trial run (PHP boot and
    /// one configuration load) may take before it is killed and the
    /// upgrade fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600), global = true)]
    pub upgrade_trial_timeout: u64,

    /// Spread the farm over every lrpm-host on this etcd cluster and farm
    /// name: each job slot runs on exactly one live member
    /// (etcd://HOST:PORT[,HOST:PORT...]/FARM_NAME).
    #[arg(long, value_name = "URL", env = "LRPM_CLUSTER", value_parser = crate::cluster::ClusterUrl::parse)]
    pub cluster: Option<crate::cluster::ClusterUrl>,

    /// Seconds a member's lease lives without a renewal: a dead member's
    /// units move after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=300), global = true)]
    pub cluster_ttl: u64,

    /// This member's name, unique in the farm (default: hostname-pid).
    #[arg(long, value_name = "NAME", global = true)]
    pub cluster_member: Option<String>,

    /// This member's share of the units relative to the others (0 < W <= 1000).
    #[arg(long, value_name = "W", default_value_t = 1.0, global = true)]
    pub cluster_weight: f64,

    #[command(flatten)]
    pub etcd_client: EtcdClientArgs,
}

/// How the cluster agent authenticates to etcd: given to the host, passed
/// on to its agent as they are.
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdClientArgs {
    /// etcds://: the CA certificate(s) that sign etcd's (PEM; default: the
    /// public web roots).
    #[arg(long, value_name = "FILE", env = "LRPM_CLUSTER_CA", global = true)]
    pub cluster_ca: Option<PathBuf>,

    /// etcds://: a client certificate for etcd's --client-cert-auth (PEM),
    /// with --cluster-key.
    #[arg(long, value_name = "FILE", env = "LRPM_CLUSTER_CERT", global = true)]
    pub cluster_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "LRPM_CLUSTER_KEY", global = true)]
    pub cluster_key: Option<PathBuf>,

    /// etcd user (etcd's auth): its password comes from
    /// --cluster-password-file, else $LRPM_CLUSTER_PASSWORD.
    #[arg(long, value_name = "USER", env = "LRPM_CLUSTER_USER", global = true)]
    pub cluster_user: Option<String>,

    /// A file holding the etcd user's password (a trailing newline is
    /// ignored). Never on the command line: it would show in ps.
    #[arg(long, value_name = "FILE", env = "LRPM_CLUSTER_PASSWORD_FILE", global = true)]
    pub cluster_password_file: Option<PathBuf>,
}

impl EtcdClientArgs {
    pub fn tls_files(&self) -> crate::cluster::tls::TlsFiles {
        crate::cluster::tls::TlsFiles {
            ca: self.cluster_ca.clone(),
            cert: self.cluster_cert.clone(),
            key: self.cluster_key.clone(),
        }
    }

    /// The etcd user and password, read now; an error names what is wrong.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let Some(user) = self.cluster_user.clone() else {
            if self.cluster_password_file.is_some() {
                return Err("--cluster-password-file needs --cluster-user".into());
            }
            return Ok(None);
        };
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(format!("--cluster-user {user:?}: not a user name"));
        }
        let password = match &self.cluster_password_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("--cluster-password-file {}: {e}", file.display()))?;
                text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned()
            }
            None => std::env::var("LRPM_CLUSTER_PASSWORD").map_err(|_| {
                format!("--cluster-user {user}: no password (--cluster-password-file FILE, or LRPM_CLUSTER_PASSWORD)")
            })?,
        };
        Ok(Some((user, password)))
    }

    /// These options as arguments, for the agent's command line.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        let paths = [
            ("--cluster-ca", &self.cluster_ca),
            ("--cluster-cert", &self.cluster_cert),
            ("--cluster-key", &self.cluster_key),
            ("--cluster-password-file", &self.cluster_password_file),
        ];
        for (flag, value) in paths {
            if let Some(path) = value {
                args.push(flag.into());
                args.push(path.clone().into_os_string());
            }
        }
        if let Some(user) = &self.cluster_user {
            args.push("--cluster-user".into());
            args.push(user.into());
        }
        args
    }

    /// Everything the agent will need, checked at startup: the URL's
    /// scheme fits the TLS files, they parse, the password is there.
    pub fn check(&self, url: &crate::cluster::ClusterUrl) -> Result<(), String> {
        let files = self.tls_files();
        if !url.tls && !files.is_empty() {
            return Err(format!(
                "--cluster-ca, --cluster-cert and --cluster-key are for TLS: use etcds:// instead of {url}"
            ));
        }
        if url.tls {
            crate::cluster::tls::client_config(&files)?;
        }
        self.credentials().map(drop)
    }
}

/// What happens to workers' stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerOutput {
    #[default]
    Capture,
    Inherit,
}

impl FarmOptions {
    /// `--zygote` and `--no-zygote` override each other, the last one
    /// given wins; neither: the zygote.
    pub fn uses_zygote(&self) -> bool {
        self.zygote || !self.no_zygote
    }
}

/// The host-wide defaults for jobs' fields: the options come from the job
/// field table (`JobDefaults::options`), and each value is checked by its
/// field's rule, so `--replicas 0` is refused in the words a job's
/// `replicas: 0` is.
#[derive(Debug, Clone, Default)]
pub struct JobDefaultOptions(pub crate::job::JobDefaults);

impl clap::FromArgMatches for JobDefaultOptions {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut options = JobDefaultOptions::default();
        options.update_from_arg_matches(matches)?;
        Ok(options)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for option in crate::job::JobDefaults::options() {
            let text = if option.value_name.is_empty() {
                matches.get_flag(option.flag).then(String::new)
            } else {
                matches.get_one::<String>(option.flag).cloned()
            };
            if let Some(text) = text {
                self.0.set(option.field, &text).map_err(|problem| {
                    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--{}: {problem}\n", option.flag))
                })?;
            }
        }
        Ok(())
    }
}

impl Args for JobDefaultOptions {
    fn augment_args(command: clap::Command) -> clap::Command {
        crate::job::JobDefaults::options().into_iter().fold(command, |command, option| {
            let arg = clap::Arg::new(option.flag).long(option.flag).help(option.help).global(true);
            let arg = if option.value_name.is_empty() {
                arg.action(clap::ArgAction::SetTrue)
            } else {
                let field = option.field;
                // Checked while parsing, so clap names the option in its error.
                arg.value_name(option.value_name).allow_negative_numbers(true).value_parser(move |text: &str| {
                    crate::job::JobDefaults::default().set(field, text).map(|()| text.to_string())
                })
            };
            command.arg(arg)
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct PhpOptions {
    /// PHP file included in every PHP process (not the supervisor). Default:
    /// the nearest vendor/autoload.php above the source (or the current folder).
    #[arg(long, value_name = "FILE", global = true)]
    pub bootstrap: Option<PathBuf>,

    /// PHP ini setting, repeatable (like php -d).
    #[arg(short = 'd', value_name = "KEY=VALUE", global = true)]
    pub define: Vec<String>,

    /// Preload this file into OPcache once, in the supervisor (opcache.preload).
    #[arg(long, value_name = "FILE", global = true)]
    pub preload: Option<PathBuf>,

    /// User preloading runs as when lrpm-host runs as root
    /// (opcache.preload_user); default: --user's user, else nobody.
    #[arg(long, value_name = "USER", global = true)]
    pub preload_user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one worker in the foreground, forked from the booted parent (for debugging).
    Worker(WorkerArgs),
    /// Load the configuration once, print the jobs and every validation error.
    Check(CheckArgs),
    /// The cluster agent, started by the supervisor itself (not for direct
    /// use): it speaks the supervisor's typed messages on stdin/stdout.
    #[command(name = "cluster-agent", hide = true)]
    ClusterAgent(ClusterAgentArgs),
}

#[derive(Debug, Args)]
pub struct ClusterAgentArgs {
    /// etcd://HOST:PORT[,HOST:PORT...]/FARM_NAME
    #[arg(long, value_name = "URL", value_parser = crate::cluster::ClusterUrl::parse)]
    pub cluster: crate::cluster::ClusterUrl,
    /// This member's name, unique in the farm.
    #[arg(long, value_name = "NAME")]
    pub member: String,
    /// Seconds the member's lease lives without a renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub ttl: u64,
    /// Relative share of the units.
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub weight: f64,
    // TLS and credentials: the host's own --cluster-ca ... (global options).
}

#[derive(Debug, Args)]
#[command(override_usage = "lrpm-host [OPTIONS] worker CLASS [SOURCE] [--job JSON] [--id ID] [--cycles N]")]
pub struct WorkerArgs {
    /// Worker class (implements Lrpm\Worker or PHPLRPM\Worker).
    pub class: String,
    /// The farm's configuration source file, optional: the bootstrap is
    /// looked for from its folder, and without one the worker includes the
    /// file (a single-file farm), as the farm's workers do.
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// The job array as JSON; missing fields are filled (name and workerClass
    /// from CLASS, mtime 0, workerConfig []).
    #[arg(long, value_name = "JSON")]
    pub job: Option<String>,
    /// Job id reported to the worker and shown in the process title.
    #[arg(long, default_value = "debug")]
    pub id: String,
    /// Stop after N cycles.
    #[arg(long, value_name = "N")]
    pub cycles: Option<u64>,
}

#[derive(Debug, Args)]
#[command(override_usage = "lrpm-host [OPTIONS] check [--strict] SOURCE")]
pub struct CheckArgs {
    /// Configuration source, as for running a farm.
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// Treat unknown job fields as errors (exit 1).
    #[arg(long)]
    pub strict: bool,
}

/// The source of a subcommand, given after its name or before it
/// (`lrpm-host farm.php check`); both at once is a usage error.
pub fn source_for_command(before: Option<&str>, after: Option<&str>) -> Result<Option<String>, String> {
    match (before, after) {
        (Some(a), Some(b)) if a != b => Err(format!("two configuration sources given: {a} and {b}")),
        (a, b) => Ok(b.or(a).map(str::to_string)),
    }
}

/// `127.0.0.1:9464`, `[::]:9464`, or a host name resolved once at startup
/// (`localhost:9464`).
fn parse_listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| format!("{text:?} is not an address to listen on, such as 127.0.0.1:9464 or [::]:9464"))
}

fn parse_octal_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal permission mode such as 600"))
}

/// The source is a file when it names an existing path or ends in `.php`.
pub fn source_is_file(source: &str) -> bool {
    source.ends_with(".php") || Path::new(source).is_file()
}

/// Default bootstrap: the nearest vendor/autoload.php walking up from `start`.
pub fn find_bootstrap(start: &Path) -> Option<PathBuf> {
    let start = start.canonicalize().ok()?;
    start.ancestors().map(|dir| dir.join("vendor/autoload.php")).find(|p| p.is_file())
}

/// Resolves the bootstrap for a source (file or class name).
pub fn resolve_bootstrap(explicit: Option<&Path>, source: Option<&str>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(absolute(path));
    }
    let cwd = std::env::current_dir().ok()?;
    let start = match source {
        Some(s) if source_is_file(s) => absolute(Path::new(s)).parent().map(Path::to_path_buf).unwrap_or(cwd),
        _ => cwd,
    };
    find_bootstrap(&start)
}

pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|cwd| cwd.join(path)).unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_last_of_zygote_and_no_zygote_wins() {
        let uses = |args: &[&str]| {
            let argv = ["lrpm-host"].iter().chain(args).chain(&["src.php"]).copied().collect::<Vec<_>>();
            Cli::try_parse_from(argv).unwrap().farm.uses_zygote()
        };
        assert!(uses(&[]));
        assert!(!uses(&["--no-zygote"]));
        assert!(!uses(&["--zygote", "--no-zygote"]));
        assert!(uses(&["--no-zygote", "--zygote"]));
    }

    #[test]
    fn php_lrpm_interval_spellings_parse() {
        let cli = Cli::try_parse_from(["lrpm-host", "--interval=0", "My\\Source"]).unwrap();
        assert_eq!(cli.interval, 0);
        assert_eq!(cli.source.as_deref(), Some("My\\Source"));
        let cli = Cli::try_parse_from(["lrpm-host", "-i", "5", "src.php"]).unwrap();
        assert_eq!(cli.interval, 5);
    }

    #[test]
    fn worker_subcommand_parses() {
        let cli =
            Cli::try_parse_from(["lrpm-host", "worker", "App\\W", "--cycles", "3", "-d", "memory_limit=64M"]).unwrap();
        match cli.command {
            Some(Command::Worker(w)) => assert_eq!(w.cycles, Some(3)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(cli.php.define, ["memory_limit=64M"]);
    }

    /// The orders people type: options before or after CLASS, a source
    /// file after CLASS or before the subcommand.
    #[test]
    fn worker_arguments_in_every_natural_order() {
        let table: &[&[&str]] = &[
            &["worker", "App\\W", "--cycles", "3", "farm.php"],
            &["worker", "--cycles", "3", "App\\W", "farm.php"],
            &["worker", "App\\W", "farm.php", "--cycles", "3"],
            &["--bootstrap", "b.php", "worker", "App\\W", "farm.php", "--cycles=3"],
            &["farm.php", "worker", "App\\W", "--cycles", "3"],
        ];
        for args in table {
            let cli = Cli::try_parse_from(std::iter::once("lrpm-host").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Some(Command::Worker(w)) = &cli.command else { panic!("{args:?}: {:?}", cli.command) };
            assert_eq!((w.class.as_str(), w.cycles), ("App\\W", Some(3)), "{args:?}");
            let source = source_for_command(cli.source.as_deref(), w.source.as_deref()).unwrap();
            assert_eq!(source.as_deref(), Some("farm.php"), "{args:?}");
        }
        let cli = Cli::try_parse_from(["lrpm-host", "worker", "App\\W"]).unwrap();
        let Some(Command::Worker(w)) = &cli.command else { panic!() };
        assert_eq!(source_for_command(cli.source.as_deref(), w.source.as_deref()).unwrap(), None);
        assert!(source_for_command(Some("a.php"), Some("b.php")).is_err());
        assert!(Cli::try_parse_from(["lrpm-host", "worker", "App\\W", "a.php", "b.php"]).is_err());
    }

    #[test]
    fn check_takes_its_source_after_or_before_it() {
        for args in [["check", "--strict", "farm.php"], ["farm.php", "check", "--strict"]] {
            let cli = Cli::try_parse_from(std::iter::once("lrpm-host").chain(args)).unwrap();
            let Some(Command::Check(c)) = &cli.command else { panic!() };
            assert!(c.strict);
            assert_eq!(
                source_for_command(cli.source.as_deref(), c.source.as_deref()).unwrap().as_deref(),
                Some("farm.php")
            );
        }
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_mode("660").unwrap(), 0o660);
        assert!(parse_octal_mode("999").is_err());
    }
}
