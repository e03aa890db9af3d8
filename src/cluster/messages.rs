//! The typed messages the supervisor and its cluster agent exchange over
//! their socketpair: one JSON object per line, shared by both sides (as
//! pueue shares its messages between client and daemon), so that neither
//! side parses the other's text.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// From the supervisor to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// The clustered units the configuration has now, all of them: the
    /// list replaces the previous one.
    Units { units: Vec<String> },
    /// The worker of a unit the agent asked to stop has stopped: its claim
    /// can go.
    Stopped { unit: String },
    /// Leave the cluster: stop every unit, release each claim as its
    /// worker stops, then answer `Drained` and keep the lease until told
    /// to exit (the supervisor closes the socket).
    Drain,
    /// Take a share of the units again after a `Drain`.
    Undrain,
}

/// From the agent to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// A keepalive sent at `sent_at_ns` (CLOCK_MONOTONIC, shared by both
    /// processes on one host) was answered: the lease lives at least
    /// `ttl_ms` past that moment on etcd's side. The supervisor fences
    /// from `sent_at_ns`, which is before etcd's own renewal.
    Lease { sent_at_ns: u64, ttl_ms: u64 },
    /// The member has no lease (etcd unreachable, the lease expired, or
    /// not granted yet): nothing clustered may run.
    LeaseLost { reason: String },
    /// This member holds the unit's claim: start its worker. `token` is the
    /// claim's revision, the fencing token, larger at every new claim.
    Run { unit: String, token: i64 },
    /// Stop the unit's worker (placement moved it, or a drain), then
    /// answer `Stopped`.
    Stop { unit: String },
    /// The live members and who holds each unit, for status and metrics;
    /// sent at most a few times a second, when something changed.
    View {
        members: Vec<MemberView>,
        owners: Vec<UnitOwner>,
        #[serde(default)]
        claims: ClaimCounters,
        /// Where placement puts each unit of this member's configuration
        /// now: a unit whose owner differs is moving there.
        #[serde(default)]
        placed: Vec<UnitPlacement>,
    },
    /// Every unit of a drain is stopped and released.
    Drained,
    /// Something the operator must read (a refused member name, etcd's
    /// errors); the agent goes on unless it exits after it.
    Error { message: String },
}

/// A live member, as its key says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch at which the member started.
    #[serde(alias = "started_at")]
    pub started_at: u64,
    pub version: String,
    pub weight: f64,
    /// Leaving: no longer a candidate for any unit.
    #[serde(default)]
    pub draining: bool,
}

/// The claim transactions this agent ran, by outcome, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCounters {
    /// Created: the unit is this member's.
    pub won: u64,
    /// The key existed (another member holds it): a conflict.
    pub taken: u64,
    /// etcd did not answer or refused.
    pub failed: u64,
}

/// The member placement gives a unit (none: no live candidate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPlacement {
    pub unit: String,
    pub member: Option<String>,
}

/// A unit's claim: who holds it, and its fencing token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitOwner {
    pub unit: String,
    pub member: String,
    pub token: i64,
}

/// One message as the line it travels as.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("messages always serialise");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_one_line_each() {
        let all = [
            FromAgent::Lease { sent_at_ns: 5, ttl_ms: 10_000 },
            FromAgent::Run { unit: "a\nb#0".into(), token: 42 },
            FromAgent::View {
                members: vec![MemberView {
                    name: "m".into(),
                    host: "h".into(),
                    pid: 1,
                    started_at: 2,
                    version: "0.1".into(),
                    weight: 1.0,
                    draining: false,
                }],
                owners: vec![UnitOwner { unit: "u#0".into(), member: "m".into(), token: 3 }],
                claims: ClaimCounters { won: 1, taken: 2, failed: 3 },
                placed: vec![UnitPlacement { unit: "u#0".into(), member: None }],
            },
        ];
        for message in all {
            let line = encode(&message);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let back: FromAgent = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, message);
        }
        let line = encode(&ToAgent::Units { units: vec!["x#1".into()] });
        assert_eq!(serde_json::from_slice::<ToAgent>(&line).unwrap(), ToAgent::Units { units: vec!["x#1".into()] });
    }
}
