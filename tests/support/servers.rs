//! Servers from Debian's packages that a test starts on 127.0.0.1 at a free
//! port, in the foreground, killed when dropped: gearmand
//! (gearman-job-server), beanstalkd, rabbitmq-server, and a silent TCP
//! server (accepts, then never answers) in the test process itself.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{poll_every, secs};

/// A free port on loopback (the kernel's pick; someone may take it before
/// the server binds it: the start then tries another).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A server process listening on `port`.
pub struct Daemon {
    pub port: u16,
    child: Child,
}

impl Daemon {
    /// Starts `program` with the arguments `args(port)` gives, and waits until
    /// the port accepts connections; fails (never skips) when the program is
    /// missing (`package` names what `make deps` installs) or does not come up.
    pub fn start(program: &str, package: &str, dir: &Path, args: impl Fn(u16) -> Vec<String>) -> Daemon {
        for _ in 0..5 {
            let port = free_port();
            if let Some(daemon) = Daemon::try_start(program, package, dir, port, args(port)) {
                return daemon;
            }
        }
        panic!(
            "{program} did not come up on loopback; its log:\n{}",
            std::fs::read_to_string(dir.join(format!("{program}.log"))).unwrap_or_default()
        );
    }

    /// Starts it on a given port, or panics with its log.
    pub fn start_on(program: &str, package: &str, dir: &Path, port: u16, args: Vec<String>) -> Daemon {
        Daemon::try_start(program, package, dir, port, args).unwrap_or_else(|| {
            panic!(
                "{program} did not come up again on port {port}; its log:\n{}",
                std::fs::read_to_string(dir.join(format!("{program}.log"))).unwrap_or_default()
            )
        })
    }

    fn try_start(program: &str, package: &str, dir: &Path, port: u16, args: Vec<String>) -> Option<Daemon> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{program}.log")))
            .expect("server log");
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (Debian's {package}, `make deps`): {e}"));
        let up = poll_every(Duration::from_millis(20), secs(20.0), || {
            if child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        });
        if up == Some(true) {
            return Some(Daemon { port, child });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// gearmand with one thread and no persistence.
    pub fn gearmand(dir: &Path) -> Daemon {
        let log = dir.join("gearmand-own.log").to_string_lossy().into_owned();
        Daemon::start("gearmand", "gearman-job-server", dir, move |port| {
            ["--listen=127.0.0.1", &format!("--port={port}"), "--threads=1", &format!("--log-file={log}")]
                .map(String::from)
                .to_vec()
        })
    }

    /// etcd (Debian's etcd-server), one member, its data in `dir`. Started
    /// again on the same `dir` and `port` it keeps its data (`restart`).
    pub fn etcd(dir: &Path) -> Daemon {
        let data = dir.join("etcd-data").to_string_lossy().into_owned();
        Daemon::start("etcd", "etcd-server", dir, move |port| etcd_args(&data, port))
    }

    /// The same etcd again after `stop`, on its port and data.
    pub fn restart_etcd(&mut self, dir: &Path) {
        let data = dir.join("etcd-data").to_string_lossy().into_owned();
        let again = Daemon::start_on("etcd", "etcd-server", dir, self.port, etcd_args(&data, self.port));
        *self = again;
    }

    /// Kills the server (SIGKILL); `restart_etcd` brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's pid (to SIGSTOP it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// beanstalkd, in memory.
    pub fn beanstalkd(dir: &Path) -> Daemon {
        Daemon::start("beanstalkd", "beanstalkd", dir, |port| {
            ["-l", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec()
        })
    }
}

fn etcd_args(data: &str, port: u16) -> Vec<String> {
    let peer = free_port();
    let client = format!("http://127.0.0.1:{port}");
    [
        "--name=test",
        &format!("--data-dir={data}"),
        &format!("--listen-client-urls={client}"),
        &format!("--advertise-client-urls={client}"),
        &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--initial-cluster=test=http://127.0.0.1:{peer}"),
        "--log-level=warn",
    ]
    .map(String::from)
    .to_vec()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts every connection and never answers (its clients wait for a
/// reply that never comes); the connections stay open while the test runs.
pub struct SilentServer {
    pub port: u16,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().expect("its address").port();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Read what the client sends (so it never blocks writing),
                // answer nothing.
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        SilentServer { port }
    }
}

/// rabbitmq-server (Debian's rabbitmq-server) on 127.0.0.1 at a free port,
/// with its own node name, distribution port, epmd port, database and logs
/// in `dir`, so that it never meets another broker on the machine. Slow to
/// start (seconds): start it once per test binary. Stopped when dropped:
/// its process group (the script and the Erlang VM) and its epmd.
pub struct RabbitServer {
    pub port: u16,
    epmd_port: u16,
    child: Child,
}

impl RabbitServer {
    pub fn start(dir: &Path) -> RabbitServer {
        use std::os::unix::process::CommandExt;
        let (port, dist_port, epmd_port) = (free_port(), free_port(), free_port());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let log = dir.join("rabbitmq-server.log");
        // The script itself, not /usr/sbin's wrapper: as root that one
        // switches to the rabbitmq user, which cannot write to `dir`.
        let mut child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", format!("lrpm-test-{}-{port}@localhost", std::process::id()))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("rabbitmq log"))
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rabbitmq-server (Debian's rabbitmq-server, `make deps`): {e}"));
        let up = poll_every(Duration::from_millis(50), secs(120.0), || {
            if child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        });
        let server = RabbitServer { port, epmd_port, child };
        if up != Some(true) {
            drop(server);
            panic!(
                "rabbitmq-server did not come up on loopback; its output:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        server
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // The epmd it started runs detached and serves only this broker's
        // port; it refuses to end while the broker's VM is still registered
        // (until the kernel closed its connection).
        poll_every(Duration::from_millis(50), secs(10.0), || {
            let out = Command::new("epmd")
                .arg("-kill")
                .env("ERL_EPMD_PORT", self.epmd_port.to_string())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            // "Killed", or nothing listens there any more.
            (text.contains("Killed") || TcpStream::connect(("127.0.0.1", self.epmd_port)).is_err()).then_some(())
        });
    }
}
