//! Messages from the configuration process: framed JSON on a pipe.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use serde::Deserialize;

use crate::control::codec::{FrameDecoder, FrameError};

/// Largest configuration message accepted from the config process.
pub const MAX_CONFIG_MESSAGE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConfigMessage {
    /// Each entry is validated alone (`job::validate_entries`), so one
    /// malformed entry cannot make the whole message unreadable.
    Configuration {
        jobs: Vec<serde_json::Value>,
    },
    Error {
        message: String,
    },
}

/// The supervisor's read end of the current config process's pipe.
pub struct ConfigChannel {
    fd: OwnedFd,
    decoder: FrameDecoder,
}

pub enum ReadOutcome {
    /// Messages decoded so far; the pipe is still open.
    Open(Vec<Result<ConfigMessage, String>>),
    /// The config process closed its end (it exited).
    Closed(Vec<Result<ConfigMessage, String>>),
}

impl ConfigChannel {
    pub fn new(fd: OwnedFd) -> Self {
        ConfigChannel { fd, decoder: FrameDecoder::new(MAX_CONFIG_MESSAGE) }
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads whatever is available without blocking.
    pub fn read_available(&mut self) -> ReadOutcome {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = loop {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) => break true,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break false,
                Err(_) => break true,
            }
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => messages.push(
                        serde_json::from_slice::<ConfigMessage>(&frame)
                            .map_err(|e| format!("unreadable message from the configuration process: {e}")),
                    ),
                    Ok(None) => break,
                    Err(FrameError::TooLarge(n)) => {
                        messages.push(Err(format!(
                            "configuration message of {n} bytes exceeds the {MAX_CONFIG_MESSAGE}-byte limit"
                        )));
                        return ReadOutcome::Closed(messages);
                    }
                }
            }
        };
        if closed {
            ReadOutcome::Closed(messages)
        } else {
            ReadOutcome::Open(messages)
        }
    }
}

/// Notices a push-mode source that does not block: configurations arriving
/// faster than `MAX_PER_SECOND`.
#[derive(Debug, Default)]
pub struct PushRate {
    recent: std::collections::VecDeque<std::time::Instant>,
    warned_at: Option<std::time::Instant>,
}

impl PushRate {
    /// The runner paces push-mode calls to 10 per second; a source that
    /// comes close to that for a whole second is not blocking.
    pub const MAX_PER_SECOND: usize = 8;
    /// A warning is repeated at most this often.
    const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

    /// Records a configuration; true when the operator should be warned now.
    pub fn arrived(&mut self, now: std::time::Instant) -> bool {
        let window = std::time::Duration::from_secs(1);
        self.recent.push_back(now);
        while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            self.recent.pop_front();
        }
        if self.recent.len() < Self::MAX_PER_SECOND {
            return false;
        }
        if self.warned_at.is_some_and(|t| now.saturating_duration_since(t) < Self::WARN_EVERY) {
            return false;
        }
        self.warned_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn push_rate_warns_once_past_ten_per_second() {
        let t0 = Instant::now();
        let mut rate = PushRate::default();
        let warnings: usize = (0..100).filter(|i| rate.arrived(t0 + Duration::from_millis(i * 20))).count();
        assert_eq!(warnings, 1);
        let mut slow = PushRate::default();
        assert!((0..100).all(|i| !slow.arrived(t0 + Duration::from_millis(i * 200))));
    }
}
