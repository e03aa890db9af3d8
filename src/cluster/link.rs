//! The supervisor's end of the agent's socketpair, as pure state: bytes in,
//! typed messages out, and the lease's fence. The supervisor polls the
//! socket (non-blocking, never waiting for the agent) and feeds what it
//! reads here; what it writes waits in a bounded outbox.
//!
//! The fence: the agent reports each answered keepalive with the moment it
//! was *sent* (`FromAgent::Lease`), which is before etcd renewed the lease,
//! so the lease lives at least `ttl` past it. With no renewal for half the
//! TTL every unit is revoked (SIGTERM); its process is SIGKILLed one
//! second before the lease can expire, the earliest moment another member
//! may claim the unit. So two members never run one unit at once, whatever
//! the network does, provided both clocks run at the same rate (they are
//! CLOCK_MONOTONIC on each host; etcd's TTL is measured on its leader).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::messages::{self, FromAgent, ToAgent};

/// How far ahead of the lease's end the last SIGKILL goes out.
pub const KILL_MARGIN: Duration = Duration::from_secs(1);

/// At most this much unread input per line: the agent's lines are short.
const MAX_LINE: usize = 4 << 20;

/// At most this much waiting to be written: a unit list of 10,000 slots is
/// about 200 KiB. Past it the link is broken (the agent is stuck).
const MAX_OUTBOX: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct Link {
    inbox: Vec<u8>,
    outbox: VecDeque<u8>,
    /// The lease lives at least until then (from the last `Lease`).
    lease_until: Option<Instant>,
    ttl: Duration,
    /// Units were revoked for want of a renewal; a renewal lifts it.
    fenced: bool,
}

/// A link as it crosses `lrpmctl upgrade`'s exec (the agent outlives it,
/// like the workers): the bytes in flight both ways and the fence, with the
/// lease's end as a CLOCK_MONOTONIC reading, which the exec does not reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedLink {
    /// Read from the agent: the start of a line not complete yet.
    pub unread: Vec<u8>,
    /// Queued for the agent, not written yet.
    pub unsent: Vec<u8>,
    /// The lease lives at least until then (CLOCK_MONOTONIC, ns).
    pub lease_until_ns: Option<u64>,
    pub ttl_ms: u64,
    pub fenced: bool,
}

/// What a line from the agent means to the supervisor.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Message(FromAgent),
    /// Not a message (a bug, or a foreign program on the socket).
    Garbage(String),
}

impl Link {
    pub fn new(ttl: Duration) -> Link {
        Link { ttl, ..Link::default() }
    }

    /// The link to hand over; `now` and `now_ns` are one moment on both clocks.
    pub fn save(&self, now: Instant, now_ns: u64) -> SavedLink {
        SavedLink {
            unread: self.inbox.clone(),
            unsent: self.outbox.iter().copied().collect(),
            lease_until_ns: self.lease_until.map(|until| monotonic_of(until, now, now_ns)),
            ttl_ms: self.ttl.as_millis() as u64,
            fenced: self.fenced,
        }
    }

    /// The link a previous image saved. The lease's end comes back a
    /// little earlier than it was (`RESTORE_MARGIN`), never later: the two
    /// clock readings of a moment are not taken at the same instant.
    pub fn restore(saved: SavedLink, now: Instant, now_ns: u64) -> Link {
        let lease_until = saved.lease_until_ns.map(|ns| {
            let at = ns.saturating_sub(RESTORE_MARGIN.as_nanos() as u64);
            if at >= now_ns {
                now + Duration::from_nanos(at - now_ns)
            } else {
                now.checked_sub(Duration::from_nanos(now_ns - at)).unwrap_or(now)
            }
        });
        Link {
            inbox: saved.unread,
            outbox: saved.unsent.into(),
            lease_until,
            ttl: Duration::from_millis(saved.ttl_ms),
            fenced: saved.fenced,
        }
    }

