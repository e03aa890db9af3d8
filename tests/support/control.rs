//! A raw control-socket client: php-lrpm's frames (an 8-byte big-endian
//! length, then the bytes).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one framed response.
pub fn read_frame(stream: &mut UnixStream) -> io::Result<String> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header);
    if len > 64 * 1024 * 1024 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("response length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    String::from_utf8(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Connects, sends one request, returns the response (5 s timeouts).
pub fn exchange(socket: &Path, request: &str) -> io::Result<String> {
    exchange_waiting(socket, request, Duration::from_secs(5))
}

/// The same, waiting up to `timeout` for the answer.
pub fn exchange_waiting(socket: &Path, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&frame(request.as_bytes()))?;
    read_frame(&mut stream)
}

/// Bytes written to `stream` that its peer has not read yet (SIOCOUTQ):
/// 0 once the server has consumed everything the client sent.
pub fn unread_by_peer(stream: &UnixStream) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "ioctl(SIOCOUTQ): {}", io::Error::last_os_error());
    queued as usize
}

/// Waits until the peer closes `stream` (EOF or reset); false on timeout.
pub fn closed_by_peer(stream: &mut UnixStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}
