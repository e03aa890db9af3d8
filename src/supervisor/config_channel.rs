//! Messages from the configuration process: framed JSON on a pipe.

use std::os::fd::{AsRawFd, OwnedFd};

use serde::Deserialize;

use crate::control::codec::{FrameDecoder, FrameError};
use crate::job::DescribedJob;

/// Largest configuration message accepted from the config process.
pub const MAX_CONFIG_MESSAGE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConfigMessage {
    Configuration { jobs: Vec<DescribedJob> },
    Error { message: String },
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
