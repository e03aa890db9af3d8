//! lrpm-host entry point. anyhow lives only here.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use lrpm_host::cli::{self, Cli, Command};
use lrpm_host::farm::HostExit;
use lrpm_host::job::users::{self, Credentials};
use lrpm_host::php::{self, Engine, EngineSettings};
use lrpm_host::pidfile::PidFile;
use lrpm_host::{check, process, supervisor, telemetry, worker_cmd};

use lrpm_host::exit_code::host::{CONFIG as EXIT_CONFIG, SOFTWARE as EXIT_SOFTWARE, USAGE as EXIT_USAGE};

fn engine_settings(options: &cli::PhpOptions, user: Option<&Credentials>) -> EngineSettings {
    let is_root = nix::unistd::geteuid().is_root();
    // Preloading runs the preload script as this user: the one the farm's
    // PHP code runs as.
    let preload_user = options.preload_user.clone().or_else(|| user.map(|u| u.user.clone()));
    EngineSettings {
        ini_overrides: options.define.clone(),
        preload: options.preload.as_deref().map(|p| cli::absolute(p).to_string_lossy().into_owned()),
        preload_user: is_root.then(|| preload_user.unwrap_or_else(|| "nobody".to_string())),
    }
}

/// A usage error of a subcommand: one line, exit 64 (as clap's own).
fn usage_error(message: &str) -> u8 {
    eprintln!("lrpm-host: {message}");
    EXIT_USAGE
}

/// `--user`, resolved once at startup (only numbers go down the fork path).
fn farm_user(options: &cli::FarmOptions) -> Result<Option<Arc<Credentials>>, String> {
    let Some(spec) = options.user.as_deref() else { return Ok(None) };
    if !nix::unistd::geteuid().is_root() {
        return Err(format!("--user {spec}: lrpm-host must be started as root to switch users"));
    }
    users::resolve(spec).map(|c| Some(Arc::new(c))).map_err(|e| format!("--user {spec}: {e}"))
}

/// `--cluster` and its options, checked (None without `--cluster`).
/// Where the dashboard's token may come from instead of the command line.
const TOKEN_ENV: &str = "LRPM_DASHBOARD_TOKEN";
/// The shortest dashboard token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// `--dashboard` and its token (from a file, the command line or
/// LRPM_DASHBOARD_TOKEN), checked once at startup.
fn dashboard_settings(options: &cli::FarmOptions) -> Result<Option<supervisor::DashboardSettings>, String> {
    if !options.dashboard {
        if options.dashboard_token.is_some() && std::env::var_os(TOKEN_ENV).is_none() {
            return Err("--dashboard-token needs --dashboard".into());
        }
        std::env::remove_var(TOKEN_ENV);
        return Ok(None);
    }
    if options.metrics_listen.is_none() {
        return Err(
            "--dashboard is served on the --metrics-listen address: give it too (e.g. --metrics-listen 127.0.0.1:9464)"
                .into(),
        );
    }
    let token = match (&options.dashboard_token_file, &options.dashboard_token) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--dashboard-token-file {}: {e}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                tracing::warn!("--dashboard-token-file {} is readable by every user: chmod 600 it", path.display());
            }
            Some(text.trim().to_string())
        }
        (None, Some(token)) => Some(token.trim().to_string()),
        (None, None) => None,
    };
    // Workers run user code and inherit the environment: the token is not
    // theirs to see. An upgrade's exec gives it to the next image again.
    let token_from_env = std::env::var_os(TOKEN_ENV).is_some();
    std::env::remove_var(TOKEN_ENV);
    if let Some(token) = &token {
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(format!(
                "the dashboard token must be at least {MIN_TOKEN_LEN} characters (`openssl rand -hex 16`)"
            ));
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(
                "the dashboard token must be printable ASCII without spaces (it travels in an HTTP header)".into()
            );
        }
    }
    Ok(Some(supervisor::DashboardSettings { token, token_from_env }))
}

