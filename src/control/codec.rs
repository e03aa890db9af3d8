//! php-lrpm's wire format (SyMPLib/TIPC): each message is an 8-byte unsigned
//! big-endian length followed by that many bytes. Pure: no I/O.

use thiserror::Error;

pub const HEADER_LEN: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Incremental decoder: push bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    limit: u64,
}

impl FrameDecoder {
    pub fn new(limit: u64) -> Self {
        FrameDecoder { buffer: Vec::new(), limit }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, `None` if more bytes are needed, or an error
    /// as soon as a header announces more than the limit (before the body
    /// arrives, so a hostile peer cannot make us buffer it).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buffer[..HEADER_LEN]);
        let len = u64::from_be_bytes(header);
        if len > self.limit {
            return Err(FrameError::TooLarge(len));
        }
        let total = HEADER_LEN + len as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let payload = self.buffer[HEADER_LEN..total].to_vec();
        self.buffer.drain(..total);
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut decoder = FrameDecoder::new(1024);
        let mut wire = encode(b"status");
        wire.extend(encode(b""));
        for byte in &wire[..wire.len() - 1] {
            decoder.push(std::slice::from_ref(byte));
        }
        assert_eq!(decoder.next_frame().unwrap(), Some(b"status".to_vec()));
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.push(&wire[wire.len() - 1..]);
        assert_eq!(decoder.next_frame().unwrap(), Some(Vec::new()));
    }

    #[test]
    fn oversized_header_is_refused_before_the_body() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&u64::MAX.to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge(u64::MAX)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
            let mut decoder = FrameDecoder::new(1 << 20);
            let split = split.min(bytes.len());
            decoder.push(&bytes[..split]);
            while let Ok(Some(_)) = decoder.next_frame() {}
            decoder.push(&bytes[split..]);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }

        #[test]
        fn encode_then_decode_is_identity(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10)) {
            let mut decoder = FrameDecoder::new(1 << 20);
            for p in &payloads {
                decoder.push(&encode(p));
            }
            for p in &payloads {
                prop_assert_eq!(decoder.next_frame().unwrap(), Some(p.clone()));
            }
            prop_assert_eq!(decoder.pending(), 0);
        }
    }
}
