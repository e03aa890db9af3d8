//! One farm across many hosts (`--cluster`), as the core sees it: a slot of
//! a job with `placement: cluster` is a unit, and runs here only while this
//! member holds its claim. The cluster agent grants and revokes claims; the
//! core starts what it was granted, stops what it lost (releasing the
//! claim once the process is gone, never before), and leaves every other
//! unit `Elsewhere`. Restarts, backoff, failures and holds of a unit this
//! member holds work as on a single host.

use super::*;

/// The claims this member holds, by unit, with their fencing tokens.
#[derive(Debug, Default)]
pub(super) struct ClusterUnits {
    owned: HashMap<WorkerKey, i64>,
    /// The set of units changed (a slot of a clustered job was added or
    /// forgotten): the agent must be told the new list.
    changed: bool,
    /// Slots of units forgotten since the last event: their processes are
    /// gone, so their claims (if this member holds them) can go now, each
    /// at once rather than at the end of a drain or a shutdown.
    forgotten: Vec<WorkerKey>,
}

impl Farm {
    /// From now on, slots of jobs with `placement: cluster` run only when
    /// granted. Call before the first configuration.
    pub fn enable_cluster(&mut self) {
        self.cluster = Some(ClusterUnits { owned: HashMap::new(), changed: true, forgotten: Vec::new() });
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether the job's slots are units of the cluster.
    pub(super) fn is_unit(&self, id: &JobId) -> bool {
        self.cluster.is_some() && self.jobs.get(id).is_some_and(|s| s.job.placement == Placement::Cluster)
    }

    /// An upgrade's new image: the claims the previous image held for the
    /// job's slots are this member's still.
    pub(super) fn claims_adopted(&mut self, id: &JobId, units: &[(u32, i64)]) {
        if !self.is_unit(id) {
            return;
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.owned.extend(units.iter().map(|&(slot, token)| (WorkerKey::new(id.clone(), slot), token)));
        }
    }

    /// The phase a new slot starts in: a unit not granted waits `Elsewhere`.
    pub(super) fn new_slot_phase(&self, key: &WorkerKey, held: bool, now: Instant) -> Phase {
        if self.is_unit(&key.id) && self.unit_token(key).is_none() {
            Phase::Elsewhere
        } else if held {
            Phase::Held
        } else {
            Phase::Waiting { at: now }
        }
    }

    /// The fencing token of the claim this member holds for `key`: a worker
    /// of a unit gets it (`Lrpm\fencing_token()`).
    pub fn unit_token(&self, key: &WorkerKey) -> Option<i64> {
        self.cluster.as_ref()?.owned.get(key).copied()
    }

    /// How many claims this member holds.
    pub fn owned_unit_count(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.owned.len())
    }

    /// The units this member holds a claim for, in order.
    pub(super) fn owned_units(&self) -> Vec<WorkerKey> {
        let mut owned: Vec<WorkerKey> = self.cluster.iter().flat_map(|c| c.owned.keys().cloned()).collect();
        owned.sort();
        owned
    }

    /// Every unit the configuration has now (slots still stopping
    /// included: their claims are kept until their processes are gone),
    /// when the list changed since the last call; `None` otherwise.
    pub fn take_changed_units(&mut self) -> Option<Vec<WorkerKey>> {
        let cluster = self.cluster.as_mut()?;
        if !std::mem::take(&mut cluster.changed) {
            return None;
        }
        Some(self.cluster_units())
    }

    /// Every unit the configuration has now (see `take_changed_units`).
    pub fn cluster_units(&self) -> Vec<WorkerKey> {
        if self.cluster.is_none() {
            return Vec::new();
        }
        self.jobs
            .iter()
            .filter(|(_, state)| state.job.placement == Placement::Cluster)
            .flat_map(|(id, state)| state.slots.keys().map(|slot| WorkerKey::new(id.clone(), *slot)))
            .collect()
    }

