//! The supervisor's side of `--cluster`: it starts the cluster agent (this
//! program, `lrpm-host cluster-agent`, exec'd with a socketpair as its
//! stdin and stdout), reads its typed messages without ever waiting for it,
//! turns them into the core's events, fences units when the lease is not
//! renewed in time, and starts the agent again if it dies.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::Supervisor;
use crate::cluster::link::{instant_of, Incoming, Link, SavedLink};
use crate::cluster::messages::{ClaimCounters, FromAgent, MemberView, ToAgent, UnitOwner};
use crate::farm::{Event, ExitKind, WorkerKey};
use crate::job::JobId;

/// What the agent is started with (the command line's `--cluster*`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `etcd://HOST:PORT[,...]/FARM`, as given.
    pub url: String,
    pub member: String,
    pub ttl: Duration,
    pub weight: f64,
    /// `--cluster-ca` ... `--cluster-password-file`, passed on as given.
    pub client_args: Vec<std::ffi::OsString>,
}

/// The agent's first restart comes after this long, doubling up to the cap.
const AGENT_RESTART_FIRST: Duration = Duration::from_secs(1);
const AGENT_RESTART_CAP: Duration = Duration::from_secs(30);

/// The running agent and what the supervisor knows from it.
pub(super) struct Agent {
    settings: ClusterSettings,
    pid: Option<i32>,
    socket: Option<UnixStream>,
    link: Link,
    restart_at: Option<Instant>,
    restart_delay: Duration,
    /// "No lease" was logged as a warning since the last lease: while etcd
    /// stays away, the agent's retries are logged at debug level only.
    warned_no_lease: bool,
    /// The last `View`: live members and who holds which unit.
    pub(super) members: Vec<MemberView>,
    pub(super) owners: Vec<UnitOwner>,
    pub(super) claims: ClaimCounters,
    /// Where placement puts each unit, by unit.
    pub(super) placed: std::collections::HashMap<String, Option<String>>,
    /// When the last renewal etcd answered was sent, and how long it took
    /// to reach the supervisor.
    pub(super) renewed_at: Option<Instant>,
    pub(super) renew_latency: Option<Duration>,
    /// Why there is no lease, while there is none.
    pub(super) no_lease_reason: Option<String>,
    pub(super) grants: u64,
    pub(super) revocations: u64,
    /// Why this member leaves the cluster (a shutdown, `lrpmctl drain`):
    /// every agent it starts from then on is told to drain.
    pub(super) leaving: Option<String>,
    /// The agent was told to drain.
    drain_sent: bool,
    /// The supervisor is done and closed the link: the agent gives the
    /// lease back and ends by then, or is killed.
    leave_by: Option<Instant>,
}

/// How long the supervisor waits at exit for the agent to give its lease
/// back: one etcd request, on a network that may be gone. Without it the
/// member's key and claims stay until the TTL ends.
const AGENT_LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

impl Agent {
    pub(super) fn new(settings: ClusterSettings) -> Agent {
        let ttl = settings.ttl;
        Agent {
            settings,
            pid: None,
            socket: None,
            link: Link::new(ttl),
            restart_at: Some(Instant::now()),
            restart_delay: AGENT_RESTART_FIRST,
            warned_no_lease: false,
            members: Vec::new(),
            owners: Vec::new(),
            claims: ClaimCounters::default(),
            placed: std::collections::HashMap::new(),
            renewed_at: None,
            renew_latency: None,
            no_lease_reason: Some("not granted yet".into()),
            grants: 0,
            revocations: 0,
            leaving: None,
            drain_sent: false,
            leave_by: None,
        }
    }

    pub(super) fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub(super) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// A lease is known to live: clustered units may run here.
    pub(super) fn has_lease(&self) -> bool {
        self.socket.is_some() && self.link.has_lease()
    }

