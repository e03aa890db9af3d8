//! What the supervisor says about the cluster: the `cluster` document,
//! each slot's owner in `status`, the `lrpm_cluster_*` metrics and the
//! lease's part in `/readyz`. All of it from the agent's last view and the
//! supervisor's own lease record; nothing asks etcd.

use std::collections::HashMap;
use std::time::Instant;

use super::Supervisor;
use crate::control::cluster::{ClusterDocument, LeaseState, MemberRow, UnitRow};
use crate::control::status::SlotOwner;
use crate::control::Reply;
use crate::farm::WorkerKey;
use crate::metrics::exposition::{Exposition, Kind};

impl Supervisor<'_> {
    /// Who holds each unit (`ID#SLOT`), for `status`; empty without
    /// `--cluster`.
    pub(super) fn slot_owners(&self) -> HashMap<String, SlotOwner> {
        let Some(agent) = self.agent.as_ref() else { return HashMap::new() };
        let mut owners: HashMap<String, SlotOwner> = agent
            .owners
            .iter()
            .map(|o| (o.unit.clone(), SlotOwner { member: o.member.clone(), token: o.token }))
            .collect();
        // The farm's own claims are current; the view may be 200 ms old.
        for key in self.farm.cluster_units() {
            if let Some(token) = self.farm.unit_token(&key) {
                owners.insert(key.to_string(), SlotOwner { member: agent.settings().member.clone(), token });
            }
        }
        owners
    }

    /// `cluster`: the document `lrpmctl cluster` shows.
    pub(super) fn handle_cluster(&mut self, now: Instant) -> Reply {
        let Some(document) = self.cluster_document(now) else {
            return Reply::refused("this lrpm-host is not in a cluster (start it with --cluster)");
        };
        match serde_json::to_string(&document) {
            Ok(json) => Reply::Done(json),
            Err(e) => Reply::Refused(format!("cannot encode the cluster view: {e}")),
        }
    }

    /// This member's view of the members and units (None outside a cluster):
    /// `lrpmctl cluster` and the dashboard's `/api/farm`.
    pub(super) fn cluster_document(&self, now: Instant) -> Option<ClusterDocument> {
        let agent = self.agent.as_ref()?;
        let me = agent.settings().member.clone();
        let owners = self.slot_owners();
        let mut per_member: HashMap<&str, usize> = HashMap::new();
        for owner in owners.values() {
            *per_member.entry(owner.member.as_str()).or_default() += 1;
        }
        let members = agent
            .members
            .iter()
            .map(|m| MemberRow {
                key: m.clone(),
                units: per_member.get(m.name.as_str()).copied().unwrap_or(0),
                me: m.name == me,
            })
            .collect();
        let local: Vec<WorkerKey> = self.farm.cluster_units();
        let mut units: Vec<UnitRow> = local
            .iter()
            .map(|key| {
                let name = key.to_string();
                let owner = owners.get(&name);
                UnitRow {
                    member: owner.map(|o| o.member.clone()),
                    token: owner.map(|o| o.token),
                    placed: agent.placed.get(&name).cloned().flatten(),
                    status: self.farm.slot(key).map(|slot| slot.status(now)),
                    unit: name,
                }
            })
            .collect();
        let known: std::collections::HashSet<String> = units.iter().map(|u| u.unit.clone()).collect();
        let mut foreign: Vec<UnitRow> = owners
            .iter()
            .filter(|(unit, _)| !known.contains(*unit))
            .map(|(unit, o)| UnitRow {
                unit: unit.clone(),
                member: Some(o.member.clone()),
                token: Some(o.token),
                placed: None,
                status: None,
            })
            .collect();
        foreign.sort_by(|a, b| a.unit.cmp(&b.unit));
        units.extend(foreign);
        Some(ClusterDocument {
            cluster: agent.settings().url.clone(),
            member: me,
            agent_pid: agent.pid(),
            lease: LeaseState {
                held: agent.has_lease(),
                seconds_since_renewal: agent
                    .renewed_at
                    .map(|at| (now.saturating_duration_since(at).as_secs_f64() * 1000.0).round() / 1000.0),
                renew_ms: agent.renew_latency.map(|d| (d.as_secs_f64() * 1e6).round() / 1000.0),
                reason: if agent.has_lease() { None } else { agent.no_lease_reason.clone() },
            },
            draining: agent.leaving.clone(),
            members,
            units,
            claims: agent.claims,
            grants: agent.grants,
            revocations: agent.revocations,
        })
    }

    pub(super) fn handle_drain(&mut self) -> Reply {
        if self.agent.is_none() {
            return Reply::refused("drain needs --cluster: this lrpm-host is not in a cluster");
        }
        if self.farm.is_shutting_down() {
            return Reply::refused("Will not drain, lrpm-host is shutting down (which drains it)");
        }
        self.leave_cluster("lrpmctl drain");
        Reply::Done(format!(
            "Draining: {} unit(s) of this member move to the other members as their workers stop; \
             every-host jobs keep running (`undrain` takes units again)",
            self.farm.owned_unit_count()
        ))
    }

    pub(super) fn handle_undrain(&mut self) -> Reply {
        if self.agent.is_none() {
            return Reply::refused("undrain needs --cluster: this lrpm-host is not in a cluster");
        }
        if self.farm.is_shutting_down() {
            return Reply::refused("Will not undrain, lrpm-host is shutting down");
        }
        if self.cluster_leaving().is_none() {
            return Reply::done("This member is not draining");
        }
        self.rejoin_cluster();
        Reply::done("Undrained: this member takes its share of the units again")
    }

    /// Not ready while clustered units cannot run here: no lease, or the
    /// member is draining.
    pub(super) fn cluster_readiness(&self) -> Result<(), String> {
        let Some(agent) = self.agent.as_ref() else { return Ok(()) };
        if let Some(why) = agent.leaving.as_deref() {
            return Err(format!("not ready: draining ({why})\n"));
        }
        if !agent.has_lease() {
            let reason = agent.no_lease_reason.as_deref().unwrap_or("no renewal in time");
            return Err(format!("not ready: no cluster lease ({reason})\n"));
        }
        Ok(())
    }

    pub(super) fn write_cluster_metrics(&self, e: &mut Exposition, now: Instant) {
        let Some(agent) = self.agent.as_ref() else { return };
        e.family("lrpm_cluster_lease", Kind::Gauge, "1 while this member holds a cluster lease renewed in time.");
        e.sample("lrpm_cluster_lease", &[], u64::from(agent.has_lease()));
        e.family("lrpm_cluster_draining", Kind::Gauge, "1 while this member drains (a shutdown, lrpmctl drain).");
        e.sample("lrpm_cluster_draining", &[], u64::from(agent.leaving.is_some()));
        e.family("lrpm_cluster_members", Kind::Gauge, "Live members of the farm, as this member's agent sees them.");
        e.sample("lrpm_cluster_members", &[], agent.members.len() as u64);
        e.family("lrpm_cluster_units", Kind::Gauge, "Clustered units in this member's configuration.");
        e.sample("lrpm_cluster_units", &[], self.farm.cluster_units().len() as u64);
        e.family("lrpm_cluster_units_owned", Kind::Gauge, "Units whose claim this member holds.");
        e.sample("lrpm_cluster_units_owned", &[], self.farm.owned_unit_count() as u64);
        e.family(
            "lrpm_cluster_claims_total",
            Kind::Counter,
            "Claim transactions of this member's agent, by result: won, taken (another member holds the unit: a \
             conflict), failed (etcd did not answer).",
        );
        e.sample("lrpm_cluster_claims_total", &[("result", "won")], agent.claims.won);
        e.sample("lrpm_cluster_claims_total", &[("result", "taken")], agent.claims.taken);
        e.sample("lrpm_cluster_claims_total", &[("result", "failed")], agent.claims.failed);
        e.family(
            "lrpm_cluster_unit_moves_total",
            Kind::Counter,
            "Units that came to this member (direction=in: a claim granted) and that left it (direction=out: \
             placement moved them, a drain, a lost lease).",
        );
        e.sample("lrpm_cluster_unit_moves_total", &[("direction", "in")], agent.grants);
        e.sample("lrpm_cluster_unit_moves_total", &[("direction", "out")], agent.revocations);
        if let Some(latency) = agent.renew_latency {
            e.family(
                "lrpm_cluster_lease_renew_seconds",
                Kind::Gauge,
                "How long the last lease renewal took, from its request to the supervisor learning of it.",
            );
            e.sample("lrpm_cluster_lease_renew_seconds", &[], (latency.as_secs_f64() * 1e6).round() / 1e6);
        }
        if let Some(at) = agent.renewed_at {
            e.family(
                "lrpm_cluster_seconds_since_renewal",
                Kind::Gauge,
                "Seconds since the last lease renewal etcd answered was sent (units stop at half the TTL).",
            );
            e.sample(
                "lrpm_cluster_seconds_since_renewal",
                &[],
                (now.saturating_duration_since(at).as_secs_f64() * 1000.0).round() / 1000.0,
            );
        }
    }
}