    /// A slot was added or forgotten: the unit list may have changed.
    pub(super) fn units_changed(&mut self, key: &WorkerKey) {
        if self.is_unit(&key.id) {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.changed = true;
            }
        }
    }

    /// A slot removed for good (its process, if it had one, is gone): its
    /// claim is given back with the next actions.
    pub(super) fn unit_slot_removed(&mut self, key: &WorkerKey) {
        let unit = self.is_unit(&key.id);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.owned.remove(key);
            if unit {
                cluster.forgotten.push(key.clone());
            }
        }
    }

    /// `ReleaseUnit` for every unit slot removed while handling an event.
    pub(super) fn release_removed_units(&mut self, actions: &mut Vec<Action>) {
        if let Some(cluster) = self.cluster.as_mut() {
            actions.extend(cluster.forgotten.drain(..).map(Action::ReleaseUnit));
        }
    }

    /// A slot leaves the unit's claim: it is not held here any more.
    fn forget_unit(&mut self, key: &WorkerKey) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.owned.remove(key);
        }
    }

    /// The agent claimed `key` for this member: start it (held jobs stay
    /// held; a unit this configuration does not have is given back).
    pub(super) fn unit_granted(&mut self, key: WorkerKey, token: i64, now: Instant, actions: &mut Vec<Action>) {
        if self.cluster.is_none() {
            return;
        }
        let wanted = self.is_unit(&key.id) && self.slot(&key).is_some() && !self.is_shutting_down();
        let removed = !self.jobs.get(&key.id).is_some_and(|s| !s.removed);
        if !wanted || removed {
            // Given back at once only when nothing of it runs here: a
            // process (or a start in flight) of a slot going away keeps the
            // claim until it is gone, and leaves the unit list then.
            let busy =
                self.slot(&key).is_some_and(|s| s.phase.pid().is_some() || matches!(s.phase, Phase::Starting { .. }));
            if busy && self.is_unit(&key.id) {
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.owned.insert(key, token);
                }
            } else {
                actions.push(Action::ReleaseUnit(key));
            }
            return;
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.owned.insert(key.clone(), token);
        }
        let held = self.jobs.get(&key.id).is_some_and(|s| s.held);
        if let Some(Phase::Elsewhere) = self.slot(&key).map(|s| &s.phase) {
            let label = self.label(&key);
            actions.push(Action::log_about(
                LogLevel::Info,
                &key,
                None,
                format!("{label}: this member now runs the unit (claim {token})"),
            ));
            self.set_phase(&key, if held { Phase::Held } else { Phase::Waiting { at: now } });
        }
        // Otherwise a claim made again (the lease regained) while the slot
        // was ours: only the token is new.
    }

    /// The claim on `key` is not this member's any more (placement moved
    /// it, a drain, the lease is lost): stop its process, SIGKILL at
    /// `kill_by` at the latest (the moment another member may start it),
    /// then give the unit back.
    pub(super) fn unit_revoked(
        &mut self,
        key: &WorkerKey,
        kill_by: Option<Instant>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.owned.remove(key);
        let Some(slot) = self.slot(key) else {
            actions.push(Action::ReleaseUnit(key.clone()));
            return;
        };
        let timeout = self.jobs.get(&key.id).map_or(Duration::ZERO, JobState::shutdown_timeout);
        let kill_at = |current: Option<Instant>| match (current, kill_by) {
            (Some(at), Some(by)) => Some(at.min(by)),
            (at, by) => at.or(by),
        };
        match slot.phase.clone() {
            Phase::Running { pid, since } => {
                let label = self.label(key);
                actions.push(Action::log_about(
                    LogLevel::Info,
                    key,
                    Some(pid),
                    format!("{label} (pid {pid}): the unit is no longer this member's, stopping it"),
                ));
                let at = kill_at(Some(later(now, timeout)));
                self.set_phase(key, Phase::Stopping { pid, since, kill_at: at, then: AfterStop::Release });
                actions.push(Action::StopWorker { key: key.clone(), pid });
            }
            Phase::Stopping { pid, since, kill_at: current, then } => {
                // Removed for good stays removed; anything else ends here.
                let then = if then == AfterStop::Remove { then } else { AfterStop::Release };
                // SIGKILL already sent (None) stays sent.
                let at = current.map(|at| kill_at(Some(at)).unwrap_or(at));
                self.set_phase(key, Phase::Stopping { pid, since, kill_at: at, then });
            }
            Phase::Starting { since, stop_then } => {
                let stop_then = if stop_then == Some(AfterStop::Remove) { stop_then } else { Some(AfterStop::Release) };
                self.set_phase(key, Phase::Starting { since, stop_then });
            }
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed | Phase::Elsewhere => {
                self.release_unit(key, actions)
            }
        }
    }

    /// The slot's process is gone and the unit is another member's now.
    pub(super) fn release_unit(&mut self, key: &WorkerKey, actions: &mut Vec<Action>) {
        self.forget_unit(key);
        self.set_phase(key, Phase::Elsewhere);
        actions.push(Action::ReleaseUnit(key.clone()));
    }
}
