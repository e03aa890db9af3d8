//! Workers' stdout and stderr (`--worker-output=capture`, the default):
//! each child writes into pipes of its own; the supervisor reads them
//! (through one epoll descriptor in its poll set, so a farm of thousands of
//! workers adds one descriptor to each poll) and forwards whole lines to
//! the host's stdout and stderr, prefixed with the job's name and slot
//! (`[orders#2] ...`), or as JSON lines with `--log-format json`.
//!
//! - Lines of different workers never interleave: a line is forwarded only
//!   once complete (or once it reaches `MAX_LINE`, when it is forwarded in
//!   pieces, every piece after the first marked as a continuation).
//! - Back-pressure: while the host's output buffer is full
//!   (`host_output::backed_up`), pipes are not read; a chatty worker then
//!   waits in its own write, loses nothing and slows no one else down.
//! - Fairness: each ready pipe gets one read of at most `READ_CHUNK` per
//!   loop turn, and a turn reads at most `EVENTS_PER_TURN` pipes.
//! - Pacing: after a read that found output, pipes are read again only
//!   `READ_INTERVAL` later, so a worker
//!   printing many small lines is read in batches instead of waking the
//!   supervisor for every write.
//! - Nothing written before a worker dies is lost: a reaped worker's pipes
//!   are drained before its exit is handled (its last words come before the
//!   supervisor's line about the exit), and a pipe is read until EOF, which
//!   comes only once every process holding it is gone.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::host_output::{self, Stream};
use crate::job::JobId;
use crate::telemetry::LogFormat;

/// A longer line is forwarded in pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;
/// The most one pipe is read per loop turn.
const READ_CHUNK: usize = 64 * 1024;
/// The most pipes read per loop turn.
const EVENTS_PER_TURN: usize = 64;
/// After reading output, pipes wait this long before the next read: small
/// writes pile up in the pipes (64 KiB each) and are read in one go.
const READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// At a reap, the most of a worker's output read before its exit is handled.
const DRAIN_AT_EXIT: usize = 4 << 20;

/// Whose output a pipe carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Worker { id: JobId, name: String, slot: u32, pid: i32 },
    Config { pid: i32 },
    Zygote { pid: i32 },
}

impl Source {
    fn pid(&self) -> i32 {
        match self {
            Source::Worker { pid, .. } | Source::Config { pid } | Source::Zygote { pid } => *pid,
        }
    }
}

struct Pipe {
    fd: OwnedFd,
    source: Arc<Source>,
    stream: Stream,
    /// Bytes of a line not complete yet.
    partial: Vec<u8>,
    /// The next piece continues a line already forwarded in part.
    continuing: bool,
}

pub struct OutputRouter {
    epoll: Epoll,
    pipes: HashMap<RawFd, Pipe>,
    by_pid: HashMap<i32, Vec<RawFd>>,
    format: LogFormat,
    buffer: Vec<u8>,
    /// Lines (and pieces of long lines) forwarded so far.
    pub lines_forwarded: u64,
    /// Pipes are read again from this moment (pacing).
    paused_until: Option<Instant>,
}

impl OutputRouter {
    pub fn new(format: LogFormat) -> Result<OutputRouter, Errno> {
        Ok(OutputRouter {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            pipes: HashMap::new(),
            by_pid: HashMap::new(),
            format,
            buffer: vec![0; READ_CHUNK],
            lines_forwarded: 0,
            paused_until: None,
        })
    }

    /// Ends a pause that is over (at the start of a loop turn).
    pub fn resume(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
    }