fn cluster_settings(options: &cli::FarmOptions) -> Result<Option<supervisor::ClusterSettings>, String> {
    let Some(url) = &options.cluster else { return Ok(None) };
    let member = match &options.cluster_member {
        Some(name) => name.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| format!("--cluster: cannot read the host name ({e}); give --cluster-member"))?;
            format!("{}-{}", host.trim(), std::process::id())
        }
    };
    lrpm_host::cluster::check_member_name(&member).map_err(|e| format!("--cluster-member: {e}"))?;
    let weight = options.cluster_weight;
    if !(weight.is_finite() && weight > 0.0 && weight <= 1000.0) {
        return Err(format!("--cluster-weight {weight}: must be above 0 and at most 1000"));
    }
    options.etcd_client.check(url)?;
    Ok(Some(supervisor::ClusterSettings {
        url: url.to_string(),
        member,
        ttl: std::time::Duration::from_secs(options.cluster_ttl),
        weight,
        client_args: options.etcd_client.to_args(),
    }))
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let argv: Vec<String> = std::env::args().collect();
    let user = match farm_user(&cli.farm) {
        Ok(user) => user,
        Err(e) => return Ok(usage_error(&e)),
    };
    let settings = engine_settings(&cli.php, user.as_deref());
    if let Some(preload) = &settings.preload {
        anyhow::ensure!(std::path::Path::new(preload).is_file(), "--preload {preload}: no such file");
    }
    match cli.command {
        Some(Command::ClusterAgent(args)) => {
            if let Err(e) = lrpm_host::cluster::check_member_name(&args.member) {
                return Ok(usage_error(&e));
            }
            if !(args.weight.is_finite() && args.weight > 0.0 && args.weight <= 1000.0) {
                return Ok(usage_error(&format!("--weight {}: must be above 0 and at most 1000", args.weight)));
            }
            let ttl = std::time::Duration::from_secs(args.ttl);
            let client = &cli.farm.etcd_client;
            let tls = match args.cluster.tls.then(|| lrpm_host::cluster::tls::client_config(&client.tls_files())) {
                Some(Err(e)) => return Ok(usage_error(&e)),
                Some(Ok(config)) => Some(config),
                None => None,
            };
            let user = match client.credentials() {
                Ok(user) => user,
                Err(e) => return Ok(usage_error(&e)),
            };
            Ok(lrpm_host::cluster::agent::run(lrpm_host::cluster::agent::AgentSettings {
                etcd: lrpm_host::cluster::etcd::EtcdOptions {
                    endpoints: args.cluster.endpoints,
                    user,
                    request_timeout: (ttl / 4).max(std::time::Duration::from_millis(500)),
                    tls,
                },
                farm: args.cluster.farm,
                member: args.member,
                ttl,
                weight: args.weight,
            }))
        }
        Some(Command::Worker(args)) => {
            let source = match cli::source_for_command(cli.source.as_deref(), args.source.as_deref()) {
                Ok(source) => source,
                Err(e) => return Ok(usage_error(&e)),
            };
            let job = match worker_cmd::debug_job(&args.class, &args.id, args.job.as_deref()) {
                Ok(job) => job,
                Err(e) => return Ok(usage_error(&e.to_string())),
            };
            if let Some(source) = source.as_deref().filter(|s| !std::path::Path::new(s).is_file()) {
                return Ok(usage_error(&format!(
                    "{source}: no such source file (SOURCE after CLASS is the farm's file)"
                )));
            }
            let bootstrap = cli::resolve_bootstrap(cli.php.bootstrap.as_deref(), source.as_deref());
            let source_file = source.as_deref().map(|s| cli::absolute(std::path::Path::new(s)));
            process::block_handled_signals()?;
            let engine = Engine::boot(&settings).context("starting PHP")?;
            let code =
                worker_cmd::run(&engine, &job, bootstrap.as_deref(), source_file.as_deref(), args.cycles, &argv, user)?;
            Ok(code.clamp(0, 255) as u8)
        }
        Some(Command::Check(args)) => {
            let source = match cli::source_for_command(cli.source.as_deref(), args.source.as_deref()) {
                Ok(Some(source)) => source,
                Ok(None) => return Ok(usage_error("check needs a configuration SOURCE")),
                Err(e) => return Ok(usage_error(&e)),
            };
            let bootstrap = cli::resolve_bootstrap(cli.php.bootstrap.as_deref(), Some(&source));
            let engine = Engine::boot(&settings).context("starting PHP")?;
            let checked = check::run(
                &engine,
                &source,
                bootstrap.as_deref(),
                &argv,
                args.strict,
                &cli.farm.job_defaults.0.clone(),
                user,
            )?;
            Ok(match checked.verdict {
                check::Verdict::Valid => 0,
                check::Verdict::Invalid => 1,
                // As a Unix tool killed by SIGPIPE would report it.
                check::Verdict::OutputClosed => 128 + libc::SIGPIPE as u8,
            })
        }
        None if std::env::var_os(lrpm_host::supervisor::UPGRADE_CHECK_ENV).is_some() => {
            // `lrpmctl upgrade` runs the binary on disk this way first: the
            // same options, PHP booted and the configuration loaded once,
            // then the report on the descriptor the running host gave it,
            // before the running host replaces itself with it.
            let source = cli.source.clone().context("missing SOURCE")?;
            let bootstrap = cli::resolve_bootstrap(cli.php.bootstrap.as_deref(), Some(&source));
            let engine = Engine::boot(&settings).context("starting PHP")?;
            let checked = check::run(
                &engine,
                &source,
                bootstrap.as_deref(),
                &argv,
                false,
                &cli.farm.job_defaults.0.clone(),
                user,
            )?;
            supervisor::upgrade::send_trial_report(checked.jobs).context("sending the trial's report")?;
            Ok(0)
        }
        None => {
            let source = cli.source.clone().context("missing SOURCE")?;
            let bootstrap = cli::resolve_bootstrap(cli.php.bootstrap.as_deref(), Some(&source));
            let config = supervisor::FarmConfig {
                source_is_file: cli::source_is_file(&source),
                source: if cli::source_is_file(&source) {
                    cli::absolute(std::path::Path::new(&source)).to_string_lossy().into_owned()
                } else {
                    source
                },
                interval_seconds: cli.interval,
                bootstrap,
                control_socket: cli.farm.control_socket.clone().or_else(lrpm_host::control::server::socket_from_env),
                control_socket_mode: cli.farm.control_socket_mode,
                argv,
                close_in_children: Vec::new(),
                subreaper: cli.farm.subreaper,
                job_defaults: cli.farm.job_defaults.0.clone(),
                capture_output: cli.farm.worker_output == lrpm_host::cli::WorkerOutput::Capture,
                metrics_listen: cli.farm.metrics_listen,
                dashboard: match dashboard_settings(&cli.farm) {
                    Ok(settings) => settings,
                    Err(e) => return Ok(usage_error(&e)),
                },
                zygote: cli.farm.uses_zygote(),
                program: std::env::current_exe().context("finding this program's path")?,
                upgrade_trial_timeout: std::time::Duration::from_secs(cli.farm.upgrade_trial_timeout),
                user,
                cluster: match cluster_settings(&cli.farm) {
                    Ok(settings) => settings,
                    Err(e) => return Ok(usage_error(&e)),
                },
            };
            if config.source_is_file && !std::path::Path::new(&config.source).is_file() {
                anyhow::bail!("configuration source {} does not exist", config.source);
            }
            // Held until main returns: the file is removed on a clean exit.
            let pidfile = cli.farm.pidfile.as_deref().map(PidFile::acquire).transpose()?;
            let mut config = config;
            config.close_in_children.extend(pidfile.iter().flat_map(PidFile::raw_fds));
            // From here on a SIGTERM is an event for the loop, never a crash
            // that leaves the control socket behind.
            process::block_handled_signals()?;
            let engine = Engine::boot(&settings).context("starting PHP")?;
            Ok(match supervisor::run(&engine, config)? {
                HostExit::Clean => 0,
                HostExit::ConfigNeverLoaded => EXIT_CONFIG,
                HostExit::EssentialJobFailed => lrpm_host::exit_code::host::ESSENTIAL_JOB_FAILED,
            })
        }
    }
}

