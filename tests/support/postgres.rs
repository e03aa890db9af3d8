//! A real PostgreSQL server (Debian's postgresql package) started by a test
//! on 127.0.0.1 at a free port, its cluster in a temp dir (initdb, trust
//! authentication, no fsync). PostgreSQL refuses to run as root: as root,
//! initdb and postgres run as `nobody` (setpriv), the cluster's folder
//! belonging to it. Stopped (and startable again) by the test; killed when
//! dropped.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{poll_every, run_with_timeout, secs, Output};

/// nobody:nogroup on Debian.
const NOBODY: u32 = 65534;

/// The folder of Debian's PostgreSQL binaries (/usr/lib/postgresql/N/bin).
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql (`make deps`)"))
}

pub struct PostgresServer {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster in `dir` and starts it; fails (never skips) when
    /// PostgreSQL is missing or does not come up.
    pub fn start(dir: &Path) -> PostgresServer {
        let data = dir.join("pgdata");
        fs::create_dir_all(&data).unwrap();
        let log = dir.join("postgres.log");
        File::create(&log).unwrap();
        if nix::unistd::geteuid().is_root() {
            chown(&data, Some(NOBODY), Some(NOBODY)).expect("chown pgdata to nobody");
        }
        let mut initdb = Self::command("initdb");
        initdb.args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C", "-D"]).arg(&data);
        let out = run_with_timeout(initdb, secs(120.0));
        out.assert_code(0);
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut server = PostgresServer { port, data, log, child: None };
        server.start_again();
        server
    }

    /// A PostgreSQL program, as nobody when we are root.
    fn command(program: &str) -> Command {
        let path = bin_dir().join(program);
        if nix::unistd::geteuid().is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(path);
            cmd.env("HOME", "/");
            cmd
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again, after `stop`) on the same port and waits
    /// until it answers a query.
    pub fn start_again(&mut self) {
        let log = File::options().append(true).open(&self.log).unwrap();
        let mut cmd = Self::command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.data)
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        let up = poll_every(Duration::from_millis(50), secs(30.0), || {
            if child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            let out = self.psql_raw("SELECT 1");
            (out.status.success() && out.stdout.trim() == "1").then_some(true)
        });
        if up != Some(true) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("postgres did not come up; its log:\n{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
        self.child = Some(child);
    }

    /// A fast shutdown (SIGINT: clients are disconnected), waited for.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
    }

    /// The PDO DSN of the server's `postgres` database.
    pub fn pdo_dsn(&self) -> String {
        format!("pgsql:host=127.0.0.1;port={};dbname=postgres;user=postgres", self.port)
    }

    fn psql_raw(&self, sql: &str) -> Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-c", sql]);
        run_with_timeout(cmd, secs(30.0))
    }

    /// Runs SQL with psql; fails the test on an error. Returns its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_raw(sql);
        out.assert_code(0);
        out.stdout
    }

    /// Runs statements with one psql, each in its own transaction (one -c
    /// each); returns what they print.
    pub fn psql_statements(&self, statements: &[&str]) -> String {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()]);
        for statement in statements {
            cmd.args(["-c", statement]);
        }
        let out = run_with_timeout(cmd, secs(30.0));
        out.assert_code(0);
        out.stdout
    }

    /// Runs a SQL file with psql.
    pub fn psql_file(&self, file: &Path) {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-f"])
            .arg(file);
        run_with_timeout(cmd, secs(30.0)).assert_code(0);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the test is over.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = child.wait();
        }
    }
}