    /// The descriptor to poll (readable when some pipe is), unless reading
    /// is paused or the host's own output is backed up.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        (self.paused_until.is_none() && !host_output::backed_up()).then(|| self.epoll.0.as_fd())
    }

    /// When a pause ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Poll found pipes ready: reads them, then pauses for
    /// `READ_INTERVAL` if they had output.
    pub fn ready(&mut self, now: Instant) {
        if self.read_ready() > 0 {
            self.paused_until = Some(now + READ_INTERVAL);
        }
    }

    /// Starts reading a child's pipes (read ends, non-blocking).
    pub fn register(&mut self, source: Source, stdout: OwnedFd, stderr: OwnedFd) {
        let source = Arc::new(source);
        for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            let raw = fd.as_raw_fd();
            let event = EpollEvent::new(EpollFlags::EPOLLIN, raw as u64);
            if let Err(e) = self.epoll.add(&fd, event) {
                tracing::warn!("cannot watch the output of pid {}: {e}; it is discarded", source.pid());
                continue;
            }
            self.by_pid.entry(source.pid()).or_default().push(raw);
            self.pipes
                .insert(raw, Pipe { fd, source: Arc::clone(&source), stream, partial: Vec::new(), continuing: false });
        }
    }

    /// Reads the pipes that are ready, one chunk each, at most a turn's
    /// worth; returns how many bytes it read.
    fn read_ready(&mut self) -> usize {
        let mut events = [EpollEvent::empty(); EVENTS_PER_TURN];
        let ready = match self.epoll.wait(&mut events, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(Errno::EINTR) => return 0,
            Err(e) => {
                tracing::error!("reading workers' output: epoll_wait: {e}");
                return 0;
            }
        };
        let mut read = 0;
        for event in &events[..ready] {
            if host_output::backed_up() {
                break;
            }
            read += self.read_once(event.data() as RawFd).unwrap_or(0);
        }
        read
    }

    /// The read ends of a child's stdout and stderr pipes, if still open.
    pub fn pipes_of(&self, pid: i32) -> [Option<RawFd>; 2] {
        let mut pipes = [None, None];
        for fd in self.by_pid.get(&pid).into_iter().flatten() {
            if let Some(pipe) = self.pipes.get(fd) {
                let index = if pipe.stream == Stream::Stdout { 0 } else { 1 };
                pipes[index] = Some(*fd);
            }
        }
        pipes
    }

    /// Everything a reaped child left in its pipes (bounded), so that its
    /// last lines come before the supervisor's line about its exit.
    pub fn drain(&mut self, pid: i32) {
        let fds = self.by_pid.get(&pid).cloned().unwrap_or_default();
        for fd in fds {
            let mut read = 0;
            // While the host's output is backed up the rest stays in the
            // pipe (still watched) and is forwarded once there is room.
            while read < DRAIN_AT_EXIT && !host_output::backed_up() {
                match self.read_once(fd) {
                    Some(n) if n > 0 => read += n,
                    _ => break,
                }
            }
        }
    }

    /// Reads until every pipe is at EOF or would block (the host is exiting:
    /// its children are gone).
    pub fn drain_all(&mut self) {
        let fds: Vec<RawFd> = self.pipes.keys().copied().collect();
        for fd in fds {
            while let Some(n) = self.read_once(fd) {
                if n == 0 {
                    break;
                }
            }
        }
        for pipe in self.pipes.values_mut() {
            Self::flush_partial(pipe, self.format, &mut self.lines_forwarded);
        }
    }

    /// One read of one pipe: Some(bytes read), Some(0) at EOF (the pipe is
    /// then closed), None when it would block or is unknown.
    fn read_once(&mut self, fd: RawFd) -> Option<usize> {
        let pipe = self.pipes.get_mut(&fd)?;
        let n = match nix::unistd::read(pipe.fd.as_raw_fd(), &mut self.buffer) {
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return None,
            Err(_) => 0,
        };
        if n == 0 {
            Self::flush_partial(pipe, self.format, &mut self.lines_forwarded);
            self.close(fd);
            return Some(0);
        }
        let (format, lines) = (self.format, &mut self.lines_forwarded);
        pipe.partial.extend_from_slice(&self.buffer[..n]);
        Self::forward_complete(pipe, format, lines);
        Some(n)
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(pipe) = self.pipes.remove(&fd) {
            let _ = self.epoll.delete(&pipe.fd);
            let pid = pipe.source.pid();
            if let Some(fds) = self.by_pid.get_mut(&pid) {
                fds.retain(|f| *f != fd);
                if fds.is_empty() {
                    self.by_pid.remove(&pid);
                }
            }
        }
    }

    /// Forwards every complete line, and pieces of a line that grew past `MAX_LINE`.
    fn forward_complete(pipe: &mut Pipe, format: LogFormat, lines: &mut u64) {
        let out = take_records(&mut pipe.partial, &mut pipe.continuing, &pipe.source, pipe.stream, format, lines);
        if !out.is_empty() {
            host_output::write(pipe.stream, &out);
        }
    }

    /// A last line without a newline (the pipe ended).
    fn flush_partial(pipe: &mut Pipe, format: LogFormat, lines: &mut u64) {
        if pipe.partial.is_empty() {
            return;
        }
        let mut out = Vec::new();
        render(&pipe.source, pipe.stream, &pipe.partial, pipe.continuing, format, &mut out);
        *lines += 1;
        pipe.partial.clear();
        pipe.continuing = false;
        host_output::write(pipe.stream, &out);
    }
}

/// Renders the complete lines at the front of `partial` (and pieces of a
/// line of `MAX_LINE` or more, complete or not) and removes them from it.
fn take_records(
    partial: &mut Vec<u8>,
    continuing: &mut bool,
    source: &Source,
    stream: Stream,
    format: LogFormat,
    lines: &mut u64,
) -> Vec<u8> {
    let mut start = 0;
    let mut out = Vec::new();
    loop {
        let newline = partial[start..].iter().position(|b| *b == b'\n').map(|n| start + n);
        let line_end = newline.unwrap_or(partial.len());
        if line_end - start >= MAX_LINE {
            // Too long for one record, complete or not: a piece of it.
            let end = start + utf8_boundary(&partial[start..start + MAX_LINE]);
            render(source, stream, &partial[start..end], *continuing, format, &mut out);
            *continuing = true;
            *lines += 1;
            start = end;
            continue;
        }
        let Some(end) = newline else { break };
        render(source, stream, &partial[start..end], *continuing, format, &mut out);
        *continuing = false;
        *lines += 1;
        start = end + 1;
    }
    partial.drain(..start);
    out
}

