//! The `cluster` document: this member's view of the farm's members and
//! units (`lrpmctl cluster`, `--json`). One type shared by the server and
//! `lrpmctl`, as `status` is.

use serde::{Deserialize, Serialize};

use crate::cluster::messages::{ClaimCounters, MemberView};
use crate::farm::StatusName;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDocument {
    /// `--cluster` as given (`etcd://HOST:PORT,.../FARM`).
    pub cluster: String,
    /// This member's name.
    pub member: String,
    /// The agent's pid; none while it is restarted.
    pub agent_pid: Option<i32>,
    pub lease: LeaseState,
    /// Why this member is leaving (a shutdown, `lrpmctl drain`), if it is.
    pub draining: Option<String>,
    pub members: Vec<MemberRow>,
    /// Every unit this member knows: its configuration's, and any other
    /// claim seen in etcd.
    pub units: Vec<UnitRow>,
    pub claims: ClaimCounters,
    /// Claims the agent handed this member to run (each one a unit that
    /// came here), and units it had to give up (placement moved them, a
    /// drain; a lost lease counts once per unit it stopped).
    pub grants: u64,
    pub revocations: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseState {
    /// A lease is held and renewed in time: clustered units may run here.
    pub held: bool,
    /// Seconds since the last renewal etcd answered was sent.
    pub seconds_since_renewal: Option<f64>,
    /// How long the last renewal took, in milliseconds.
    pub renew_ms: Option<f64>,
    /// Why there is none (etcd's error, an expiry), while there is none.
    pub reason: Option<String>,
}

/// A live member: its key's fields (name, host, pid, start time, version,
/// weight, draining), and what this member counts of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    #[serde(flatten)]
    pub key: MemberView,
    /// Claims it holds.
    pub units: usize,
    /// This member.
    pub me: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitRow {
    /// `ID#SLOT`.
    pub unit: String,
    /// The member whose claim it is; none: unclaimed.
    pub member: Option<String>,
    /// The claim's fencing token.
    pub token: Option<i64>,
    /// The member placement gives it now: when it differs from `member`,
    /// the unit is moving (or, unclaimed, waits to be claimed there).
    #[serde(default)]
    pub placed: Option<String>,
    /// The slot's state on this member (none: not in its configuration).
    pub status: Option<StatusName>,
}