    pub(super) fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(AsFd::as_fd)
    }

    pub(super) fn wants_to_write(&self) -> bool {
        self.link.wants_to_write()
    }

    /// Writes what is queued until the socket would block; false when the
    /// socket failed (the agent is gone).
    fn write_pending(&mut self) -> bool {
        let Some(socket) = self.socket.as_mut() else { return true };
        while self.link.wants_to_write() {
            match socket.write(self.link.pending()) {
                Ok(n) => self.link.wrote(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// The next moment the supervisor must act for the cluster: the
    /// agent's restart, the fence.
    pub(super) fn deadline(&self) -> Option<Instant> {
        [self.restart_at, self.link.revoke_at(), self.leave_by].into_iter().flatten().min()
    }
}

/// The agent as it crosses `lrpmctl upgrade`'s exec: it is this process's
/// child, so it runs on (and keeps the lease, the member key and every
/// claim) while the new image starts; the new image takes its socket and
/// the link's state back.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandedAgent {
    pub pid: i32,
    pub socket_fd: RawFd,
    pub link: SavedLink,
    pub leaving: Option<String>,
    pub drain_sent: bool,
}

impl Agent {
    /// What the next image needs to go on with this agent: None when no
    /// agent runs now (the new image starts one). The socket stays open
    /// (it is listed among the descriptors the exec keeps).
    pub(super) fn hand_over(&mut self, now: Instant) -> Option<HandedAgent> {
        let (Some(pid), Some(socket_fd)) = (self.pid, self.socket.as_ref().map(AsRawFd::as_raw_fd)) else {
            return None;
        };
        // As much of the outbox as the socket takes now; the rest travels.
        self.write_pending();
        Some(HandedAgent {
            pid,
            socket_fd,
            link: self.link.save(now, crate::cluster::agent::monotonic_ns()),
            leaving: self.leaving.clone(),
            drain_sent: self.drain_sent,
        })
    }

    /// In the new image: the agent the previous one ran, with its link as
    /// it was; false (and the agent is started afresh) when its socket did
    /// not come along.
    pub(super) fn take_over(&mut self, handed: HandedAgent, now: Instant) -> bool {
        let socket = crate::process::adopt_fd(handed.socket_fd)
            .ok_or_else(|| format!("descriptor {} did not come along", handed.socket_fd))
            .map(UnixStream::from)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket).map_err(|e| e.to_string()));
        let socket = match socket {
            Ok(socket) => socket,
            Err(why) => {
                tracing::error!("upgrade: the cluster agent's socket: {why}; stopping the agent");
                crate::process::signal_group(Pid::from_raw(handed.pid), nix::sys::signal::Signal::SIGTERM);
                return false;
            }
        };
        self.pid = Some(handed.pid);
        self.socket = Some(socket);
        self.link = Link::restore(handed.link, now, crate::cluster::agent::monotonic_ns());
        self.restart_at = None;
        self.no_lease_reason = (!self.link.has_lease()).then(|| "not renewed since the upgrade".to_string());
        self.leaving = handed.leaving;
        self.drain_sent = handed.drain_sent;
        true
    }
}

/// A unit's name on the wire: the slot's key as logs show it (`7#0`).
fn unit_name(key: &WorkerKey) -> String {
    key.to_string()
}

fn unit_key(name: &str) -> Option<WorkerKey> {
    let (id, slot) = name.rsplit_once('#')?;
    Some(WorkerKey::new(JobId::parse(id), slot.parse().ok()?))
}

