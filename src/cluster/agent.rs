//! The cluster agent: a process of its own, exec'd by the supervisor before
//! PHP boots, the one place in lrpm-host with threads. etcd's calls block
//! (a lease renewal, a watch that waits for news, a partitioned network),
//! and the supervisor must never block and never have a second thread when
//! it forks; so the agent does the waiting, with one thread per blocking
//! stream joined by crossbeam channels (no fork ever follows here), and
//! tells the supervisor only "run this unit" and "stop that one" over its
//! stdin/stdout, a socketpair.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, unbounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::claims::{ClaimOutcome, Claims, Effect, Holder};
use super::etcd::{Created, Etcd, EtcdError, EtcdOptions, WatchBatch, WatchEvent};
use super::messages::{self, ClaimCounters, FromAgent, MemberView, ToAgent, UnitOwner, UnitPlacement};
use super::placement::{Candidate, Rendezvous};
use super::writers::{self, Write as EtcdWrite, Written};

/// What the agent needs to know, from the supervisor's command line.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub etcd: EtcdOptions,
    pub farm: String,
    pub member: String,
    pub ttl: Duration,
    pub weight: f64,
}

/// The value of a claim key.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimValue {
    member: String,
}

/// The member a claim key's value names ("" for a value that names none).
pub(super) fn claim_holder(value: &[u8]) -> String {
    serde_json::from_slice::<ClaimValue>(value).map_or_else(|_| String::new(), |c| c.member)
}

/// What the threads report to the agent's loop.
enum Report {
    Supervisor(ToAgent),
    SupervisorGone,
    Expired { lease: i64 },
    RenewFailed { lease: i64, why: String },
    Watch { generation: u64, batch: Result<WatchBatch, EtcdError> },
    Written(Written),
}

pub fn members_prefix(farm: &str) -> String {
    format!("/lrpm/{farm}/members/")
}

pub fn units_prefix(farm: &str) -> String {
    format!("/lrpm/{farm}/units/")
}

