//! Servers from Debian's packages that a test starts on 127.0.0.1 at a free
//! port, in the foreground, killed when dropped: gearmand
//! (gearman-job-server), beanstalkd, and a silent TCP server (accepts, then
//! never answers) in the test process itself.

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
        let log = dir.join(format!("{program}.log"));
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(program)
                .args(args(port))
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("server log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {program} (Debian's {package}, `make deps`): {e}"));
            let up = poll_every(Duration::from_millis(20), secs(20.0), || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
            });
            if up == Some(true) {
                return Daemon { port, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "{program} did not come up on loopback; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
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

    /// beanstalkd, in memory.
    pub fn beanstalkd(dir: &Path) -> Daemon {
        Daemon::start("beanstalkd", "beanstalkd", dir, |port| {
            ["-l", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec()
        })
    }
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
