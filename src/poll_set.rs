//! The descriptors of one poll(2) call, each tagged with what it belongs
//! to: parts register what they want polled, `poll` answers with the tags
//! of the ones that fired, in the order they were registered, so the
//! caller dispatches on tags rather than on positions in a list.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub struct PollSet<'fd, S> {
    fds: Vec<PollFd<'fd>>,
    sources: Vec<S>,
}

impl<S: Copy> Default for PollSet<'_, S> {
    fn default() -> Self {
        PollSet { fds: Vec::new(), sources: Vec::new() }
    }
}

impl<'fd, S: Copy> PollSet<'fd, S> {
    pub fn add(&mut self, fd: BorrowedFd<'fd>, flags: PollFlags, source: S) {
        self.fds.push(PollFd::new(fd, flags));
        self.sources.push(source);
    }

    pub fn read(&mut self, fd: BorrowedFd<'fd>, source: S) {
        self.add(fd, PollFlags::POLLIN, source);
    }

    /// Polled for writing when `write`, else for reading.
    pub fn read_or_write(&mut self, fd: BorrowedFd<'fd>, write: bool, source: S) {
        self.add(fd, if write { PollFlags::POLLOUT } else { PollFlags::POLLIN }, source);
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Waits at most `timeout`; returns the sources whose descriptor has an
    /// event (readable, writable, hung up, in error). A signal's
    /// interruption returns what fired so far: nothing.
    pub fn poll(mut self, timeout: PollTimeout) -> Result<Vec<S>, Errno> {
        match poll(&mut self.fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        Ok(self
            .fds
            .iter()
            .zip(self.sources)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, source)| source)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn answers_with_the_tags_of_what_fired_in_order() {
        let (mut a, a_peer) = UnixStream::pair().unwrap();
        let (quiet, _quiet_peer) = UnixStream::pair().unwrap();
        let (mut b, b_peer) = UnixStream::pair().unwrap();
        a.write_all(b"x").unwrap();
        b.write_all(b"y").unwrap();
        let mut set = PollSet::default();
        set.read(b_peer.as_fd(), 'b');
        set.read(quiet.as_fd(), 'q');
        set.read(a_peer.as_fd(), 'a');
        set.read_or_write(quiet.as_fd(), true, 'w');
        assert_eq!(set.poll(PollTimeout::ZERO).unwrap(), vec!['b', 'a', 'w']);
    }
}
