//! A real redis-server (Debian's redis-server package) started by a test on
//! loopback, in a temp dir, with persistence off; killed when dropped. And
//! a minimal RESP client to read what the workers wrote.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{poll_every, secs};

/// A value of the Redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// An integer reply, or a bulk string that holds one (GET of a counter); 0 for nil.
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            Resp::Bulk(Some(b)) => {
                String::from_utf8_lossy(b).parse().unwrap_or_else(|_| panic!("not a number: {self:?}"))
            }
            Resp::Bulk(None) => 0,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(items)) => items.clone(),
            Resp::Array(None) => Vec::new(),
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

/// One connection to a Redis server.
pub struct RedisClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisClient {
    pub fn connect(port: u16) -> io::Result<RedisClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(secs(10.0)))?;
        Ok(RedisClient { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends one command, returns its reply (a Redis error reply is returned, not raised).
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        self.read()
    }

    fn read(&mut self) -> io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"));
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {line:?}"));
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad("integer"))?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    Resp::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad("array length"))?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => return Err(bad("unknown reply")),
        })
    }
}

/// redis-server on 127.0.0.1 at a free port, its files in `dir`.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts it and waits until it answers PING; fails (never skips) when
    /// redis-server is missing or does not come up.
    pub fn start(dir: &Path) -> RedisServer {
        // A port the kernel just gave out is free, unless someone takes it
        // between our close and redis' bind: then try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start redis-server (Debian's redis-server, `make deps`): {e}"));
            let up = poll_every(Duration::from_millis(20), secs(10.0), || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                let answer = RedisClient::connect(port).and_then(|mut c| c.cmd(&["PING"])).ok()?;
                (answer == Resp::Simple("PONG".into())).then_some(true)
            });
            match up {
                Some(true) => return RedisServer { port, child },
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!(
            "redis-server did not come up on loopback; its log:\n{}",
            std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
        );
    }

    pub fn client(&self) -> RedisClient {
        RedisClient::connect(self.port).unwrap_or_else(|e| panic!("connecting to redis on port {}: {e}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