fn main() -> ExitCode {
    // Before anything opens: descriptors the host was started with are not
    // passed on to its children (they are its parent's, maybe root's).
    process::record_inherited_fds();
    // First: an upgrade's new image that fails from here on, even at its
    // command line, rolls back to the previous image instead of ending the farm.
    supervisor::upgrade::prepare_takeover();
    php::init_process_title();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            supervisor::upgrade::roll_back(&format!("its command line was refused: {e}"));
            return ExitCode::from(code);
        }
    };
    // A farm's log file, in place of stdout and stderr before anything is
    // written (not for the upgrade's trial run: its report is not the log).
    if let (None, Some(path)) = (&cli.command, &cli.farm.log_file) {
        if std::env::var_os(supervisor::UPGRADE_CHECK_ENV).is_none() {
            if let Err(e) = lrpm_host::log_file::install(path) {
                eprintln!("lrpm-host: {e}");
                supervisor::upgrade::roll_back(&e.to_string());
                return ExitCode::from(EXIT_SOFTWARE);
            }
        }
    }
    if let Err(e) = telemetry::init(cli.farm.log_format, cli.farm.log_level.as_deref()) {
        eprintln!("lrpm-host: {e}");
        supervisor::upgrade::roll_back(&e);
        return ExitCode::from(EXIT_USAGE);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lrpm-host: {e:#}");
            supervisor::upgrade::roll_back(&format!("{e:#}"));
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}
