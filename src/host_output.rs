//! What the host writes to its own stdout and stderr while a farm runs:
//! its log and its workers' forwarded output, in whole lines, through one
//! buffer per stream so that the two never interleave inside a line, and
//! without blocking the supervisor's loop on a slow reader.
//!
//! The supervisor never waits for a reader (Docker's `mode=non-blocking`
//! log driver and journald's rate limit make the same choice: a stuck log
//! reader must not stop the service):
//!
//! - Worker output is forwarded only while the buffer is below
//!   `FORWARD_LIMIT`; above it the supervisor stops reading workers' pipes
//!   and they wait in their writes (back-pressure), so nothing is lost and
//!   memory stays bounded.
//! - The host's own log has `LOG_HEADROOM` more; a log line that would go
//!   past `LOG_LIMIT` is dropped and counted. Once the reader is back (the
//!   buffer under `FORWARD_LIMIT` again) one line says how many were
//!   dropped (`report_drops`), and `lrpm_log_lines_dropped_total` counts
//!   them all.

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::process::host_stream::HostStream;

/// Buffered output above which worker output waits in the workers' pipes.
pub const FORWARD_LIMIT: usize = 1 << 20;
/// Room the host's own log has above what worker output may fill.
const LOG_HEADROOM: usize = 256 << 10;
/// Buffered output past which a log line is dropped (and counted).
const LOG_LIMIT: usize = FORWARD_LIMIT + LOG_HEADROOM;

/// Log lines dropped since the host started (the metric).
static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Buffered {
    sink: &'static HostStream,
    pending: Vec<u8>,
    /// How much of `pending` is already written.
    written: usize,
    /// The reader went away (EPIPE): output is dropped from now on.
    closed: bool,
    /// Log lines dropped since the last line that said so.
    dropped_unreported: u64,
}

impl Buffered {
    fn unwritten(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Writes what the stream takes now.
    fn flush_some(&mut self) {
        while self.unwritten() > 0 && !self.closed {
            match self.sink.write_some(&self.pending[self.written..]) {
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        if self.closed || self.written == self.pending.len() {
            self.pending.clear();
            self.written = 0;
        } else if self.written > FORWARD_LIMIT {
            self.pending.drain(..self.written);
            self.written = 0;
        }
    }

    /// Waits (until `deadline`) until everything is written.
    fn flush_all(&mut self, deadline: Instant) {
        loop {
            self.flush_some();
            if self.unwritten() == 0 || self.closed {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [PollFd::new(self.sink.static_fd(), PollFlags::POLLOUT)];
            let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, ms);
        }
    }
}

struct HostOutput {
    stdout: Buffered,
    stderr: Buffered,
}

impl HostOutput {
    fn stream(&mut self, stream: Stream) -> &mut Buffered {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// The host's streams, opened once and kept for the life of the process
/// (their descriptors are polled).
static SINKS: OnceLock<[HostStream; 2]> = OnceLock::new();

/// Set while a farm runs; without it everything goes straight to 1 and 2.
static HOST_OUTPUT: Mutex<Option<HostOutput>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut HostOutput) -> T) -> Option<T> {
    let mut guard = HOST_OUTPUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.as_mut().map(f)
}

/// Routes the host's stdout and stderr through buffers from now on (once).
pub fn install() {
    let sinks = SINKS.get_or_init(|| [HostStream::open(1), HostStream::open(2)]);
    let open = |sink| Buffered { sink, pending: Vec::new(), written: 0, closed: false, dropped_unreported: 0 };
    let mut guard = HOST_OUTPUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.is_none() {
        *guard = Some(HostOutput { stdout: open(&sinks[0]), stderr: open(&sinks[1]) });
    }
}

/// Appends whole lines to a stream and writes what it takes now.
pub fn write(stream: Stream, bytes: &[u8]) {
    let routed = with(|out| {
        let buffered = out.stream(stream);
        if !buffered.closed {
            buffered.pending.extend_from_slice(bytes);
        }
        buffered.flush_some();
    });
    if routed.is_none() {
        let _ = match stream {
            Stream::Stdout => io::stdout().lock().write_all(bytes),
            Stream::Stderr => io::stderr().lock().write_all(bytes),
        };
    }
}

/// Bytes waiting for the stream's reader.
pub fn pending(stream: Stream) -> usize {
    with(|out| out.stream(stream).unwritten()).unwrap_or(0)
}

/// True while worker output should stay in the workers' pipes.
pub fn backed_up() -> bool {
    pending(Stream::Stdout) > FORWARD_LIMIT || pending(Stream::Stderr) > FORWARD_LIMIT
}

/// Writes what the stream takes now (it polled writable).
pub fn flush(stream: Stream) {
    with(|out| out.stream(stream).flush_some());
}

/// The descriptors to poll for POLLOUT while output waits, with their streams.
pub fn waiting() -> Vec<(BorrowedFd<'static>, Stream)> {
    with(|out| {
        let mut waiting = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buffered = out.stream(stream);
            if buffered.unwritten() > 0 && !buffered.closed {
                waiting.push((buffered.sink.static_fd(), stream));
            }
        }
        waiting
    })
    .unwrap_or_default()
}

/// Writes everything still buffered, waiting up to `limit` in all for slow
/// readers (the host is about to exit).
pub fn finish(limit: Duration) {
    report_dropped_lines(true);
    let deadline = Instant::now() + limit;
    with(|out| {
        out.stdout.flush_all(deadline);
        out.stderr.flush_all(deadline);
    });
}

/// Log lines dropped because stderr's reader did not keep up, since the host started.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.load(Ordering::Relaxed)
}

/// Once stderr's reader is back (the buffer under `FORWARD_LIMIT`), logs
/// how many lines were dropped while it was not.
pub fn report_drops() {
    report_dropped_lines(false);
}

/// Logs the count of dropped lines not reported yet: only once stderr's
/// reader is back, unless `even_if_blocked` (at exit, the last chance).
fn report_dropped_lines(even_if_blocked: bool) {
    let dropped = with(|out| {
        let stderr = &mut out.stderr;
        if !even_if_blocked && stderr.unwritten() >= FORWARD_LIMIT {
            return 0;
        }
        std::mem::take(&mut stderr.dropped_unreported)
    })
    .unwrap_or(0);
    if dropped > 0 {
        // The lock is released: this line goes through `LogWriter` like any other.
        tracing::warn!("lrpm-host: {} log lines dropped while stderr was blocked", thousands(dropped));
    }
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The log's writer (tracing's `MakeWriter`): into the stderr buffer while
/// a farm runs; a line that would take the buffer past `LOG_LIMIT` is
/// dropped and counted instead of waiting for the reader.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let routed = with(|out| {
            let stderr = &mut out.stderr;
            if stderr.closed {
                return;
            }
            stderr.flush_some();
            if stderr.unwritten() + bytes.len() > LOG_LIMIT {
                stderr.dropped_unreported += 1;
                LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            stderr.pending.extend_from_slice(bytes);
            stderr.flush_some();
        });
        if routed.is_none() {
            io::stderr().lock().write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