fn farm_prefix(farm: &str) -> String {
    format!("/lrpm/{farm}/")
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the supervisor fences on.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs the agent until the supervisor closes its end; the exit status.
pub fn run(settings: AgentSettings) -> u8 {
    let (tx, rx) = unbounded();
    spawn_supervisor_reader(tx.clone());
    let mut agent = Agent::new(settings, tx, rx);
    agent.serve()
}

struct Agent {
    settings: AgentSettings,
    etcd: Etcd,
    claims: Claims<Rendezvous>,
    tx: Sender<Report>,
    rx: Receiver<Report>,
    out: std::io::Stdout,
    started_at: u64,
    lease: Option<i64>,
    /// When the last renewal that etcd answered was sent; None without a
    /// lease. Shared with the lease's keeper thread, which updates it and
    /// tells the supervisor itself: a main loop busy with thousands of
    /// claims must not starve the lease (the supervisor would fence).
    renewed_at: RenewalClock,
    /// A watch generation: reports from an abandoned watch are ignored.
    watch_generation: u64,
    watch_revision: i64,
    watching: bool,
    members: BTreeMap<String, MemberView>,
    supervisor_gone: bool,
    /// Dropped to stop the current lease's keeper: an abandoned lease must
    /// not be kept alive, or its claims would block their units.
    keeper_stop: Option<Sender<()>>,
    draining: bool,
    claim_counters: ClaimCounters,
    /// Claims and releases, several in flight (`writers`).
    writers: Sender<EtcdWrite>,
    /// What this member's claim keys hold.
    claim_value: Vec<u8>,
    /// Something the supervisor's view shows changed; it is sent at
    /// `view_due`, so that a burst of claims costs one view, not one each.
    view_due: Option<Instant>,
}

/// How long a changed view waits for more changes before it is sent.
const VIEW_COALESCE: Duration = Duration::from_millis(200);

impl Agent {
    fn new(settings: AgentSettings, tx: Sender<Report>, rx: Receiver<Report>) -> Self {
        let etcd = Etcd::new(settings.etcd.clone());
        let claim_value =
            serde_json::to_vec(&ClaimValue { member: settings.member.clone() }).expect("a claim serialises");
        let to_loop = tx.clone();
        let writers = writers::spawn(&settings.etcd, move |written| to_loop.send(Report::Written(written)).is_ok());
        let claims = Claims::new(settings.member.clone(), Rendezvous);
        let started_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Agent {
            settings,
            etcd,
            claims,
            tx,
            rx,
            out: std::io::stdout(),
            started_at,
            lease: None,
            renewed_at: RenewalClock::default(),
            watch_generation: 0,
            watch_revision: 0,
            watching: false,
            members: BTreeMap::new(),
            supervisor_gone: false,
            keeper_stop: None,
            draining: false,
            claim_counters: ClaimCounters::default(),
            writers,
            claim_value,
            view_due: None,
        }
    }

    fn send(&mut self, message: &FromAgent) {
        let line = messages::encode(message);
        if self.out.write_all(&line).and_then(|()| self.out.flush()).is_err() {
            self.supervisor_gone = true;
        }
    }

    fn serve(&mut self) -> u8 {
        let mut join_backoff = Duration::from_millis(250);
        let mut next_join = Some(Instant::now());
        loop {
            if self.supervisor_gone {
                self.leave();
                return 0;
            }
            if self.lease.is_none() && next_join.is_some_and(|at| at <= Instant::now()) {
                match self.join() {
                    Ok(()) => {
                        join_backoff = Duration::from_millis(250);
                        next_join = None;
                    }
                    Err(JoinError::NameTaken(message)) => {
                        self.send(&FromAgent::Error { message });
                        return crate::exit_code::host::CONFIG;
                    }
                    Err(JoinError::Etcd(e)) => {
                        self.send(&FromAgent::LeaseLost { reason: e.to_string() });
                        next_join = Some(Instant::now() + join_backoff);
                        join_backoff = (join_backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if self.lease.is_some() && !self.watching {
                self.open_watch();
            }
            let wake = [next_join, self.claims.next_retry(), self.renewal_deadline(), self.view_due]
                .into_iter()
                .flatten()
                .min();
            let timer = match wake {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            let rx = self.rx.clone();
            select! {
                recv(rx) -> report => match report {
                    Ok(report) => self.handle(report, &mut next_join),
                    Err(_) => return 0,
                },
                recv(timer) -> _ => {}
            }
            let now = Instant::now();
            if self.renewal_deadline().is_some_and(|at| at <= now) {
                self.lose_lease("no lease renewal succeeded within the TTL's margin".into());
                next_join = Some(now);
            }
            let effects = self.claims.tick(now);
            self.apply(effects);
            if self.view_due.is_some_and(|at| at <= now) {
                self.send_view_now();
            }
        }
    }

    /// When the lease must be taken as lost if no renewal succeeds: one
    /// second before it can expire on etcd's side.
    fn renewal_deadline(&self) -> Option<Instant> {
        let renewed = (*self.renewed_at.lock())?;
        Some(renewed + self.settings.ttl.saturating_sub(Duration::from_secs(1)))
    }

    fn handle(&mut self, report: Report, next_join: &mut Option<Instant>) {
        let now = Instant::now();
        match report {
            Report::Supervisor(ToAgent::Units { units }) => {
                let effects = self.claims.units_wanted(units, now);
                self.apply(effects);
            }
            Report::Supervisor(ToAgent::Stopped { unit }) => {
                let effects = self.claims.stopped(&unit, now);
                self.apply(effects);
            }
            Report::Supervisor(ToAgent::Drain) => {
                self.draining = true;
                // The others stop counting this member for placement, so
                // they claim each unit as soon as its claim goes.
                self.announce_draining();
                let effects = self.claims.drain(now);
                self.apply(effects);
            }
            Report::Supervisor(ToAgent::Undrain) => {
                self.draining = false;
                self.announce_draining();
                let effects = self.claims.undrain(now);
                self.apply(effects);
            }
            Report::SupervisorGone => self.supervisor_gone = true,
            Report::Expired { lease } if Some(lease) == self.lease => {
                self.lose_lease("the lease expired on etcd's side".into());
                *next_join = Some(now);
            }
            Report::RenewFailed { lease, why } if Some(lease) == self.lease => {
                tracing::warn!("renewing the cluster lease failed: {why}");
            }
            Report::Watch { generation, batch } if generation == self.watch_generation => self.watched(batch),
            Report::Written(Written::Claimed { unit, lease, outcome, error }) => {
                let counter = match outcome {
                    ClaimOutcome::Won { .. } => &mut self.claim_counters.won,
                    ClaimOutcome::Taken { .. } => &mut self.claim_counters.taken,
                    ClaimOutcome::Failed => &mut self.claim_counters.failed,
                };
                *counter += 1;
                if let Some(e) = error {
                    tracing::warn!("claiming {unit} failed: {e}");
                }
                // Made with a lease since lost: whatever it created goes
                // with that lease; the unit is tried again later.
                let outcome = if Some(lease) == self.lease { outcome } else { ClaimOutcome::Failed };
                let effects = self.claims.claim_finished(&unit, outcome, now);
                self.apply(effects);
                self.send_view();
            }
            Report::Written(Written::Released { unit, error: Some(e) }) => {
                // It goes with the lease anyway; until then nobody else
                // takes the unit, which is the safe side.
                tracing::warn!("releasing the claim of {unit} failed: {e}");
            }
            _ => {}
        }
    }

    fn join(&mut self) -> Result<(), JoinError> {
        let sent_at_ns = monotonic_ns();
        let sent = Instant::now();
        let lease = self.etcd.grant(self.settings.ttl)?;
        let me = MemberView {
            name: self.settings.member.clone(),
            host: hostname(),
            pid: std::process::id(),
            started_at: self.started_at,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            weight: self.settings.weight,
            draining: self.draining,
        };
        let key = format!("{}{}", members_prefix(&self.settings.farm), me.name);
        let value = serde_json::to_vec(&me).expect("a member serialises");
        loop {
            match self.etcd.create_if_absent(&key, &value, lease)? {
                Created::Yes { .. } => break,
                Created::Exists(kv) => {
                    let other: Option<MemberView> = serde_json::from_slice(&kv.value).ok();
                    // This process's own key from an earlier lease (etcd was
                    // away): it goes, and the join is tried again.
                    if other
                        .as_ref()
                        .is_some_and(|o| o.pid == me.pid && o.started_at == me.started_at && o.host == me.host)
                    {
                        self.etcd.delete_if_created_at(&key, kv.create_revision)?;
                        continue;
                    }
                    let _ = self.etcd.revoke(lease);
                    let holder = other
                        .map_or_else(|| "an unreadable key".to_owned(), |o| format!("pid {} on {}", o.pid, o.host));
                    return Err(JoinError::NameTaken(format!(
                        "cluster member name {:?} is already in use by {holder} in farm {:?}; give each instance its own --cluster-member",
                        me.name, self.settings.farm
                    )));
                }
            }
        }
        self.lease = Some(lease);
        let ttl_ms = self.settings.ttl.as_millis() as u64;
        self.set_lease_clock(Some(sent), &FromAgent::Lease { sent_at_ns, ttl_ms });
        let keeper = Keeper { lease, ttl: self.settings.ttl, clock: self.renewed_at.clone(), tx: self.tx.clone() };
        self.keeper_stop = Some(keeper.spawn(self.settings.etcd.clone()));
        self.resnapshot()?;
        let effects = self.claims.lease_granted(Instant::now());
        self.apply(effects);
        Ok(())
    }

    /// Sets the renewal clock and tells the supervisor, under the clock's
    /// lock: the keeper reports renewals under it too, so a renewal's
    /// `Lease` never reaches the supervisor after the `LeaseLost` that
    /// abandoned its lease (the keeper, whose stop channel is dropped
    /// first, sees that under the lock).
    fn set_lease_clock(&mut self, renewed: Option<Instant>, message: &FromAgent) {
        let clock = self.renewed_at.clone();
        let mut guard = clock.lock();
        *guard = renewed;
        self.send(message);
    }

    /// Writes `self.draining` into this member's key, which the others
    /// watch: a draining member is no candidate for placement.
    fn announce_draining(&mut self) {
        let Some(lease) = self.lease else { return };
        let key = format!("{}{}", members_prefix(&self.settings.farm), self.settings.member);
        let Ok(Some(mut me)) = self.etcd.range_prefix(&key).map(|(_, kvs)| {
            kvs.into_iter().find(|kv| kv.key == key).and_then(|kv| serde_json::from_slice::<MemberView>(&kv.value).ok())
        }) else {
            tracing::warn!(
                "could not read this member's key to mark it draining or not; the others see it at its next join"
            );
            return;
        };
        me.draining = self.draining;
        let value = serde_json::to_vec(&me).expect("a member serialises");
        if let Err(e) = self.etcd.put(&key, &value, lease) {
            tracing::warn!("marking this member draining or not failed ({e}); the others see it at its next join");
        }
    }

    /// Reads every member and claim; the watch goes on from there.
    fn resnapshot(&mut self) -> Result<(), EtcdError> {
        let (revision, kvs) = self.etcd.range_prefix(&farm_prefix(&self.settings.farm))?;
        self.members.clear();
        let mut holders = BTreeMap::new();
        for kv in kvs {
            self.absorb_put(&kv.key, &kv.value, kv.create_revision, &mut holders);
        }
        self.watch_revision = revision;
        self.watching = false;
        let candidates = self.candidates();
        let effects = self.claims.snapshot(candidates, holders, Instant::now());
        self.apply(effects);
        self.send_view();
        Ok(())
    }

    fn absorb_put(&mut self, key: &str, value: &[u8], create_revision: i64, holders: &mut BTreeMap<String, Holder>) {
        if let Some(name) = key.strip_prefix(&members_prefix(&self.settings.farm)) {
            if let Ok(member) = serde_json::from_slice::<MemberView>(value) {
                if member.name == name {
                    self.members.insert(name.to_owned(), member);
                }
            }
        } else if let Some(unit) = key.strip_prefix(&units_prefix(&self.settings.farm)) {
            let member = claim_holder(value);
            holders.insert(unit.to_owned(), Holder { member, token: create_revision });
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.members
            .values()
            .filter(|m| !m.draining)
            .map(|m| Candidate { name: m.name.clone(), weight: m.weight })
            .collect()
    }

    fn open_watch(&mut self) {
        self.watch_generation += 1;
        let generation = self.watch_generation;
        match self.etcd.watch(&farm_prefix(&self.settings.farm), self.watch_revision + 1, WATCH_IDLE) {
            Ok(mut stream) => {
                self.watching = true;
                let tx = self.tx.clone();
                std::thread::Builder::new()
                    .name("etcd-watch".into())
                    .spawn(move || loop {
                        let batch = stream.next_batch();
                        let ended = batch.is_err();
                        if tx.send(Report::Watch { generation, batch }).is_err() || ended {
                            return;
                        }
                    })
                    .expect("a thread for the watch");
            }
            Err(e) => tracing::warn!("opening the cluster watch failed (tried again shortly): {e}"),
        }
    }

    fn watched(&mut self, batch: Result<WatchBatch, EtcdError>) {
        let now = Instant::now();
        match batch {
            Ok(WatchBatch::Created) => {}
            Ok(WatchBatch::Events { revision, events }) => {
                for event in events {
                    let effects = match event {
                        WatchEvent::Put(kv) => {
                            let mut holders = BTreeMap::new();
                            self.absorb_put(&kv.key, &kv.value, kv.create_revision, &mut holders);
                            self.watch_revision = self.watch_revision.max(kv.mod_revision);
                            if let Some((unit, holder)) = holders.into_iter().next() {
                                self.claims.claim_seen(&unit, holder, now)
                            } else if let Some(name) = kv.key.strip_prefix(&members_prefix(&self.settings.farm)) {
                                match self.members.get(name) {
                                    Some(m) if m.draining => self.claims.member_left(name, now),
                                    Some(m) => {
                                        let candidate = Candidate { name: m.name.clone(), weight: m.weight };
                                        self.claims.member_joined(candidate, now)
                                    }
                                    None => Vec::new(),
                                }
                            } else {
                                Vec::new()
                            }
                        }
                        WatchEvent::Delete { key, revision } => {
                            self.watch_revision = self.watch_revision.max(revision);
                            if let Some(name) = key.strip_prefix(&members_prefix(&self.settings.farm)) {
                                self.members.remove(name);
                                self.claims.member_left(name, now)
                            } else if let Some(unit) = key.strip_prefix(&units_prefix(&self.settings.farm)) {
                                self.claims.claim_gone(unit, now)
                            } else {
                                Vec::new()
                            }
                        }
                    };
                    self.apply(effects);
                }
                self.watch_revision = self.watch_revision.max(revision);
                self.send_view();
            }
            Ok(WatchBatch::Compacted { .. }) | Ok(WatchBatch::Cancelled(_)) => {
                if let Err(e) = self.resnapshot() {
                    tracing::warn!("re-reading the cluster after a cancelled watch failed: {e}");
                }
            }
            // A silent or broken stream: re-opened from the last revision
            // seen, so nothing in between is missed.
            Err(_) => self.watching = false,
        }
    }

    fn lose_lease(&mut self, reason: String) {
        let lease = self.lease.take();
        self.keeper_stop = None;
        self.set_lease_clock(None, &FromAgent::LeaseLost { reason });
        self.watching = false;
        self.watch_generation += 1;
        let effects = self.claims.lease_lost(Instant::now());
        self.apply(effects);
        self.send_view();
        // Last: etcd may be the reason, and this can wait a request timeout.
        if let Some(lease) = lease {
            let _ = self.etcd.revoke(lease);
        }
    }

    /// Carries out the core's effects, and what their outcomes cause.
    fn apply(&mut self, effects: Vec<Effect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Claim { unit } => match self.lease {
                    Some(lease) => {
                        let key = format!("{}{unit}", units_prefix(&self.settings.farm));
                        let value = self.claim_value.clone();
                        // Its outcome comes back as a report.
                        let _ = self.writers.send(EtcdWrite::Claim { unit, key, value, lease });
                    }
                    None => queue.extend(self.claims.claim_finished(&unit, ClaimOutcome::Failed, Instant::now())),
                },
                Effect::Release { unit, token } => {
                    let key = format!("{}{unit}", units_prefix(&self.settings.farm));
                    let _ = self.writers.send(EtcdWrite::Release { unit, key, token });
                }
                Effect::Run { unit, token } => self.send(&FromAgent::Run { unit, token }),
                Effect::Stop { unit } => self.send(&FromAgent::Stop { unit }),
                Effect::Drained => self.send(&FromAgent::Drained),
            }
        }
    }

    /// The view changed: it goes to the supervisor shortly.
    fn send_view(&mut self) {
        if self.view_due.is_none() {
            self.view_due = Some(Instant::now() + VIEW_COALESCE);
        }
    }

    fn send_view_now(&mut self) {
        self.view_due = None;
        let owners = self
            .claims
            .holders()
            .iter()
            .map(|(unit, h)| UnitOwner { unit: unit.clone(), member: h.member.clone(), token: h.token })
            .collect();
        let members = self.members.values().cloned().collect();
        let placed = self
            .claims
            .placements()
            .map(|(unit, member)| UnitPlacement { unit: unit.to_owned(), member: member.map(str::to_owned) })
            .collect();
        self.send(&FromAgent::View { members, owners, claims: self.claim_counters, placed });
    }

    /// The supervisor is gone: give the lease back so that the others take
    /// the units now rather than after the TTL (its workers died with it).
    fn leave(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.etcd.revoke(lease);
        }
    }
}

/// How long a watch may stay silent before it is re-opened.
const WATCH_IDLE: Duration = Duration::from_secs(30);

enum JoinError {
    NameTaken(String),
    Etcd(EtcdError),
}

impl From<EtcdError> for JoinError {
    fn from(e: EtcdError) -> Self {
        JoinError::Etcd(e)
    }
}

fn spawn_supervisor_reader(tx: Sender<Report>) {
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            for line in BufReader::new(stdin.lock()).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToAgent>(&line) {
                    Ok(message) => {
                        if tx.send(Report::Supervisor(message)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("a message from the supervisor could not be read ({e}): {line}"),
                }
            }
            let _ = tx.send(Report::SupervisorGone);
        })
        .expect("a thread for the supervisor's messages");
}

/// When the current lease's last answered renewal was sent (None: no
/// lease), shared by the agent's loop and the lease's keeper.
#[derive(Clone, Default)]
struct RenewalClock(std::sync::Arc<std::sync::Mutex<Option<Instant>>>);

impl RenewalClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A panic elsewhere cannot leave an Option half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Renews one lease every TTL/4 until it is lost or the agent moves on: the
/// supervisor fences at TTL/2 after the last renewal was sent, so a renewal
/// may take a quarter of the TTL before it matters. Each answered renewal
/// goes to the supervisor from here, not through the agent's loop.
struct Keeper {
    lease: i64,
    ttl: Duration,
    clock: RenewalClock,
    tx: Sender<Report>,
}

impl Keeper {
    fn spawn(self, options: EtcdOptions) -> Sender<()> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new()
            .name("etcd-lease".into())
            .spawn(move || self.run(options, stop_rx))
            .expect("a thread for the lease");
        stop_tx
    }

    fn run(self, options: EtcdOptions, stop_rx: Receiver<()>) {
        let mut etcd = Etcd::new(EtcdOptions { request_timeout: self.ttl / 4, ..options });
        let period = self.ttl / 4;
        let mut next = Instant::now() + period;
        let abandoned = |rx: &Receiver<()>| matches!(rx.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected));
        loop {
            // Disconnected (the agent dropped its end): this lease is
            // abandoned.
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                stop_rx.recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                return;
            }
            next += period;
            let (sent_at_ns, sent) = (monotonic_ns(), Instant::now());
            let report = match etcd.keepalive(self.lease) {
                Ok(Some(ttl)) => {
                    let mut renewed = self.clock.lock();
                    if renewed.is_none() || abandoned(&stop_rx) {
                        return;
                    }
                    *renewed = (*renewed).max(Some(sent));
                    let line = messages::encode(&FromAgent::Lease { sent_at_ns, ttl_ms: ttl.as_millis() as u64 });
                    // One line under stdout's lock: never inside another.
                    let mut out = std::io::stdout().lock();
                    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => Report::Expired { lease: self.lease },
                Err(e) => Report::RenewFailed { lease: self.lease, why: e.to_string() },
            };
            let expired = matches!(report, Report::Expired { .. });
            if self.tx.send(report).is_err() || expired {
                return;
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