impl Supervisor<'_> {
    /// In an upgrade's new image, once the handoff's jobs are adopted: the
    /// agent the previous image ran goes on (its lease, its claims) and
    /// learns the unit list again; it outlived the exec, so no unit moved.
    pub(super) fn take_agent_over(&mut self, handed: Option<HandedAgent>, now: Instant) {
        let Some(handed) = handed else { return };
        let Some(agent) = self.agent.as_mut() else {
            tracing::error!(
                "upgrade: the previous image ran a cluster agent (pid {}), this one has no --cluster; stopping it \
                 (its units move to the other members)",
                handed.pid
            );
            crate::process::signal_group(Pid::from_raw(handed.pid), nix::sys::signal::Signal::SIGTERM);
            return;
        };
        let pid = handed.pid;
        if !agent.take_over(handed, now) {
            return;
        }
        self.children.insert(pid, super::children::ChildRole::ClusterAgent);
        tracing::info!(
            "cluster: agent pid {pid} taken over from the previous image (member {}): its lease and claims go on",
            agent.settings.member
        );
        if agent.leaving.is_some() && !agent.drain_sent {
            let why = agent.leaving.clone().unwrap_or_default();
            self.leave_cluster(&why);
        }
        let units = self.farm.cluster_units();
        self.send_to_agent(&ToAgent::Units { units: units.iter().map(unit_name).collect() });
    }

    /// Starts the agent when it is due (at startup, after it died).
    pub(super) fn start_agent_if_due(&mut self, now: Instant) {
        let Some(agent) = self.agent.as_mut() else { return };
        let due = matches!(agent.restart_at, Some(at) if at <= now);
        if !due || self.farm.is_shutting_down() {
            return;
        }
        agent.restart_at = None;
        let settings = agent.settings.clone();
        match spawn_agent(&self.config.program, &settings) {
            Ok((pid, socket)) => {
                tracing::info!(
                    "cluster: agent running as pid {pid} (member {}, farm {})",
                    settings.member,
                    settings.url
                );
                agent.pid = Some(pid);
                agent.socket = Some(socket);
                self.children.insert(pid, super::children::ChildRole::ClusterAgent);
                agent.link = Link::new(settings.ttl);
                agent.drain_sent = false;
                // The new agent learns every unit, and a drain in force.
                let units = self.farm.cluster_units();
                self.send_to_agent(&ToAgent::Units { units: units.iter().map(unit_name).collect() });
                if let Some(why) = self.agent.as_ref().and_then(|a| a.leaving.clone()) {
                    self.leave_cluster(&why);
                }
            }
            Err(e) => {
                tracing::error!("cluster: cannot start the agent ({e}); trying again in {:?}", agent.restart_delay);
                agent.restart_at = Some(now + agent.restart_delay);
                agent.restart_delay = (agent.restart_delay * 2).min(AGENT_RESTART_CAP);
            }
        }
    }

    /// This member leaves the cluster: the agent marks its key draining
    /// (no other member counts it for placement any more), stops every
    /// unit here and deletes each claim as its worker ends, so the others
    /// take the units over one by one instead of after the TTL. The lease
    /// (and the every-host jobs) stay until the member ends. Idempotent.
    pub(super) fn leave_cluster(&mut self, why: &str) {
        let Some(agent) = self.agent.as_mut() else { return };
        if agent.leaving.is_none() {
            tracing::info!("cluster: draining this member ({why}): its units move to the other members");
            agent.leaving = Some(why.to_owned());
        }
        if agent.drain_sent || agent.socket.is_none() {
            return;
        }
        agent.drain_sent = true;
        self.send_to_agent(&ToAgent::Drain);
    }

    /// `lrpmctl undrain`: this member takes its share again.
    pub(super) fn rejoin_cluster(&mut self) {
        let Some(agent) = self.agent.as_mut() else { return };
        if agent.leaving.take().is_none() {
            return;
        }
        tracing::info!("cluster: undrained: this member takes its share of the units again");
        let sent = std::mem::take(&mut agent.drain_sent);
        if sent {
            self.send_to_agent(&ToAgent::Undrain);
        }
    }

    /// Whether this member is leaving the cluster, and why.
    pub(super) fn cluster_leaving(&self) -> Option<&str> {
        self.agent.as_ref()?.leaving.as_deref()
    }

    /// At exit: closes the link (the agent then revokes the lease and
    /// ends) and reports whether the agent is gone; kills it once it has
    /// had `AGENT_LEAVE_TIMEOUT`.
    pub(super) fn agent_has_left(&mut self, now: Instant) -> bool {
        let Some(agent) = self.agent.as_mut() else { return true };
        let Some(pid) = agent.pid else { return true };
        match agent.leave_by {
            None => {
                // What is still queued (the last releases), as far as the
                // socket takes it now.
                agent.write_pending();
                agent.socket = None;
                agent.leave_by = Some(now + AGENT_LEAVE_TIMEOUT);
                false
            }
            Some(at) if at <= now => {
                tracing::warn!(
                    "cluster: the agent (pid {pid}) did not give the lease back within {}s; killing it (the others take the units when the lease ends)",
                    AGENT_LEAVE_TIMEOUT.as_secs()
                );
                crate::process::kill_group_and_wait(Pid::from_raw(pid));
                agent.pid = None;
                self.children.remove(pid);
                true
            }
            Some(_) => false,
        }
    }

    pub(super) fn send_to_agent(&mut self, message: &ToAgent) {
        let Some(agent) = self.agent.as_mut() else { return };
        if agent.socket.is_none() {
            // A new agent is told everything it needs when it starts.
            return;
        }
        if !agent.link.send(message) {
            tracing::error!("cluster: the agent does not read its messages; restarting it");
            if let Some(pid) = agent.pid {
                crate::process::signal_group(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// The unit list, when the configuration changed it.
    pub(super) fn sync_units(&mut self) {
        if self.agent.is_none() {
            return;
        }
        if let Some(units) = self.farm.take_changed_units() {
            self.send_to_agent(&ToAgent::Units { units: units.iter().map(unit_name).collect() });
        }
    }

    /// The agent's socket is readable, writable or closed.
    pub(super) fn agent_ready(&mut self, now: Instant) {
        let mut incoming = Vec::new();
        let mut gone = false;
        if let Some(agent) = self.agent.as_mut() {
            let Some(socket) = agent.socket.as_mut() else { return };
            let mut buffer = [0u8; 65536];
            // A bounded number of reads per turn: the loop polls in between.
            for _ in 0..16 {
                match socket.read(&mut buffer) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => incoming.extend(agent.link.received(&buffer[..n])),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if !gone {
                gone = !agent.write_pending();
            }
        }
        for message in incoming {
            match message {
                Incoming::Message(message) => self.agent_said(message, now),
                Incoming::Garbage(what) => tracing::error!("cluster: the agent sent what is not a message: {what}"),
            }
        }
        if gone {
            if let Some(agent) = self.agent.as_mut() {
                // Its exit is reaped (and reported) separately.
                agent.socket = None;
            }
            self.revoke_every_unit("the cluster agent's link closed", now);
        }
    }

    fn agent_said(&mut self, message: FromAgent, now: Instant) {
        match message {
            FromAgent::Lease { sent_at_ns, ttl_ms } => {
                let sent = instant_of(sent_at_ns, now, crate::cluster::agent::monotonic_ns());
                tracing::debug!(
                    "cluster: lease renewed ({} ms ago, {ttl_ms} ms)",
                    now.saturating_duration_since(sent).as_millis()
                );
                if let Some(agent) = self.agent.as_mut() {
                    if agent.warned_no_lease && !agent.link.has_lease() {
                        tracing::info!("cluster: lease granted; this member takes its share of the units");
                    }
                    agent.warned_no_lease = false;
                    agent.link.renewed(sent, Duration::from_millis(ttl_ms));
                    agent.renewed_at = agent.renewed_at.max(Some(sent));
                    agent.renew_latency = Some(now.saturating_duration_since(sent));
                    agent.no_lease_reason = None;
                }
            }
            FromAgent::LeaseLost { reason } => {
                let warn = self.agent.as_mut().is_some_and(|a| !std::mem::replace(&mut a.warned_no_lease, true));
                if warn {
                    tracing::warn!("cluster: no lease ({reason}); every unit of this member stops");
                } else {
                    tracing::debug!("cluster: still no lease ({reason})");
                }
                self.revoke_every_unit(&reason, now);
                if let Some(agent) = self.agent.as_mut() {
                    agent.link.lost();
                    agent.no_lease_reason = Some(reason);
                }
            }
            FromAgent::Run { unit, token } => match unit_key(&unit) {
                Some(key) => {
                    if let Some(agent) = self.agent.as_mut() {
                        agent.grants += 1;
                    }
                    self.feed(Event::UnitGranted { key, token }, now)
                }
                None => tracing::error!("cluster: the agent granted '{}', which names no unit", unit),
            },
            FromAgent::Stop { unit } => match unit_key(&unit) {
                Some(key) => {
                    if let Some(agent) = self.agent.as_mut() {
                        agent.revocations += 1;
                    }
                    self.feed(Event::UnitRevoked { key, kill_by: None }, now)
                }
                None => tracing::error!("cluster: the agent revoked '{}', which names no unit", unit),
            },
            FromAgent::View { members, owners, claims, placed } => {
                if let Some(agent) = self.agent.as_mut() {
                    agent.members = members;
                    agent.owners = owners;
                    agent.claims = claims;
                    agent.placed = placed.into_iter().map(|p| (p.unit, p.member)).collect();
                }
            }
            FromAgent::Drained => tracing::info!("cluster: every unit of this member is released"),
            FromAgent::Error { message } => tracing::error!("cluster: {message}"),
        }
    }

    /// The fence: no renewal for half the TTL stops every unit, SIGKILL a
    /// second before the lease can end.
    pub(super) fn enforce_fence(&mut self, now: Instant) {
        let due = self.agent.as_mut().is_some_and(|agent| agent.link.fence_due(now));
        if due {
            tracing::warn!("cluster: the lease was not renewed for half its TTL; every unit of this member stops");
            self.revoke_every_unit("no lease renewal", now);
        }
    }

    fn revoke_every_unit(&mut self, why: &str, now: Instant) {
        let Some(agent) = self.agent.as_ref() else { return };
        let kill_by = agent.link.kill_by(now);
        tracing::debug!(
            "cluster: revoking every unit ({why}), SIGKILL by {:?}",
            kill_by.saturating_duration_since(now)
        );
        let owned = self.farm.owned_unit_count() as u64;
        if let Some(agent) = self.agent.as_mut() {
            agent.revocations += owned;
        }
        self.feed(Event::AllUnitsRevoked { kill_by: Some(kill_by) }, now);
    }

    fn feed(&mut self, event: Event, now: Instant) {
        let actions = self.farm.handle(event, now);
        self.apply(actions);
    }

    /// True when `pid` was the agent: it is started again after a delay.
    pub(super) fn agent_exited(&mut self, pid: i32, exit: ExitKind, now: Instant) -> bool {
        let Some(agent) = self.agent.as_mut() else { return false };
        if agent.pid != Some(pid) {
            return false;
        }
        agent.pid = None;
        agent.socket = None;
        agent.no_lease_reason = Some("the cluster agent is restarting".into());
        let delay = agent.restart_delay;
        agent.restart_delay = (delay * 2).min(AGENT_RESTART_CAP);
        if !self.farm.is_shutting_down() {
            agent.restart_at = Some(now + delay);
            tracing::error!(
                "cluster: the agent (pid {pid}) ended: {}; starting it again in {}s",
                exit.describe(crate::farm::ProcessKind::Program, crate::farm::PhpEnd::Unknown),
                delay.as_secs()
            );
        }
        self.revoke_every_unit("the cluster agent ended", now);
        true
    }
}

/// Forks and execs `program cluster-agent ...` with one end of a socketpair
/// as its stdin and stdout; returns its pid and the other end, non-blocking.
fn spawn_agent(program: &std::path::Path, settings: &ClusterSettings) -> std::io::Result<(i32, UnixStream)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let text = |s: &str| CString::new(s).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a NUL byte"));
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a NUL byte in the program's path"))?;
    let argv = vec![
        path.clone(),
        text("cluster-agent")?,
        text("--cluster")?,
        text(&settings.url)?,
        text("--member")?,
        text(&settings.member)?,
        text("--ttl")?,
        text(&settings.ttl.as_secs().to_string())?,
        text("--weight")?,
        text(&settings.weight.to_string())?,
    ];
    let mut argv = argv;
    for arg in &settings.client_args {
        argv.push(
            CString::new(arg.as_bytes())
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a NUL byte in a --cluster-* option"))?,
        );
    }
    let env = super::upgrade::inherited_environment()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "a NUL byte in the environment"))?;
    let pid = crate::process::spawn_program(&path, &argv, &env, crate::process::ProgramIo::Link(theirs.as_raw_fd()))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    drop(theirs);
    Ok((pid.as_raw(), ours))
}