    /// Bytes read from the socket: the complete lines, in order.
    pub fn received(&mut self, bytes: &[u8]) -> Vec<Incoming> {
        // Only the new bytes are searched, and the complete lines leave the
        // buffer in one move: a burst of thousands of short lines (a
        // member taking over a dead one's units) costs linear time.
        let searched = self.inbox.len();
        self.inbox.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut from = searched;
        while let Some(offset) = self.inbox[from..].iter().position(|&b| b == b'\n') {
            let end = from + offset;
            let text = String::from_utf8_lossy(&self.inbox[start..end]);
            match serde_json::from_str::<FromAgent>(&text) {
                Ok(message) => out.push(Incoming::Message(message)),
                Err(e) => out.push(Incoming::Garbage(format!("{e}: {}", crate::escape::controls(&shorten(&text))))),
            }
            start = end + 1;
            from = start;
        }
        self.inbox.drain(..start);
        if self.inbox.len() > MAX_LINE {
            self.inbox.clear();
            out.push(Incoming::Garbage(format!("a line longer than {MAX_LINE} bytes")));
        }
        out
    }

    /// Queues a message; false when the outbox is over its bound.
    pub fn send(&mut self, message: &ToAgent) -> bool {
        self.outbox.extend(messages::encode(message));
        self.outbox.len() <= MAX_OUTBOX
    }

    /// What waits to be written (the front of it).
    pub fn pending(&mut self) -> &[u8] {
        self.outbox.make_contiguous()
    }

    pub fn wrote(&mut self, n: usize) {
        self.outbox.drain(..n.min(self.outbox.len()));
    }

    pub fn wants_to_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// A keepalive sent at `sent` was answered: the lease lives `ttl` past
    /// it. An answer older than the last one changes nothing.
    pub fn renewed(&mut self, sent: Instant, ttl: Duration) {
        let until = sent + ttl;
        if self.lease_until.map_or(true, |current| current < until) {
            self.lease_until = Some(until);
            self.ttl = ttl;
            self.fenced = false;
        }
    }

    /// Whether a lease is known to live (a renewal came since the last loss).
    pub fn has_lease(&self) -> bool {
        self.lease_until.is_some()
    }

    /// The lease is gone (or was never granted).
    pub fn lost(&mut self) {
        self.lease_until = None;
    }

    /// When the units must be revoked if no renewal comes: half the TTL
    /// after the last keepalive was sent.
    pub fn revoke_at(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        self.lease_until.map(|until| until - self.ttl / 2)
    }

    /// The last moment a unit's process may live: a second before the
    /// lease can end (now, without a lease).
    pub fn kill_by(&self, now: Instant) -> Instant {
        self.lease_until.map_or(now, |until| until.checked_sub(KILL_MARGIN).unwrap_or(now).max(now))
    }

    /// True once, when the revocation deadline has passed.
    pub fn fence_due(&mut self, now: Instant) -> bool {
        if self.revoke_at().is_some_and(|at| at <= now) {
            self.fenced = true;
            return true;
        }
        false
    }
}

/// The moment a CLOCK_MONOTONIC reading in nanoseconds was, as an Instant
/// (both are CLOCK_MONOTONIC on Linux; Instant cannot be built from one).
pub fn instant_of(monotonic_ns: u64, now: Instant, now_ns: u64) -> Instant {
    let ago = Duration::from_nanos(now_ns.saturating_sub(monotonic_ns));
    now.checked_sub(ago).unwrap_or(now)
}

/// How much earlier a restored lease ends than the saved one said.
const RESTORE_MARGIN: Duration = Duration::from_millis(10);