/// The length of the longest prefix of `piece` that does not end inside a
/// UTF-8 sequence (so a split line stays valid text on both sides).
fn utf8_boundary(piece: &[u8]) -> usize {
    let len = piece.len();
    for back in 1..=3.min(len) {
        let byte = piece[len - back];
        if byte & 0b1100_0000 == 0b1100_0000 {
            // A lead byte: does its sequence fit?
            let width = if byte >= 0xF0 {
                4
            } else if byte >= 0xE0 {
                3
            } else {
                2
            };
            return if back >= width { len } else { len - back };
        }
        if byte & 0b1000_0000 == 0 {
            return len;
        }
    }
    len
}

fn render(source: &Source, stream: Stream, line: &[u8], continuation: bool, format: LogFormat, out: &mut Vec<u8>) {
    match format {
        LogFormat::Text => {
            match source {
                Source::Worker { name, slot, .. } => {
                    out.push(b'[');
                    out.extend_from_slice(crate::escape::controls(name).as_bytes());
                    out.extend_from_slice(format!("#{slot}").as_bytes());
                }
                Source::Config { .. } => out.extend_from_slice(b"[config"),
                Source::Zygote { .. } => out.extend_from_slice(b"[zygote"),
            }
            out.extend_from_slice(if continuation { b" +] " } else { b"] " });
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        LogFormat::Json => {
            let text = String::from_utf8_lossy(line);
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let mut record = match source {
                Source::Worker { id, name, slot, pid } => serde_json::json!({
                    "job": id, "name": name, "slot": slot, "pid": pid, "stream": stream, "line": text,
                }),
                Source::Config { pid } => serde_json::json!({
                    "config": true, "pid": pid, "stream": stream, "line": text,
                }),
                Source::Zygote { pid } => serde_json::json!({
                    "zygote": true, "pid": pid, "stream": stream, "line": text,
                }),
            };
            if continuation {
                record["continuation"] = serde_json::Value::Bool(true);
            }
            if serde_json::to_writer(&mut *out, &record).is_ok() {
                out.push(b'\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> Source {
        Source::Worker { id: JobId::Int(7), name: "orders".into(), slot: 2, pid: 42 }
    }

    #[test]
    fn text_lines_carry_the_job_name_and_slot() {
        let mut out = Vec::new();
        render(&worker(), Stream::Stderr, b"PHP Warning: x", false, LogFormat::Text, &mut out);
        render(&worker(), Stream::Stderr, b"rest", true, LogFormat::Text, &mut out);
        render(&Source::Config { pid: 1 }, Stream::Stdout, b"hello", false, LogFormat::Text, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "[orders#2] PHP Warning: x\n[orders#2 +] rest\n[config] hello\n");
    }

    #[test]
    fn json_lines_parse_and_name_the_process() {
        let mut out = Vec::new();
        render(&worker(), Stream::Stdout, b"caf\xc3\xa9 \xff", true, LogFormat::Json, &mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["job"], 7);
        assert_eq!((value["slot"].clone(), value["pid"].clone()), (2.into(), 42.into()));
        assert_eq!(value["stream"], "stdout");
        assert_eq!(value["line"], "café \u{fffd}");
        assert_eq!(value["continuation"], true);
    }

    #[test]
    fn a_long_line_is_cut_in_marked_pieces_whether_or_not_its_newline_came() {
        let (mut lines, mut continuing) = (0, false);
        let long = |n: usize| vec![b'x'; n];
        // (bytes arriving, records expected, bytes left waiting)
        let mut partial = [long(MAX_LINE * 2 + 10), b"\nshort\ntail".to_vec()].concat();
        let out = take_records(&mut partial, &mut continuing, &worker(), Stream::Stdout, LogFormat::Text, &mut lines);
        let text = String::from_utf8(out).unwrap();
        let records: Vec<&str> = text.lines().collect();
        assert_eq!(records.len(), 4, "three pieces and the short line");
        assert!(records[0].starts_with("[orders#2] x") && records[0].len() == "[orders#2] ".len() + MAX_LINE);
        assert!(records[1].starts_with("[orders#2 +] x") && records[2] == format!("[orders#2 +] {}", "x".repeat(10)));
        assert_eq!(records[3], "[orders#2] short");
        assert_eq!((partial, continuing, lines), (b"tail".to_vec(), false, 4));
        // Without its newline yet: full pieces go, the rest waits.
        let mut partial = long(MAX_LINE + 5);
        let out = take_records(&mut partial, &mut continuing, &worker(), Stream::Stdout, LogFormat::Text, &mut lines);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
        assert_eq!((partial.len(), continuing), (5, true));
    }

    #[test]
    fn splits_never_cut_a_utf8_sequence() {
        assert_eq!(utf8_boundary(b"abc"), 3);
        assert_eq!(utf8_boundary("aé".as_bytes()), 3);
        assert_eq!(utf8_boundary(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_boundary(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_boundary("a€".as_bytes()), 4);
    }
}
