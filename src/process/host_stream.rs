//! The host's own stdout and stderr, written without ever blocking the
//! supervisor's loop.
//!
//! Setting O_NONBLOCK on descriptors 1 and 2 would change the file
//! description the host shares with whoever started it (a shell's
//! terminal, a container runtime's pipe) and could break them. Instead a
//! pipe or character device (terminal, /dev/null) is opened again through
//! /proc/self/fd, which gives a file description of its own that can be
//! non-blocking; a socket (journald's stdout) is written with
//! `send(MSG_DONTWAIT)`, which is non-blocking per call; a regular file
//! never blocks for long and is written as it is.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::stat::{fstat, SFlag};

enum Writer {
    /// A file description of our own, O_NONBLOCK.
    Reopened(OwnedFd),
    /// A socket: `send(MSG_DONTWAIT | MSG_NOSIGNAL)` on the original descriptor.
    Socket(RawFd),
    /// Written as it is (a regular file, or a reopening that failed).
    Plain(RawFd),
}

/// One of the host's output streams.
pub struct HostStream {
    writer: Writer,
}

impl HostStream {
    /// The stream for descriptor `fd` (1 or 2) of this process.
    pub fn open(fd: RawFd) -> HostStream {
        let kind = fstat(fd).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
        let writer = match kind {
            Ok(kind) if kind == SFlag::S_IFSOCK => Writer::Socket(fd),
            Ok(kind) if kind == SFlag::S_IFIFO || kind == SFlag::S_IFCHR => reopen(fd).unwrap_or(Writer::Plain(fd)),
            _ => Writer::Plain(fd),
        };
        HostStream { writer }
    }

    /// The descriptor to poll for POLLOUT.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.writer {
            Writer::Reopened(fd) => fd.as_fd(),
            // SAFETY: descriptors 1 and 2 stay open for the life of the process.
            Writer::Socket(fd) | Writer::Plain(fd) => unsafe { BorrowedFd::borrow_raw(*fd) },
        }
    }

    /// The descriptor to poll, for a stream that lives as long as the
    /// process (the host's, installed once and never dropped).
    pub fn static_fd(&'static self) -> BorrowedFd<'static> {
        // SAFETY: `self` is 'static, and so is the descriptor it writes to:
        // an owned one lives in `self`, and 1 and 2 are never closed.
        unsafe { BorrowedFd::borrow_raw(self.as_fd().as_raw_fd()) }
    }

    /// A descriptor of its own that children must not keep, if any.
    pub fn own_fd(&self) -> Option<RawFd> {
        match &self.writer {
            Writer::Reopened(fd) => Some(fd.as_raw_fd()),
            Writer::Socket(_) | Writer::Plain(_) => None,
        }
    }

    /// Writes what it can without waiting (`WouldBlock` when nothing could be written).
    pub fn write_some(&self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid for its length; the descriptor is open.
            let written = unsafe {
                match &self.writer {
                    Writer::Reopened(fd) => libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()),
                    Writer::Plain(fd) => libc::write(*fd, bytes.as_ptr().cast(), bytes.len()),
                    Writer::Socket(fd) => {
                        libc::send(*fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    }
                }
            };
            if written >= 0 {
                return Ok(written as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

fn reopen(fd: RawFd) -> Option<Writer> {
    let path = format!("/proc/self/fd/{fd}\0");
    // SAFETY: a NUL-terminated path; the result is checked before use.
    let reopened = unsafe {
        libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
    };
    if reopened < 0 {
        return None;
    }
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Some(Writer::Reopened(unsafe { OwnedFd::from_raw_fd(reopened) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pipe_does_not_block_a_reopened_stream() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let stream = HostStream::open(write_end.as_raw_fd());
        assert!(stream.own_fd().is_some(), "a pipe is reopened");
        let chunk = vec![b'x'; 65536];
        let mut total = 0;
        loop {
            match stream.write_some(&chunk) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(total < 64 << 20, "never blocked, never filled");
        }
        assert!(total >= 4096);
        drop(read_end);
    }
}