/// The CLOCK_MONOTONIC reading (ns) of `at`, given one moment on both clocks.
fn monotonic_of(at: Instant, now: Instant, now_ns: u64) -> u64 {
    if at >= now {
        now_ns.saturating_add((at - now).as_nanos() as u64)
    } else {
        now_ns.saturating_sub((now - at).as_nanos() as u64)
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_garbage_and_split_reads_join() {
        let mut link = Link::new(Duration::from_secs(10));
        let run = messages::encode(&FromAgent::Run { unit: "7#0".into(), token: 3 });
        let (a, b) = run.split_at(5);
        assert!(link.received(a).is_empty());
        assert_eq!(link.received(b), vec![Incoming::Message(FromAgent::Run { unit: "7#0".into(), token: 3 })]);
        let got = link.received(b"not json\x1b[31m\n{\"type\":\"drained\"}\n");
        assert!(matches!(&got[0], Incoming::Garbage(why) if !why.contains('\x1b')), "{got:?}");
        assert_eq!(got[1], Incoming::Message(FromAgent::Drained));
        let got = link.received(&vec![b'x'; MAX_LINE + 1]);
        assert_eq!(got.len(), 1, "an endless line is refused, not kept");
    }

    #[test]
    fn the_fence_follows_the_last_renewal() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut link = Link::new(ttl);
        assert_eq!(link.revoke_at(), None, "no lease, nothing to revoke on time");
        assert_eq!(link.kill_by(t0), t0, "without a lease nothing may run");
        link.renewed(t0, ttl);
        assert_eq!(link.revoke_at(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(link.kill_by(t0), t0 + Duration::from_secs(9));
        assert!(!link.fence_due(t0 + Duration::from_secs(4)));
        assert!(link.fence_due(t0 + Duration::from_secs(5)));
        assert!(!link.fence_due(t0 + Duration::from_secs(6)), "once");
        // A later renewal lifts the fence; an older answer never shortens it.
        link.renewed(t0 + Duration::from_secs(6), ttl);
        link.renewed(t0 + Duration::from_secs(1), ttl);
        assert_eq!(link.revoke_at(), Some(t0 + Duration::from_secs(11)));
        link.lost();
        assert_eq!(link.kill_by(t0 + Duration::from_secs(7)), t0 + Duration::from_secs(7));
    }

    #[test]
    fn monotonic_readings_become_instants() {
        let now = Instant::now();
        assert_eq!(instant_of(5_000_000_000, now, 7_000_000_000), now - Duration::from_secs(2));
        assert_eq!(instant_of(8_000_000_000, now, 7_000_000_000), now, "never in the future");
    }

    #[test]
    fn a_saved_link_comes_back_with_its_bytes_and_a_lease_that_ends_no_later() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut link = Link::new(ttl);
        link.renewed(t0, ttl);
        assert!(link.received(b"{\"type\":\"dra").is_empty());
        assert!(link.send(&ToAgent::Drain));
        link.wrote(3);
        // Saved at t0 + 1 s (CLOCK_MONOTONIC 100 s then), restored 2 s
        // later on both clocks.
        let saved = link.save(t0 + Duration::from_secs(1), 100_000_000_000);
        assert_eq!(saved.lease_until_ns, Some(109_000_000_000));
        let later = t0 + Duration::from_secs(3);
        let mut back = Link::restore(saved.clone(), later, 102_000_000_000);
        let until = back.lease_until.unwrap();
        assert!(until <= t0 + ttl && until >= t0 + ttl - Duration::from_millis(20), "{until:?}");
        assert_eq!(back.received(b"ined\"}\n"), vec![Incoming::Message(FromAgent::Drained)]);
        assert_eq!(back.pending(), &messages::encode(&ToAgent::Drain)[3..]);
        // Restored after the lease's end: known gone at once.
        let late = Link::restore(saved, t0 + Duration::from_secs(20), 119_000_000_000);
        assert!(late.revoke_at().unwrap() < t0 + Duration::from_secs(20));
        let none = Link::new(ttl);
        let saved = none.save(t0, 5);
        assert!(!Link::restore(saved, t0, 5).has_lease());
    }

    #[test]
    fn the_outbox_is_bounded() {
        let mut link = Link::new(Duration::from_secs(10));
        assert!(link.send(&ToAgent::Drain));
        let n = link.pending().len();
        link.wrote(n);
        assert!(!link.wants_to_write());
        let big = ToAgent::Units { units: vec!["x".repeat(1000); 20_000] };
        assert!(!link.send(&big), "20 MB is past the bound");
    }
}
